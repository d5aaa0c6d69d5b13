"""The model and result contract: what a model receives, what it returns, what writers get.

The vocabulary every layer shares, and so kept in the core: a model receives a :class:`Volume`
(built from de-identified instances) and returns a :class:`ModelResult`; the result writers
(SEG, SR, SC, KOS, PDF), the HL7 builder and the alerts take a :class:`ResultContext` (the
result with the ORIGINAL source instances and the model's manifest). Frozen dataclasses, no
I/O. Masks carry the geometry of the volume they were computed on, so a writer can reference
the source images slice by slice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset

from node.core.manifest import CodedConcept, Manifest

#: the manufacturer the node's result objects and HL7 observations name
MANUFACTURER = "dicom-node"
#: segment categories of anatomical structures (whose type is then their finding site)
_ANATOMY_CATEGORIES = {("91723000", "SCT"), ("123037004", "SCT")}  # anatomical/body structure
#: the statement every result carries, in its series description, content, banner, ORU, alert
AI_DISCLAIMER = "AI-generated result, not for diagnosis without review by a qualified clinician"


@dataclass(frozen=True)
class Geometry:
    """Patient-space geometry of a (slices, rows, columns) array, DICOM conventions.

    ``origin`` is the Image Position (Patient) of the first slice; ``row_direction`` and
    ``column_direction`` the Image Orientation (Patient) cosines; ``normal`` points from the
    first slice to the last; ``spacing`` is (between slices, between rows, between columns) in
    mm; ``sop_instance_uids`` are the source slices in array order (empty for synthetic input).
    """

    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    normal: tuple[float, float, float]
    spacing: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...] = ()

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class Volume:
    """Pixel values in physical units where defined (HU for CT), (slices, rows, columns)."""

    array: np.ndarray
    geometry: Geometry
    modality: str
    series_instance_uid: str = ""
    series_description: str = ""


class Triage(StrEnum):
    ROUTINE = "ROUTINE"
    PRIORITY = "PRIORITY"
    URGENT = "URGENT"


@dataclass(frozen=True)
class Segment:
    """One labelled region: a boolean mask (slices, rows, columns) on ``geometry``."""

    label: int
    name: str
    category: CodedConcept
    type: CodedConcept
    mask: np.ndarray
    geometry: Geometry


def anatomical(s: Segment) -> bool:
    """Whether the segment is an anatomical structure (its type is then its finding site)."""
    return (s.category.value, s.category.scheme) in _ANATOMY_CATEGORIES


#: uncertainty methods a model may name in an :class:`Interval`: key -> what readers see
UNCERTAINTY_METHODS = {"flips": "test-time augmentation (mirror flips)"}


@dataclass(frozen=True)
class Interval:
    """How far a measurement may be off, as a model estimated it: ``lower``..``upper`` in the
    measurement's unit, covering ``level`` (e.g. 0.95) of ``samples`` repeated estimates made by
    ``method`` (a key of ``UNCERTAINTY_METHODS``). With a few test-time passes this is a spread
    of the passes, not a confidence interval of the true value."""

    lower: float
    upper: float
    level: float
    method: str
    samples: int

    @property
    def method_text(self) -> str:
        return UNCERTAINTY_METHODS.get(self.method, self.method)

    @property
    def samples_text(self) -> str:
        """What the range was made of, for readers: e.g. '8 flip passes'."""
        if self.method == "flips":
            return f"{self.samples} flip passes"
        return f"{self.method_text}, {self.samples} passes"


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    unit: str  # UCUM, e.g. "mL", "%"
    concept: CodedConcept | None = None
    segment_label: int | None = None
    interval: Interval | None = None


#: what a quality flag is the value of (SR qualitative evaluation, ORU observation)
ANALYSIS_QUALITY_RATING = CodedConcept("111693", "DCM", "Analysis Quality Rating")
#: a quality flag's key -> its coded value (another key: the node's code of its name)
QUALITY_FLAGS = {"uncertain": CodedConcept("64957009", "SCT", "Uncertain")}


@dataclass(frozen=True)
class QualityFlag:
    """A model's warning that its own result is doubtful: ``flag`` a short key (e.g.
    "uncertain"), ``reason`` one sentence for the reader, without patient data."""

    flag: str
    reason: str


@dataclass(frozen=True)
class Finding:
    """A classification outcome: a coded finding with its probability (0..1)."""

    concept: CodedConcept
    probability: float


@dataclass(frozen=True)
class HeatmapRegion:
    """One of a heatmap's strongest regions as a box of pixel rows ``top..bottom`` and columns
    ``left..right`` (both ends included) of its slice, and ``share``, its part (0..1) of the
    map's total heat."""

    top: int
    left: int
    bottom: int
    right: int
    share: float


@dataclass(frozen=True)
class Heatmap:
    """A saliency map (0..1) on one slice of the volume; ``method`` names what made it as
    shown to a reader (e.g. "Grad-CAM", "Score-CAM"; "" when the model does not say);
    ``regions`` are its strongest regions, largest first."""

    slice_index: int
    values: np.ndarray
    method: str = ""
    regions: tuple[HeatmapRegion, ...] = ()


@dataclass(frozen=True)
class ModelResult:
    model_name: str
    model_version: str
    segments: tuple[Segment, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    findings: tuple[Finding, ...] = ()
    heatmaps: tuple[Heatmap, ...] = ()
    triage: Triage = Triage.ROUTINE
    key_slices: tuple[int, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    quality: QualityFlag | None = None


@dataclass(frozen=True)
class Classification:
    """``finding``: the predicted class with its probability; ``others``: every other class
    with its probability, in the manifest's order."""

    finding: Finding
    others: tuple[Finding, ...]


def classification(result: ModelResult) -> Classification | None:
    """The predicted class and the others; None when the result has no findings.

    The predicted class is the most probable one (the first in the manifest's order on a tie).
    """
    if not result.findings:
        return None
    best = max(range(len(result.findings)), key=lambda i: result.findings[i].probability)
    return Classification(result.findings[best],
                          tuple(f for i, f in enumerate(result.findings) if i != best))


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
