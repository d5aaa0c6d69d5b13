"""Read just enough of a received object to file it: its UIDs, modality and series description.

The data element values are read from the header only (pixel data is never decoded here).
Errors name the missing or bad attribute, never a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from node.errors import UnidentifiableInstance
from node.scp.status import Status

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TAGS: list[BaseTag | int] = [
    Tag(k) for k in ("SOPClassUID", "SOPInstanceUID", "Modality", "SeriesDescription",
                     "StudyInstanceUID", "SeriesInstanceUID")
]
_LAST_TAG = Tag("SeriesInstanceUID")


def _past_needed_tags(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag > _LAST_TAG)


class Unidentifiable(UnidentifiableInstance):
    def __init__(self, reason: str, status: Status = Status.CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Identity:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str


def identify(
    path: Path, command_sop_class: str, command_sop_instance: str, transfer_syntax: str
) -> Identity:
    """Parse the header of a received file; raise :class:`Unidentifiable` with a reason."""
    try:
        with path.open("rb") as fp:
            ds = _read_header(fp, UID(transfer_syntax))
    except InvalidDicomError as exc:
        raise Unidentifiable("not a DICOM data set") from exc
    except Exception as exc:
        raise Unidentifiable(
            f"data set cannot be parsed ({exc.__class__.__name__})"
        ) from exc
    return _identity(ds, command_sop_class, command_sop_instance)


def _read_header(fp: BinaryIO, transfer_syntax: UID) -> Dataset:
    """Read the identifying elements, stopping after (0020,000E).

    The file was written by pynetdicom: a File Meta group, then the data set exactly as
    received in the negotiated transfer syntax. For the common syntaxes the File Meta group is
    skipped by its length and the data set read in that syntax; deflated or unknown syntaxes
    go through pydicom's full file reader.
    """
    if transfer_syntax.is_transfer_syntax and not transfer_syntax.is_deflated:
        fp.seek(128)
        preamble = fp.read(16)  # "DICM", then (0002,0000) UL 4 <group length>
        if preamble[:4] == b"DICM" and preamble[4:10] == b"\x02\x00\x00\x00UL":
            fp.seek(144 + int.from_bytes(preamble[12:16], "little"))
            return read_dataset(
                fp, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
                stop_when=_past_needed_tags, specific_tags=_TAGS,
            )
        fp.seek(0)
    return read_partial(fp, stop_when=_past_needed_tags, specific_tags=_TAGS)


def _identity(ds: Dataset, command_sop_class: str, command_sop_instance: str) -> Identity:
    values = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception as exc:
            raise Unidentifiable(f"{keyword} cannot be decoded ({exc.__class__.__name__})") from exc
        if not value:
            raise Unidentifiable(f"{keyword} is missing or empty")
        if len(value) > 64 or not _UID.match(value):
            raise Unidentifiable(f"{keyword} is not a valid UID")
        values[keyword] = value
    if values["SOPClassUID"] != command_sop_class:
        raise Unidentifiable(
            "SOPClassUID in the data set differs from the request's Affected SOP Class UID",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if values["SOPInstanceUID"] != command_sop_instance:
        raise Unidentifiable(
            "SOPInstanceUID in the data set differs from the request's Affected SOP Instance UID"
        )
    return Identity(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        modality=_text(ds, "Modality")[:16],
        series_description=_text(ds, "SeriesDescription"),
    )


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001 - optional attribute; a bad value counts as absent
        return ""
