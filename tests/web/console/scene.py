"""A ledger that looks like a working node's: studies over the last 30 days in many states,
deliveries that succeeded and failed, quarantined objects, and one study whose files are real
DICOM in the spool with a Series Description that holds a script tag."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
from sqlalchemy import update

from node.core import db, rollup
from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance, utcnow
from node.core.outbox import Kind, NewItem, Outbox, RetryPolicy
from node.core.settings import Settings
from tests.data import ct_series
from tests.web.conftest import make_job

SCRIPT = "<script>alert(1)</script>"
AR_ERROR = "ACK AR from emr: unknown patient <b>bold</b>"
ONCE = RetryPolicy(base_s=1, cap_s=1, max_attempts=1)


@dataclass
class Scene:
    failed: list[int]  # FAILED jobs whose ORU the EMR rejected
    done: list[int]
    script_job: int  # real files, Series Description holding a script tag


def _received(ledger: Ledger, job: int, days_ago: float) -> None:
    at = utcnow() - timedelta(days=days_ago)
    with ledger.engine.begin() as conn:
        conn.execute(update(db.studies).where(db.studies.c.id == job)
                     .values(received_at=at, opened_at=at, last_received_at=at))


def _built(ledger: Ledger, outbox: Outbox, job: int) -> None:
    """Move a COMPLETE job to BUILT with two items: a SEG for the PACS, an ORU for the EMR."""
    for state in (JobState.DEIDENTIFIED, JobState.INFERRED):
        ledger.transition(job, state, reason=f"test: {state}")
    row = ledger.study_by_id(job)
    items = [NewItem("lung-ct", Kind.DICOM, "pacs", f"2.25.{job}1", "seg", f"{job}/seg.dcm"),
             NewItem("lung-ct", Kind.HL7, "emr", f"2.25.{job}2", "oru", f"{job}/oru.hl7")]
    ledger.transition(job, JobState.BUILT, reason="test: built",
                      also=lambda conn: outbox.add(conn, job, row.generation, items))


def _deliver(ledger: Ledger, outbox: Outbox, job: int, *, emr_rejects: bool) -> None:
    for item in outbox.items(job):
        if item.kind == Kind.HL7 and emr_rejects:
            outbox.record(item, "permanent", AR_ERROR, ONCE)
        else:
            outbox.record(item, "delivered", "", ONCE)
    if emr_rejects:
        ledger.transition(job, JobState.FAILED, reason="delivery failed: emr rejected the ORU")
    else:
        for state in (JobState.DELIVERED, JobState.REPORTED, JobState.DONE):
            ledger.transition(job, state, reason=f"test: {state}")


def _real_study(ledger: Ledger, settings: Settings, files_dir: Path) -> int:
    """Three real CT instances in the spool, their series described by a script tag."""
    files = ct_series(files_dir, 3)
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.SeriesNumber = SCRIPT, 7
        relative = f"real/{n}.dcm"
        (settings.spool_path / "real").mkdir(parents=True, exist_ok=True)
        ds.save_as(settings.spool_path / relative, enforce_file_format=True)
        ledger.record_instance(ReceivedInstance(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=uid, series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), modality="CT",
            matched_rules=(), size_bytes=path.stat().st_size, calling_ae_title="CT_ROOM_2"),
            relative, lambda: None)
    job = ledger.study(uid).id
    ledger.transition(job, JobState.COMPLETE, reason="test: quiet period")
    return job


def build(ledger: Ledger, outbox: Outbox, settings: Settings, files_dir: Path) -> Scene:
    done, failed = [], []
    # 24 finished studies over the last 30 days (1 today, some days several, some none)
    for k, days_ago in enumerate([0.1, 1.2, 1.5, 2.3, 3.1, 3.2, 3.3, 4.6, 6.2, 8.4, 9.1, 11.7,
                                  12.2, 12.3, 15.5, 17.8, 19.4, 21.1, 22.6, 24.9, 26.3, 27.7,
                                  28.2, 40.0]):
        job = make_job(ledger, f"1.2.826.0.1.3680043.8.498.{k + 100}", series=2,
                       per_series=3, to=(JobState.COMPLETE,))
        _built(ledger, outbox, job)
        _deliver(ledger, outbox, job, emr_rejects=False)
        _received(ledger, job, days_ago)
        done.append(job)
    for k in range(2):
        job = make_job(ledger, f"1.2.826.0.1.3680043.8.498.{k + 200}", to=(JobState.COMPLETE,))
        _built(ledger, outbox, job)
        _deliver(ledger, outbox, job, emr_rejects=True)
        _received(ledger, job, 0.05 * (k + 1))
        failed.append(job)
    make_job(ledger, "1.2.826.0.1.3680043.8.498.300", to=())  # still receiving
    make_job(ledger, "1.2.826.0.1.3680043.8.498.301", to=(JobState.HELD,))
    script_job = _real_study(ledger, settings, files_dir)
    for k in range(3):
        ledger.record_quarantine(reason="not DICOM: no preamble", path=f"q/{k}.bin",
                                 size_bytes=100, sop_class_uid=None, sop_instance_uid=None,
                                 calling_ae_title="MODALITY", peer_address="127.0.0.1")
    with ledger.engine.begin() as conn:  # the statistics' rollup follows the moved times,
        rollup.rebuild(conn)  # as migration r0007's back-fill makes it from the rows
    return Scene(failed, done, script_job)
