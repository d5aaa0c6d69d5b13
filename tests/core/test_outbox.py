"""The outbox on SQLite and on the local PostgreSQL: back-off, dead letters, re-queueing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from node.core.errors import IllegalTransition
from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance, utcnow
from node.core.outbox import ItemState, NewItem, Outbox, RetryPolicy, is_due

POLICY = RetryPolicy(base_s=10, cap_s=60, max_attempts=4)


def _inferred_study(ledger: Ledger) -> int:
    ledger.record_instance(ReceivedInstance(
        sop_instance_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", matched_rules=(),
        size_bytes=1, calling_ae_title="CT1"), "a/b.dcm", lambda: None)
    study = ledger.studies()[0]
    for state in (JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED):
        ledger.transition(study.id, state, reason="test")
    return study.id


def _items(n: int = 2, destination: str = "pacs") -> list[NewItem]:
    return [NewItem("m", "dicom", destination, f"2.25.{i}", f"obj-{i}", f"x/{i}.dcm")
            for i in range(n)]


def test_back_off_doubles_up_to_the_cap() -> None:
    assert [POLICY.delay_s(a) for a in range(1, 6)] == [10, 20, 40, 60, 60]


def test_rows_are_written_with_the_transition_or_not_at_all(ledger: Ledger) -> None:
    outbox = Outbox(ledger.engine)
    study_id = _inferred_study(ledger)
    with pytest.raises(IllegalTransition):  # DELIVERED is not reachable from INFERRED
        ledger.transition(study_id, JobState.DELIVERED, reason="x",
                          also=lambda conn: outbox.add(conn, study_id, 1, _items()))
    assert outbox.items() == []
    assert ledger.transition(study_id, JobState.BUILT, reason="x",
                             also=lambda conn: outbox.add(conn, study_id, 1, _items()))
    items = outbox.items(study_id, 1)
    assert [i.state for i in items] == [ItemState.PENDING] * 2
    assert all(is_due(i) for i in items)


def test_transient_failures_back_off_then_dead_letter(ledger: Ledger) -> None:
    outbox = Outbox(ledger.engine)
    study_id = _inferred_study(ledger)
    ledger.transition(study_id, JobState.BUILT, reason="x",
                      also=lambda conn: outbox.add(conn, study_id, 1, _items(1)))
    for attempt in range(1, POLICY.max_attempts):
        (item,) = outbox.items(study_id)
        assert outbox.record(item, "transient", "pacs: refused", POLICY) == ItemState.PENDING
        (item,) = outbox.items(study_id)
        wait = (item.next_attempt_at - utcnow()).total_seconds()
        assert POLICY.delay_s(attempt) - 2 < wait <= POLICY.delay_s(attempt)
        assert not is_due(item)
        assert is_due(item, utcnow() + timedelta(seconds=61))
    (item,) = outbox.items(study_id)
    assert outbox.record(item, "transient", "pacs: refused", POLICY) == ItemState.FAILED
    (item,) = outbox.items(study_id)
    assert item.attempts == POLICY.max_attempts
    assert item.last_error == f"pacs: refused (gave up after {POLICY.max_attempts} attempts)"
    assert outbox.requeue_failed([study_id]) == 1
    (item,) = outbox.items(study_id)
    assert (item.state, item.attempts) == (ItemState.PENDING, 0)


def test_a_permanent_failure_is_dead_lettered_at_once(ledger: Ledger) -> None:
    outbox = Outbox(ledger.engine)
    study_id = _inferred_study(ledger)
    ledger.transition(study_id, JobState.BUILT, reason="x",
                      also=lambda conn: outbox.add(conn, study_id, 1, _items(1)))
    (item,) = outbox.items()
    assert outbox.record(item, "permanent", "0xA900", POLICY) == ItemState.FAILED
    assert outbox.counts() == {study_id: {"FAILED": 1}}


def test_rebuilding_keeps_what_was_delivered_and_supersedes_older_generations(
    ledger: Ledger,
) -> None:
    outbox = Outbox(ledger.engine)
    study_id = _inferred_study(ledger)
    ledger.transition(study_id, JobState.BUILT, reason="x",
                      also=lambda conn: outbox.add(conn, study_id, 1, _items(2)))
    first, second = outbox.items(study_id)
    outbox.record(first, "delivered", "ok", POLICY)
    outbox.record(second, "permanent", "bad", POLICY)
    # the same generation built again (an operator's re-run): same object UIDs
    with ledger.engine.begin() as conn:
        outbox.add(conn, study_id, 1, _items(2))
    states = [i.state for i in outbox.items(study_id)]
    assert states == [ItemState.DELIVERED, ItemState.PENDING]
    # a newer generation: what the older one had not sent yet is superseded
    new = [NewItem("m", "dicom", "pacs", "2.25.new", "obj", "y/new.dcm")]
    with ledger.engine.begin() as conn:
        outbox.add(conn, study_id, 2, new)
    by_uid = {i.object_uid: i.state for i in outbox.items(study_id)}
    assert by_uid == {"2.25.0": ItemState.DELIVERED, "2.25.1": ItemState.SUPERSEDED,
                      "2.25.new": ItemState.PENDING}
    assert [i.object_uid for i in outbox.items(study_id, 2)] == ["2.25.new"]
