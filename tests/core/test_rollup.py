"""The statistics' running totals (node.core.rollup) on SQLite and PostgreSQL: after a mixed
history made through the ledger's own calls (studies received, duplicates, moves through the
states, failures, retries, force-completes, a late instance that reopens a finished job, model
runs replaced and superseded, a recovery's recount, days that end), the totals the ledger kept
equal a recount from the raw rows; the migration's back-fill gives the same totals; the
histogram's quantiles stay within their documented error."""

from __future__ import annotations

import math
import random
from datetime import timedelta

from alembic import command
from sqlalchemy import select, update

from node.core import db, migrations, rollup
from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance, ResultRecord, StoreOutcome, record_results

S = JobState


def _receive(ledger: Ledger, study: str, count: int, *, first: int = 0,
             sop_prefix: str | None = None) -> list[StoreOutcome]:
    return [ledger.record_instance(ReceivedInstance(
        sop_instance_uid=f"{sop_prefix or study}.1.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study, series_instance_uid=f"{study}.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", matched_rules=(),
        size_bytes=1, calling_ae_title="CT1"), f"x/{study}.{n}", lambda: None)
        for n in range(first, first + count)]


def _run(model: str, triage: str | None) -> ResultRecord:
    return ResultRecord(model=model, model_version="1", triage=triage, finding=None,
                        folder=f"results/x/{model}")


def _move(ledger: Ledger, job: int, *states: JobState,
          runs: tuple[ResultRecord, ...] = ()) -> None:
    for state in states:
        also = None
        if state == S.INFERRED:
            generation = ledger.study_by_id(job).generation
            def also(conn, g=generation):  # type: ignore[no-untyped-def]
                record_results(conn, job, g, runs)
        assert ledger.transition(job, state, reason="test", also=also)


def _history(ledger: Ledger) -> None:
    """Today's part of the history: every kind of change the rollup counts."""
    a, b, c, d = (f"1.2.826.0.1.99.{n}" for n in range(1, 5))
    _receive(ledger, a, 3)
    job_a = ledger.study(a).id
    _move(ledger, job_a, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("lung-ct", "URGENT"), _run("brain-mask", None)))
    _move(ledger, job_a, S.BUILT, S.DELIVERED, S.REPORTED, S.DONE)
    # a late instance reopens it (generation 2), whose runs supersede generation 1's
    assert _receive(ledger, a, 1, first=3) == [StoreOutcome.REOPENED]
    _move(ledger, job_a, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("lung-ct", "ROUTINE"),))
    _move(ledger, job_a, S.BUILT, S.DELIVERED, S.REPORTED)
    # b: a duplicate; fails at delivery, retried from BUILT
    assert _receive(ledger, b, 2) + _receive(ledger, b, 1) == [
        StoreOutcome.STORED, StoreOutcome.STORED, StoreOutcome.DUPLICATE]
    job_b = ledger.study(b).id
    _move(ledger, job_b, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("lung-ct", "PRIORITY"),))
    _move(ledger, job_b, S.BUILT, S.FAILED, S.BUILT, S.DELIVERED, S.REPORTED, S.DONE)
    # c: held, discarded, force-completed; fails, force-completed again
    _receive(ledger, c, 1)
    job_c = ledger.study(c).id
    _move(ledger, job_c, S.HELD, S.DISCARDED)
    assert ledger.force_complete(c) == S.DISCARDED
    _move(ledger, job_c, S.FAILED)
    assert ledger.force_complete(c) == S.FAILED
    # d: inference run again on the same generation (an operator's retry): its runs replace
    _receive(ledger, d, 2)
    job_d = ledger.study(d).id
    _move(ledger, job_d, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("lung-ct", "URGENT"), _run("brain-mask", "ROUTINE")))
    _move(ledger, job_d, S.FAILED, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("lung-ct", "ROUTINE"),))
    # a study whose only instance is already in the ledger: made, with no instance
    assert _receive(ledger, "1.2.826.0.1.99.5", 1, sop_prefix=a) == [StoreOutcome.DUPLICATE]
    # recovery's recount, after the count had drifted in the study row and the rollup alike
    received = ledger.study(d).received_at.date()
    with ledger.engine.begin() as conn:
        conn.execute(update(db.studies).where(db.studies.c.id == job_d)
                     .values(instances=db.studies.c.instances + 5))
        tally = rollup.Tally()
        tally.add(rollup.INSTANCES, received, n=5)
        tally.write(conn)
    ledger.recount(job_d)
    assert ledger.study(d).instances == 2


def _back_a_day(ledger: Ledger) -> None:
    """Every time in the ledger a day earlier, then the rollup rebuilt from the rows: the
    history so far happened yesterday (row by row: SQLite has no arithmetic on times)."""
    day = timedelta(days=1)
    with ledger.engine.begin() as conn:
        for table, columns in ((db.studies, ("received_at", "opened_at", "completed_at")),
                               (db.events, ("at",)), (db.results, ("created_at",))):
            for row in conn.execute(select(table.c.id, *(table.c[c] for c in columns))).all():
                conn.execute(update(table).where(table.c.id == row.id).values(
                    {c: row._mapping[c] - day for c in columns if row._mapping[c]}))
        rollup.rebuild(conn)


def _recounted(ledger: Ledger) -> tuple[rollup.Daily, dict[str, int]]:
    with ledger.engine.connect() as conn:
        daily, states = rollup.recount(conn)
    return daily, {k: n for k, n in states.items() if n}


def _stored(ledger: Ledger) -> tuple[rollup.Daily, dict[str, int]]:
    with ledger.engine.connect() as conn:
        daily, states = rollup.stored(conn)
    return daily, dict(states)


def mixed_history(ledger: Ledger) -> None:
    """Yesterday's history, then today's changes on yesterday's jobs and new ones."""
    _history(ledger)
    _back_a_day(ledger)
    a, b, d = (f"1.2.826.0.1.99.{n}" for n in (1, 2, 4))
    # a late instance of yesterday's study counts on yesterday; its reopening today
    assert _receive(ledger, b, 1, first=10) == [StoreOutcome.REOPENED]
    # a job completed yesterday, reported today: about a day from completion to REPORTED
    job_a = ledger.study(a).id
    _move(ledger, job_a, S.DONE)
    job_d = ledger.study(d).id
    _move(ledger, job_d, S.BUILT, S.DELIVERED, S.REPORTED)
    # b's new generation: yesterday's runs superseded by today's
    job_b = ledger.study(b).id
    _move(ledger, job_b, S.COMPLETE, S.DEIDENTIFIED, S.INFERRED,
          runs=(_run("brain-mask", "URGENT"),))
    for n in (6, 7):
        _receive(ledger, f"1.2.826.0.1.99.{n}", 2)


def test_the_running_totals_equal_a_recount_of_the_rows(ledger: Ledger) -> None:
    mixed_history(ledger)
    daily, states = _stored(ledger)
    assert (daily, states) == _recounted(ledger)
    today = ledger.study("1.2.826.0.1.99.6").received_at.date()
    yesterday = today - timedelta(days=1)
    assert daily[rollup.STUDIES, yesterday, ""] == 5 and daily[rollup.STUDIES, today, ""] == 2
    # a: 3 + 1 late, b: 2 + 1 late today, c: 1, d: 2 (recounted), the duplicate-only study: 0
    assert daily[rollup.INSTANCES, yesterday, ""] == 10
    # today's two studies are still receiving: their 4 instances are read from their rows
    assert daily[rollup.INSTANCES, today, ""] == 0
    with ledger.engine.connect() as conn:
        assert rollup.receiving_instances(conn, yesterday) == {yesterday: 0, today: 4}
    assert daily[rollup.ENTERED, today, "RECEIVING"] == 3  # two new, one reopened
    runs = {k: n for (m, day, k), n in daily.items() if m == rollup.RUNS}
    assert runs == {"lung-ct/ROUTINE": 2, "brain-mask/URGENT": 1}
    assert sum(runs.values()) == 3
    reported = {(day, int(k)): n for (m, day, k), n in daily.items() if m == rollup.REPORTED_S}
    assert sum(n for (day, _), n in reported.items() if day == yesterday) == 3
    # d completed yesterday, reported today: its bucket holds a day's seconds
    (bucket_today,) = [k for day, k in reported if day == today]
    assert abs(rollup.middle(bucket_today) / 86400 - 1) < rollup.RELATIVE_ERROR + 0.01
    assert states == {"RECEIVING": 3, "REPORTED": 1, "DONE": 1, "COMPLETE": 1,
                      "INFERRED": 1}
    assert sum(states.values()) == 7


def test_the_migration_back_fills_what_the_ledger_kept(ledger: Ledger) -> None:
    mixed_history(ledger)
    kept = _stored(ledger)
    with ledger.engine.begin() as conn:
        command.downgrade(migrations._config(conn), "r0006_audit_forwarding")
    assert migrations.current(ledger.engine) == "r0006_audit_forwarding"
    assert migrations.upgrade(ledger.engine) == ("r0006_audit_forwarding", migrations.HEAD)
    assert _stored(ledger) == kept
    # and the ledger goes on counting from there
    _receive(ledger, "1.2.826.0.1.99.8", 1)
    assert _stored(ledger) == _recounted(ledger)


def test_a_late_instance_kept_without_reopening_counts_at_once(ledger: Ledger) -> None:
    keeping = Ledger(ledger.engine, late_arrival="ignore")
    _receive(keeping, "1.2.826.0.1.99.9", 2)
    _move(keeping, keeping.study("1.2.826.0.1.99.9").id, S.COMPLETE)
    assert _receive(keeping, "1.2.826.0.1.99.9", 1, first=2) == [StoreOutcome.STORED]
    daily, _ = _stored(ledger)
    assert daily[rollup.INSTANCES, keeping.study("1.2.826.0.1.99.9").received_at.date(), ""] == 3
    assert _stored(ledger) == _recounted(ledger)


def test_an_empty_ledger_has_an_empty_rollup(ledger: Ledger) -> None:
    assert _stored(ledger) == ({}, {})
    assert _recounted(ledger) == ({}, {})
    with ledger.engine.connect() as conn:
        assert conn.execute(select(db.daily_counts.c.n)).all() == []


def test_buckets_hold_every_value_within_the_documented_error() -> None:
    rng = random.Random(13)
    for value in [1.0, 1.5, 2.0, 59.9, 60.0, 3600.0, 86400.0, 30 * 86400.0] + [
            10 ** rng.uniform(0, 7) for _ in range(2000)]:
        index = rollup.bucket(value)
        low, high = 2 ** ((index - 1) / rollup.STEPS), 2 ** (index / rollup.STEPS)
        assert low <= value * (1 + 1e-12) and value < high * (1 + 1e-12)
        assert abs(rollup.middle(index) / value - 1) <= rollup.RELATIVE_ERROR + 1e-12
    assert rollup.bucket(0.0) == rollup.bucket(0.99) == rollup.bucket(-3.0) == 0
    assert rollup.middle(0) == 0.5
    assert rollup.bucket(30 * 86400) < 400  # a month of seconds in under 400 buckets


def test_quantiles_read_from_the_histogram_are_within_the_error() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 5000):
        values = sorted(rng.uniform(1, 2000) for _ in range(n))
        histogram: dict[int, int] = {}
        for v in values:
            histogram[rollup.bucket(v)] = histogram.get(rollup.bucket(v), 0) + 1
        count, median, p95 = rollup.quantiles(histogram)
        true_median = (values[(n - 1) // 2] + values[n // 2]) / 2
        true_p95 = values[math.ceil(0.95 * n) - 1]
        assert count == n and median is not None and p95 is not None
        assert abs(median / true_median - 1) <= rollup.RELATIVE_ERROR + 1e-9
        assert abs(p95 / true_p95 - 1) <= rollup.RELATIVE_ERROR + 1e-9
    assert rollup.quantiles({}) == (0, None, None)
