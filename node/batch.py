"""Offline de-identification of files and folders (``dicom-node deidentify``).

For research export and to let anyone inspect the profile's effect: the same pure stage as the
pipeline, the same keys (so pseudonyms match the node's), and the pseudonyms stored encrypted
in the node's ledger. Output files are named by their new SOP Instance UID: no identifiers in
names. A file that is not DICOM, or that may carry burned-in text without a pixel rule, is
refused with a reason that names the file's position, never its content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.inputs import input_files
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.keys import DeidKeys
from node.pipeline.deid.pixels import BurnedInText
from node.pipeline.deid.profile import Profile
from node.pseudonyms import PseudonymStore


@dataclass
class Summary:
    written: int = 0
    refusals: list[str] = field(default_factory=list)


def deidentify_files(
    inputs: list[Path], out: Path, profile: Profile, keys: DeidKeys, store: PseudonymStore
) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    for number, path in enumerate(input_files(inputs), start=1):
        try:
            ds = pydicom.dcmread(path)
            result = deidentify(ds, profile, keys)
        except InvalidDicomError:
            summary.refusals.append(f"input {number}: not a DICOM file")
            continue
        except BurnedInText as exc:
            summary.refusals.append(f"input {number}: refused: {exc}")
            continue
        store.save(result.pseudonyms)
        name = str(result.dataset.get("SOPInstanceUID", "")) or f"object-{number:06d}"
        result.dataset.save_as(out / f"{name}.dcm", enforce_file_format=True)
        summary.written += 1
    return summary
