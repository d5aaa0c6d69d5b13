"""The operator's two actions on a quarantined object: release it, or delete it.

Shared by ``dicom-node quarantine release|delete ID`` and the API's
``POST /api/v1/quarantine/{id}/release`` / ``DELETE /api/v1/quarantine/{id}``, so both do the
same thing.

A release takes the object in again the way the receive path takes in a C-STORE
(``node.scp.handlers``): its header read by the same :func:`node.scp.identify.identify`, the
file made durable by :meth:`Spool.settle`, placed by :meth:`Spool.place` inside
:meth:`Ledger.record_instance`'s transaction. An object that is still refused stays
quarantined, with the new reason. It lives here, not in ``node.scp``, because the web layer may
call the pipeline but not the wire.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from node.core import at_rest
from node.core.errors import PermanentError
from node.core.ledger import Ledger, QuarantineRow, ReceivedInstance, StoreOutcome
from node.core.series_rules import matching_rules
from node.core.settings import Settings
from node.core.spool import Spool
from node.scp.identify import Unidentifiable, identify


class NotQuarantined(PermanentError):
    """No quarantined object has that id."""


class StillRefused(PermanentError):
    """A released object the receive path refuses again; it stays quarantined."""


@dataclass(frozen=True)
class Released:
    quarantine_id: int
    outcome: StoreOutcome
    #: the job the instance now belongs to
    job: int

    def as_json(self) -> dict[str, object]:
        return {"id": self.quarantine_id, "outcome": self.outcome.value, "job": self.job}


def entry(ledger: Ledger, quarantine_id: int) -> QuarantineRow:
    row = ledger.quarantine_entry(quarantine_id)
    if row is None:
        raise NotQuarantined(f"no quarantined object #{quarantine_id}")
    return row


def delete(ledger: Ledger, spool: Spool, quarantine_id: int) -> QuarantineRow:
    """Remove the object's file, then its row (a stop in between leaves a row whose delete
    simply runs again, never a file no row names)."""
    row = entry(ledger, quarantine_id)
    spool.remove_quarantined(row.path)
    ledger.forget_quarantined(row.id)
    return row


def release(ledger: Ledger, spool: Spool, settings: Settings, quarantine_id: int) -> Released:
    """Take a quarantined object in again; raise :class:`StillRefused` (its row now holding
    the new reason) when the receive path refuses it again."""
    row = entry(ledger, quarantine_id)
    spool.check_free_space()
    received = spool.incoming / f"release-{uuid.uuid4().hex}.dcm"
    try:
        return _take_in(ledger, spool, settings, row, received)
    except Unidentifiable as exc:
        ledger.requarantine(row.id, str(exc))
        raise StillRefused(f"quarantined object #{row.id} is still refused: {exc}") from None
    finally:
        spool.discard(received)  # placed already, unless it was refused or a duplicate


def _take_in(ledger: Ledger, spool: Spool, settings: Settings, row: QuarantineRow,
             received: Path) -> Released:
    source = spool.quarantined(row.path)
    try:
        with at_rest.open_plain(source) as src, received.open("xb") as dst:
            shutil.copyfileobj(src, dst, at_rest.CHUNK)
    except FileNotFoundError:
        raise Unidentifiable("its file is missing from var/quarantine") from None
    except at_rest.SealedFileError as exc:
        raise Unidentifiable(str(exc)) from None
    outcome, study_uid = take_in(ledger, spool, settings, received,
                                 calling_ae_title=row.calling_ae_title or "",
                                 sop_class_uid=row.sop_class_uid or "",
                                 sop_instance_uid=row.sop_instance_uid or "")
    # the instance is in the spool and the ledger (or was already): the quarantined copy goes
    spool.remove_quarantined(row.path)
    ledger.forget_quarantined(row.id)
    return Released(row.id, outcome, ledger.study(study_uid).id)


def take_in(ledger: Ledger, spool: Spool, settings: Settings, received: Path, *,
            calling_ae_title: str, sop_class_uid: str = "",
            sop_instance_uid: str = "") -> tuple[StoreOutcome, str]:
    """The receive path's steps for a Part 10 file already under ``spool.incoming``, taken in
    from outside the wire (a release, an upload or ``dicom-node import``): header read by
    :func:`identify`, file made durable by :meth:`Spool.settle`, placed inside
    :meth:`Ledger.record_instance`'s transaction. Answer the outcome and the Study Instance
    UID; raise :class:`Unidentifiable` for a file the receive path would quarantine (the
    caller decides what to do with it)."""
    try:
        meta = read_file_meta_info(received)
        transfer_syntax = str(meta.TransferSyntaxUID)
    except (InvalidDicomError, AttributeError, OSError, ValueError):
        raise Unidentifiable("no usable File Meta Information (not a DICOM file)") from None
    spool.settle(received)
    ident = identify(received,
                     sop_class_uid or str(meta.get("MediaStorageSOPClassUID", "")),
                     sop_instance_uid or str(meta.get("MediaStorageSOPInstanceUID", "")),
                     transfer_syntax)
    relative = spool.relative_path(ident.study_instance_uid, ident.sop_instance_uid)
    instance = ReceivedInstance(
        sop_instance_uid=ident.sop_instance_uid,
        sop_class_uid=ident.sop_class_uid,
        study_instance_uid=ident.study_instance_uid,
        series_instance_uid=ident.series_instance_uid,
        transfer_syntax_uid=transfer_syntax,
        modality=ident.modality,
        matched_rules=matching_rules(settings.completion.required_series, ident.modality,
                                     ident.series_description),
        size_bytes=received.stat().st_size,
        calling_ae_title=calling_ae_title,
    )
    outcome = ledger.record_instance(instance, relative,
                                     lambda: spool.place(received, relative))
    return outcome, ident.study_instance_uid
