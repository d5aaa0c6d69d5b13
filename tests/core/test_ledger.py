"""The ledger on SQLite and on the local PostgreSQL: same code, same behaviour."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import delete, event, select, update

from node import commands as cli
from node.core import db
from node.core.at_rest import StorageKeys
from node.core.errors import IllegalTransition, UnknownStudy
from node.core.jobstate import JobState
from node.core.ledger import FINISHED, Ledger, ReceivedInstance, StoreOutcome, open_ledger, utcnow
from node.core.settings import CompletionSettings, RequiredSeries
from node.core.settings_load import load_settings
from node.core.spool import Spool
from node.pipeline.flow import sweep
from node.scp.recovery import reconcile
from tests.conftest import write_config
from tests.data import ct_series


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


# ------------------------------------------------------------------ live work, pages, recovery

T0 = datetime(2026, 12, 1, 8, 0, 0)
#: oldest first; FINISHED ones interleaved with live ones
MIX = [JobState.DONE, JobState.RECEIVING, JobState.DONE, JobState.DISCARDED, JobState.DONE,
       JobState.FAILED, JobState.DONE, JobState.DONE, JobState.BUILT, JobState.DONE]


def make_studies(ledger: Ledger, states: list[JobState]) -> list[int]:
    """One study per state, received a minute apart (states set directly: a fixture)."""
    ids = []
    for n, state in enumerate(states):
        uid = f"1.2.9.{n}"
        ledger.record_instance(inst(f"{uid}.1", study=uid), f"p{n}", lambda: None)
        sid = ledger.study(uid).id
        with ledger.engine.begin() as conn:
            conn.execute(update(db.studies).where(db.studies.c.id == sid)
                         .values(state=state.value, received_at=T0 + timedelta(minutes=n)))
        ids.append(sid)
    return ids


def test_studies_by_state_and_pages_newest_first(ledger: Ledger) -> None:
    ids = make_studies(ledger, MIX)
    finished = [i for i, s in zip(ids, MIX, strict=True) if s in FINISHED]
    assert [r.id for r in ledger.studies(JobState.RECEIVING, JobState.FAILED, JobState.BUILT)] == [ids[1], ids[5], ids[8]]
    assert [r.instances for r in ledger.studies(JobState.DONE)] == [1] * 6
    # pages of 3, newest page first, each oldest first, continued from its oldest row
    pages, before = [], None
    while True:
        page = ledger.page(FINISHED, limit=3, before=before)
        if not page:
            break
        pages.append([r.id for r in page])
        before = page[0].id
    assert pages == [finished[-3:], finished[-6:-3], finished[:-6]]
    since = T0 + timedelta(minutes=6)
    assert [r.id for r in ledger.page(FINISHED, limit=50, since=since)] == [ids[6], ids[7], ids[9]]
    assert [r.id for r in ledger.page((JobState.DONE,), limit=2, since=since, before=ids[9])] == [ids[6], ids[7]]
    with pytest.raises(UnknownStudy):
        ledger.page(FINISHED, limit=3, before=10_000)


def _statements(ledger: Ledger, read: Callable[[], object]) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(ledger.engine, "before_cursor_execute", keep)
    try:
        read()
    finally:
        event.remove(ledger.engine, "before_cursor_execute", keep)
    return [(s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]


def test_the_periodic_queries_and_status_pages_go_through_the_state_index(ledger: Ledger) -> None:
    """What the timers and `status` ask: the index on (state, received_at, id), no instance count."""
    ids = make_studies(ledger, MIX)
    reads = [lambda: ledger.studies(JobState.RECEIVING), lambda: ledger.studies(JobState.BUILT),
             lambda: ledger.studies(JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED),
             lambda: ledger.page(FINISHED, limit=3, before=ids[7])]
    for read in reads:
        statements = [s for s in _statements(ledger, read) if "FROM studies" in s[0]
                      and "studies.id = " not in s[0]]  # the cursor's own primary-key lookup
        assert statements
        for statement, parameters in statements:
            assert "instances" not in statement.split("FROM")[1]
            with ledger.engine.connect() as conn:
                if ledger.engine.dialect.name == "sqlite":
                    plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
                    assert "USING INDEX ix_studies_state_received (state=?" in plan, plan
                    assert "SCAN studies" not in plan, plan
                else:
                    conn.exec_driver_sql("SET enable_seqscan = off")
                    plan = " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
                    assert "ix_studies_state_received" in plan, plan


def test_status_shows_every_live_job_and_pages_the_finished_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})
    ledger = open_ledger(load_settings(str(config)), create=True)
    ids = make_studies(ledger, MIX)
    live = [i for i, s in zip(ids, MIX, strict=True) if s not in FINISHED]
    finished = [i for i, s in zip(ids, MIX, strict=True) if s in FINISHED]

    def status(*args: str) -> list[dict[str, Any]]:
        assert cli.main(["--config", str(config), "status", "--json", *args]) == 0
        return list(json.loads(capsys.readouterr().out))

    rows = status("--limit", "2")
    assert [r["id"] for r in rows] == sorted(live + finished[-2:])
    assert set(rows[0]) == {"id", "study_instance_uid", "state", "instances", "duplicates", "generation",
                            "received_at", "last_received_at", "completed_at", "completion_reason",
                            "state_reason", "calling_ae_title", "deliveries"}
    assert [r["id"] for r in status()] == ids  # fewer than 50 finished: all of them
    assert [r["id"] for r in status("--state", "done,failed", "--limit", "3")] == [ids[5], ids[6], ids[7], ids[9]][-3:]
    assert [r["id"] for r in status("--since", "2026-12-01T08:07")] == [ids[7], ids[8], ids[9]]
    # the table says how to get the next page, and that command gives it
    assert cli.main(["--config", str(config), "status", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{len(live) + 2} studies; 0 quarantined objects" in out
    more = out.strip().splitlines()[-1]
    assert more == f"older: dicom-node status --state DONE,DISCARDED --before {finished[-2]} --limit 2"
    assert [r["id"] for r in status(*more.split()[3:])] == finished[-4:-2]
    # a wrong state is one clear line, before anything is read
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--config", str(config), "status", "--state", "DONNE"])
    assert exit_.value.code == 2
    assert "'DONNE': states are RECEIVING, COMPLETE" in capsys.readouterr().err


def _place(spool: Spool, files: list[Path]) -> list[str]:
    placed = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        spool.absolute(relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, spool.absolute(relative))
        placed.append(relative)
    return placed


def test_recovery_compares_recently_changed_study_folders_only(ledger: Ledger, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "var", 0, StorageKeys.from_secret(b"0" * 32))
    spool.prepare()
    old = _place(spool, ct_series(tmp_path / "a", 3))
    recent = _place(spool, ct_series(tmp_path / "b", 4))
    assert ledger.newest_receipt() is None
    assert reconcile(spool, ledger, ()) == 7  # nothing recorded yet: every folder is new
    with ledger.engine.begin() as conn:
        # as if the receiving path had recorded them (recovery's own rows carry no AE title)...
        conn.execute(update(db.instances).values(calling_ae_title="CT1"))
        # ...and the commits of all but one file of each study were lost
        conn.execute(delete(db.instances).where(db.instances.c.path.in_(old[1:] + recent[1:])))
        conn.execute(update(db.studies).values(instances=1))  # rolled back with them
    newest = ledger.newest_receipt()
    assert newest is not None
    # the old study's folder last changed two hours before the newest receipt: not listed
    stale = newest.replace(tzinfo=UTC).timestamp() - 2 * 3600
    os.utime((spool.store / old[0]).parent, (stale, stale))
    assert reconcile(spool, ledger, ()) == 3
    with ledger.engine.connect() as conn:
        paths = set(conn.execute(select(db.instances.c.path)).scalars())
    assert paths == {old[0], *recent}
    counts = sorted(s.instances for s in ledger.studies())
    assert counts == [1, 4]
    assert reconcile(spool, ledger, ()) == 0
