"""What every result writer shares: its input, deterministic UIDs, and the node's identity.

A writer is a pure function ``build_<iod>(ctx, ...) -> Dataset``: it builds one DICOM object in
the patient's own study from the ORIGINAL (re-identified) source instances and the model's
result. UIDs are derived from the job (study, generation, model), so a retried job produces the
same objects and the PACS stores them once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from node import __version__
from node.models.manifest import Manifest
from node.pipeline.results import ModelResult

MANUFACTURER = "dicom-node"
SOFTWARE_VERSIONS = __version__
#: the statement every object carries, in its series description, content and banner
AI_DISCLAIMER = "AI-generated result, not for diagnosis without review by a qualified clinician"

#: series numbers of the node's result series in the study (high, so they sort after images)
SERIES_NUMBERS = {"SEG": 9001, "SR": 9002, "SC": 9003, "KOS": 9004, "PDF": 9005}


@dataclass(frozen=True)
class ResultContext:
    """Input of the writers.

    ``sources`` are the original source instances in the order of the volume's slices
    (``result``'s masks and heatmaps index them); ``job_key`` identifies the job (e.g.
    ``"<study uid>/<generation>/<model name>"``) and seeds every UID.
    """

    sources: tuple[Dataset, ...]
    result: ModelResult
    manifest: Manifest
    job_key: str
    created: datetime

    def uid(self, kind: str, index: int = 0) -> str:
        return deterministic_uid(self.job_key, kind, index)

    @property
    def algorithm(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"

    def series_description(self, what: str) -> str:
        """E.g. 'AI brain-mask 1.0.0: segmentation (needs review)', at most 64 characters."""
        return f"AI {self.algorithm}: {what} (needs review)"[:64]


def deterministic_uid(job_key: str, kind: str, index: int = 0) -> str:
    """A 2.25 UID from the job, the object kind and an index: stable across retries."""
    digest = hashlib.sha256(f"dicom-node|{job_key}|{kind}|{index}".encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
