"""The ledger on SQLite and on the local PostgreSQL: same code, same behaviour."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from node import db
from node.config import CompletionSettings, RequiredSeries
from node.errors import IllegalTransition, UnknownStudy
from node.jobstate import JobState
from node.ledger import Ledger, ReceivedInstance, StoreOutcome, utcnow
from node.scheduler import sweep


def inst(sop: str, study: str = "1.2.3", series: str = "1.2.3.1", rules: tuple[str, ...] = ()) -> ReceivedInstance:
    return ReceivedInstance(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            study_instance_uid=study, series_instance_uid=series,
                            transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
                            matched_rules=rules, size_bytes=100, calling_ae_title="CT1")


def test_records_instances_and_counts_them(ledger: Ledger) -> None:
    placed: list[str] = []
    for i in range(3):
        out = ledger.record_instance(inst(f"1.2.3.4.{i}"), f"p{i}", lambda i=i: placed.append(f"p{i}"))
        assert out is StoreOutcome.STORED
    assert placed == ["p0", "p1", "p2"]
    (study,) = ledger.studies()
    assert (study.study_instance_uid, study.state, study.instances) == ("1.2.3", JobState.RECEIVING, 3)
    assert ledger.instance_paths(study.id) == ["p0", "p1", "p2"]


def test_a_duplicate_is_not_placed_twice(ledger: Ledger) -> None:
    placed: list[int] = []
    ledger.record_instance(inst("1.2.3.4.1"), "p", lambda: placed.append(1))
    assert ledger.record_instance(inst("1.2.3.4.1"), "p", lambda: placed.append(2)) is StoreOutcome.DUPLICATE
    assert placed == [1]
    (study,) = ledger.studies()
    assert (study.instances, study.duplicates) == (1, 1)


def test_a_failed_placement_leaves_no_row(ledger: Ledger) -> None:
    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        ledger.record_instance(inst("1.2.3.4.9"), "p", boom)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(db.instances.c.id)).all() == []


def test_completion_sweep_and_reopen_on_late_arrival(ledger: Ledger) -> None:
    ledger.record_instance(inst("1.2.3.4.1"), "p1", lambda: None)
    settings = CompletionSettings(quiet_period_s=5, max_wait_s=60)
    assert sweep(ledger, settings, utcnow()) == 0
    assert sweep(ledger, settings, utcnow() + timedelta(seconds=6)) == 1
    (study,) = ledger.studies()
    assert (study.state, study.completion_reason, study.generation) == (JobState.COMPLETE, "quiet-period", 1)
    assert study.completed_at is not None
    # a late instance re-opens the study for a new quiet period, as a new generation
    assert ledger.record_instance(inst("1.2.3.4.2"), "p2", lambda: None) is StoreOutcome.REOPENED
    (study,) = ledger.studies()
    assert (study.state, study.generation, study.instances) == (JobState.RECEIVING, 2, 2)
    # a re-sent instance does not re-open anything
    assert sweep(ledger, settings, utcnow() + timedelta(seconds=6)) == 1
    assert ledger.record_instance(inst("1.2.3.4.2"), "p2", lambda: None) is StoreOutcome.DUPLICATE
    assert ledger.studies()[0].state == JobState.COMPLETE
    with ledger.engine.connect() as conn:
        kinds = [(r.kind, r.from_state, r.to_state) for r in conn.execute(
            select(db.events.c.kind, db.events.c.from_state, db.events.c.to_state).order_by(db.events.c.id))]
    assert kinds == [("transition", "RECEIVING", "COMPLETE"), ("reopened", "COMPLETE", "RECEIVING"),
                     ("transition", "RECEIVING", "COMPLETE")]


def test_late_arrival_ignore_keeps_the_study_complete(ledger: Ledger) -> None:
    quiet = Ledger(ledger.engine, late_arrival="ignore")
    quiet.record_instance(inst("1.2.3.4.1"), "p1", lambda: None)
    sweep(quiet, CompletionSettings(quiet_period_s=0, max_wait_s=60), utcnow() + timedelta(seconds=1))
    assert quiet.record_instance(inst("1.2.3.4.2"), "p2", lambda: None) is StoreOutcome.STORED
    (study,) = quiet.studies()
    assert (study.state, study.instances) == (JobState.COMPLETE, 2)


def test_required_series_and_max_wait_hold(ledger: Ledger) -> None:
    rules = (RequiredSeries(name="axial", modality="CT", min_instances=2),
             RequiredSeries(name="pet", modality="PT"))
    settings = CompletionSettings(quiet_period_s=1, max_wait_s=30, max_wait_action="hold", required_series=rules)
    ledger.record_instance(inst("1.2.3.4.1", rules=("axial",)), "p1", lambda: None)
    ledger.record_instance(inst("1.2.3.4.2", rules=("axial",)), "p2", lambda: None)
    sid = ledger.studies()[0].id
    assert ledger.rule_counts(sid) == {"axial": 2}
    assert sweep(ledger, settings, utcnow() + timedelta(seconds=10)) == 0  # PET missing
    assert sweep(ledger, settings, utcnow() + timedelta(seconds=31)) == 1
    assert ledger.studies()[0].state == JobState.HELD
    assert ledger.force_complete("1.2.3") == JobState.HELD
    (study,) = ledger.studies()
    assert (study.state, study.completion_reason) == (JobState.COMPLETE, "forced")


def test_force_complete_unknown_and_illegal(ledger: Ledger) -> None:
    with pytest.raises(UnknownStudy):
        ledger.force_complete("9.9.9")
    ledger.record_instance(inst("1.2.3.4.1"), "p1", lambda: None)
    ledger.force_complete("1.2.3")
    study = ledger.studies()[0]
    with pytest.raises(IllegalTransition):
        ledger.transition(study.id, JobState.DONE, reason="skip ahead")


def test_quarantine_rows(ledger: Ledger) -> None:
    qid = ledger.record_quarantine(reason="not a DICOM data set", path="x.dcm", size_bytes=12,
                                   sop_class_uid=None, sop_instance_uid="1.2", calling_ae_title="BAD",
                                   peer_address="127.0.0.1")
    (row,) = ledger.quarantined()
    assert (row.id, row.reason, row.path, row.calling_ae_title) == (qid, "not a DICOM data set", "x.dcm", "BAD")


def test_an_older_ledger_gains_new_columns(tmp_path: Path) -> None:
    """A node upgrade adds the columns a newer version needs; data stays."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = db.make_engine(url)
    db.create_schema(engine)
    Ledger(engine).record_instance(inst("1.2.3.4.1"), "p1", lambda: None)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE studies DROP COLUMN state_reason"))
    engine.dispose()
    engine = db.make_engine(url)
    db.create_schema(engine)
    (study,) = Ledger(engine).studies()
    assert study.instances == 1 and study.state_reason is None
