"""Uploads and ``dicom-node import``: files from outside the wire enter the receive path.

DICOM files (or a zip of them) are taken in as they are; a PNG or JPEG becomes a Secondary
Capture and a NIfTI volume an MR or CT image series, with the uploader's patient and study
details and new UIDs. Every object then goes through :func:`node.pipeline.quarantine.take_in`,
the steps a C-STORE'd instance goes through (spool, ledger, completion; de-identification
follows as for any study), with the calling AE title "UPLOAD". A file the node cannot use is
quarantined with its reason, never dropped; the kind of a file is judged by its content.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid

from node.core.errors import PermanentError
from node.core.ledger import Ledger, StoreOutcome
from node.core.settings import Settings
from node.core.spool import Spool
from node.pipeline.ingest import archive, picture
from node.pipeline.ingest.archive import ArchiveRefused
from node.pipeline.ingest.details import NOT_ATTESTED, Details, MissingDetails, NotAttested
from node.pipeline.ingest.detect import Kind, kind_of
from node.pipeline.quarantine import take_in
from node.scp.identify import Unidentifiable

__all__ = ["CALLING_AE", "ArchiveRefused", "Details", "Imported", "MissingDetails",
           "NotAttested", "UnsupportedType", "Upload", "ingest"]

log = logging.getLogger(__name__)

#: the calling AE title an uploaded or imported object is recorded with
CALLING_AE = "UPLOAD"

_UNKNOWN = "not a DICOM file, zip, NIfTI, PNG or JPEG (judged by its content)"


class UnsupportedType(PermanentError):
    """A file of a kind the node does not take in; it was quarantined."""


@dataclass(frozen=True)
class Upload:
    #: the name it came with (shown to the uploader only; never a path on this machine)
    name: str
    data: bytes


@dataclass
class Imported:
    """What one upload did: the jobs its objects joined and what was quarantined."""

    jobs: list[int] = field(default_factory=list)
    stored: int = 0
    duplicates: int = 0
    #: (quarantine id, reason) for each object refused
    quarantined: list[tuple[int, str]] = field(default_factory=list)
    #: pictures the uploader stated show no identifying text (recorded in the ledger)
    attested: int = 0

    def as_json(self) -> dict[str, object]:
        return {"jobs": self.jobs, "stored": self.stored, "duplicates": self.duplicates,
                "quarantined": [{"id": i, "reason": r} for i, r in self.quarantined],
                "attested": self.attested}


class _Intake:
    """One upload's steps against the spool and the ledger."""

    def __init__(self, ledger: Ledger, spool: Spool, settings: Settings, calling: str) -> None:
        self.ledger, self.spool, self.settings, self.calling = ledger, spool, settings, calling
        self.result = Imported()

    def _incoming(self, data: bytes) -> Path:
        path = self.spool.incoming / f"upload-{uuid.uuid4().hex}.dcm"
        with path.open("xb") as out:
            out.write(data)
        return path

    def quarantine(self, data: bytes, reason: str) -> int:
        """Keep a refused file in quarantine with its reason."""
        path = self._incoming(data)
        try:
            name = self.spool.quarantine(path)
        finally:
            self.spool.discard(path)
        row = self.ledger.record_quarantine(
            reason=f"upload: {reason}", path=name, size_bytes=len(data), sop_class_uid=None,
            sop_instance_uid=None, calling_ae_title=self.calling, peer_address=None)
        self.result.quarantined.append((row, reason))
        log.warning("an uploaded file was quarantined: %s", reason)
        return row

    def store(self, data: bytes) -> None:
        """Take one Part 10 file in as the receive path would."""
        self.spool.check_free_space()
        path = self._incoming(data)
        try:
            outcome, study_uid = take_in(self.ledger, self.spool, self.settings, path,
                                         calling_ae_title=self.calling)
        except Unidentifiable as exc:
            self.spool.discard(path)
            self.quarantine(data, str(exc))
            return
        finally:
            self.spool.discard(path)  # placed already, unless refused or a duplicate
        if outcome is StoreOutcome.DUPLICATE:
            self.result.duplicates += 1
        else:
            self.result.stored += 1
        job = self.ledger.study(study_uid).id
        if job not in self.result.jobs:
            self.result.jobs.append(job)

    def store_dataset(self, ds: Dataset) -> None:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        self.store(buffer.getvalue())


def ingest(ledger: Ledger, spool: Spool, settings: Settings, uploads: Sequence[Upload],
           details: Details, *, calling: str = CALLING_AE,
           uploader: str | None = None) -> Imported:
    """Take the uploaded files in; raise :class:`UnsupportedType` (after quarantining the
    files of unknown kind, and before anything else is taken in) or :class:`MissingDetails`
    (nothing taken in) for an upload to refuse whole.

    ``uploader``: the signed-in user of an upload (the web's), who must state for pictures
    that they show no identifying text (:class:`NotAttested` otherwise); the statement is
    recorded in the ledger against each picture's new SOP Instance UID, and only that lets the
    picture past de-identification's burned-in-text rule. Without one (``dicom-node import``)
    pictures are taken in unstated, and de-identification holds them as any Secondary Capture.
    """
    intake = _Intake(ledger, spool, settings, calling)
    kinds = [kind_of(u.data) for u in uploads]
    unknown = [u for u, k in zip(uploads, kinds, strict=True) if k is Kind.UNKNOWN]
    if unknown:
        for upload in unknown:
            intake.quarantine(upload.data, _UNKNOWN)
        ids = ", ".join(f"#{i}" for i, _ in intake.result.quarantined)
        raise UnsupportedType(f"{len(unknown)} file(s) {_UNKNOWN}; quarantined as {ids}")
    converted = {Kind.PNG, Kind.JPEG, Kind.NIFTI, Kind.NIFTI_GZ}
    if any(k in converted for k in kinds):
        details = details.checked()
    pictures = any(k in (Kind.PNG, Kind.JPEG) for k in kinds)
    if pictures and uploader is not None and details.identifying_text != "no":
        raise NotAttested(NOT_ATTESTED)
    study_uid = generate_uid()
    number = 0
    for upload, kind in zip(uploads, kinds, strict=True):
        if kind is Kind.DICOM:
            intake.store(upload.data)
        elif kind is Kind.ZIP:
            _store_zip(intake, upload.data)
        elif kind in (Kind.PNG, Kind.JPEG):
            number += 1
            _store_picture(intake, upload.data, details, study_uid, number, uploader)
        else:
            _store_volume(intake, upload.data, kind, details, study_uid)
    return intake.result


def _store_picture(intake: _Intake, data: bytes, details: Details, study_uid: str,
                   number: int, uploader: str | None) -> None:
    """One picture as a Secondary Capture in a series of its own (a picture is no slice of a
    volume: a model takes one picture, never a stack of unrelated ones)."""
    try:
        ds = picture.secondary_capture(data, details, study_uid=study_uid,
                                       series_uid=generate_uid(), instance_number=1,
                                       series_number=number, attested=uploader is not None)
    except picture.BadPicture as exc:
        intake.quarantine(data, str(exc))
        return
    if uploader is not None:
        intake.ledger.record_attestation(str(ds.SOPInstanceUID), uploader)
        intake.result.attested += 1
    intake.store_dataset(ds)


def _store_zip(intake: _Intake, data: bytes) -> None:
    try:
        members = archive.members(data)
    except archive.ArchiveRefused as exc:
        row = intake.quarantine(data, str(exc))
        raise archive.ArchiveRefused(f"{exc}; quarantined as #{row}") from None
    for _name, content in members:
        if kind_of(content) is Kind.DICOM:
            intake.store(content)
        else:
            intake.quarantine(content, "a file in the zip is not a DICOM Part 10 file")


def _store_volume(intake: _Intake, data: bytes, kind: Kind, details: Details,
                  study_uid: str) -> None:
    from node.pipeline.ingest import volume

    try:
        datasets = volume.image_series(data, gzipped=kind is Kind.NIFTI_GZ, details=details,
                                       study_uid=study_uid)
    except volume.BadVolume as exc:
        intake.quarantine(data, str(exc))
        return
    for ds in datasets:
        intake.store_dataset(ds)
