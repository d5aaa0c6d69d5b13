"""The items of a C-STORE batch: what is given, what is made ready, and what became of each.

The sender (``node.scp.sender``) takes data sets in memory (``pydicom.Dataset``) or DICOM Part 10
files (``pathlib.Path``). :func:`prepare` makes each ready to send: a data set is kept as it is
(it is encoded once, in the accepted context's transfer syntax); of a file only the File Meta
Information is read (``node.scp.file_meta``), so that the bytes after the meta group can go out
unchanged. Each item ends as an :class:`InstanceOutcome`: delivered, delivered with a warning, or
failed for a reason worth retrying (``transient``) or not (``permanent``). A file that is not
readable DICOM is a permanent outcome, not an exception.

Details carry only status codes and reasons: never patient data (and no file names, which may
carry some).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.core import at_rest
from node.scp.file_meta import NotPart10, read_file_meta

WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})

Result = Literal["delivered", "warning", "transient", "permanent"]
Item = pydicom.Dataset | Path


@dataclass(frozen=True)
class InstanceOutcome:
    """What became of one item. ``sop_instance_uid`` is empty for a file that is not DICOM."""

    sop_instance_uid: str
    status: int | None
    result: Result
    detail: str


OutcomeCallback = Callable[[int, InstanceOutcome], None]


def classify_status(status: int) -> tuple[Result, str]:
    """Map a C-STORE response status onto a result and a short description."""
    if status == 0x0000:
        return "delivered", "success"
    if status in WARNING_STATUSES:
        return "warning", f"delivered with warning 0x{status:04X}"
    if status & 0xFF00 == 0xA700:
        return "transient", f"refused: out of resources (0x{status:04X})"
    if status & 0xFF00 == 0xA900:
        return "permanent", f"error: data set does not match SOP class (0x{status:04X})"
    if 0xC000 <= status <= 0xCFFF:
        return "permanent", f"error: cannot understand (0x{status:04X})"
    return "permanent", f"failed with status 0x{status:04X}"


@dataclass(frozen=True)
class Prepared:
    """One item ready to send: its UIDs, and either a data set or a file's data set bytes."""

    sop_class: str
    sop_instance: str
    tsyntax: str
    dataset: pydicom.Dataset | None = None
    path: Path | None = None
    #: where the data set (after the File Meta Information) starts in ``path``
    offset: int = 0


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else False
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return UID(str(tsyntax))


def _from_dataset(ds: pydicom.Dataset) -> Prepared:
    """Raises AttributeError/KeyError if the data set lacks its SOP Class or Instance UID."""
    return Prepared(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(_transfer_syntax(ds)),
                    dataset=ds)


def prepare_file(path: Path, *, meta: bool = True, uid: str = "") -> Prepared | InstanceOutcome:
    """A file as it is (``meta``: from its File Meta Information), else decoded whole; or a
    permanent outcome if it is neither."""
    try:
        if meta:
            try:
                found = read_file_meta(path)
            except NotPart10:
                pass  # e.g. no Transfer Syntax UID in the meta group: pydicom may still read it
            else:
                return Prepared(found.sop_class, found.sop_instance, found.tsyntax,
                                path=path, offset=found.offset)
        return _from_dataset(at_rest.dcmread(path))  # decrypted if stored encrypted
    except OSError as exc:
        return InstanceOutcome(uid, None, "permanent",
                               f"file not readable: {type(exc).__name__} ({exc.strerror})")
    except Exception:  # noqa: BLE001 (pydicom raises many kinds on damaged data; none retryable)
        return InstanceOutcome(uid, None, "permanent", "not a readable DICOM file")


def prepare(item: Item) -> Prepared | InstanceOutcome:
    """What send() needs of an item, or a permanent outcome for one that cannot be sent."""
    if isinstance(item, pydicom.Dataset):
        try:
            return _from_dataset(item)
        except (AttributeError, KeyError):
            return InstanceOutcome("", None, "permanent",
                                   "data set lacks its SOP Class UID or SOP Instance UID")
    return prepare_file(Path(item))
