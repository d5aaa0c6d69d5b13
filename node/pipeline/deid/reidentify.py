"""Re-identification: map references from the de-identified space back to the originals.

Results are built against the original study; a result that still carries a pseudonym (a UID
the model saw, a pseudonymous patient ID) is mapped back here before it leaves the node. Pure:
the caller looks the pseudonyms up in the encrypted store (:func:`pseudonyms_in` lists them).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset

from node.pipeline.deid.deidentify import ACCESSION, PATIENT_ID, PATIENT_NAME

_IDENTIFIERS = (PATIENT_ID, PATIENT_NAME, ACCESSION)


def pseudonyms_in(ds: Dataset) -> set[str]:
    """Every UID and patient/accession identifier in ``ds``, at any depth."""
    found: set[str] = set()
    for elem in _walk(ds):
        if elem.VR == "UI" and elem.value:
            found.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
        elif elem.tag in _IDENTIFIERS and elem.value:
            found.add(str(elem.value))
    return found


def reidentify(ds: Dataset, originals: Mapping[str, str]) -> int:
    """Replace, in place, every value found in ``originals``; return how many were replaced."""
    replaced = 0
    for elem in _walk(ds):
        if elem.VR == "UI" and elem.value:
            if elem.VM > 1:
                new = [originals.get(str(v), str(v)) for v in elem.value]
                replaced += sum(a != str(b) for a, b in zip(new, elem.value, strict=True))
                elem.value = new
            elif str(elem.value) in originals:
                elem.value = originals[str(elem.value)]
                replaced += 1
        elif elem.tag in _IDENTIFIERS and str(elem.value or "") in originals:
            elem.value = originals[str(elem.value)]
            replaced += 1
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return replaced


def _walk(ds: Dataset):  # type: ignore[no-untyped-def]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)
        else:
            yield elem
