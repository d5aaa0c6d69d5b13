"""Completion on release by a whole-study sender: the pure rule, the ledger's mark, the doorbell."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from node.core.errors import ConfigError
from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance, StoreOutcome, utcnow
from node.core.settings import CompletionSettings, RequiredSeries
from node.core.settings_load import load_settings
from node.core.timers import Doorbell
from node.pipeline.complete.rule import StudyProgress, decide
from node.pipeline.flow import sweep

T0 = datetime(2026, 1, 1, 12, 0, 0)
QUIET = CompletionSettings(quiet_period_s=60, max_wait_s=600)


def progress(*, last_s: float, released_s: float | None,
             counts: dict[str, int] | None = None) -> StudyProgress:
    return StudyProgress(
        opened_at=T0, last_received_at=T0 + timedelta(seconds=last_s), instances=3,
        rule_counts=counts or {},
        released_at=None if released_s is None else T0 + timedelta(seconds=released_s))


def test_a_release_after_the_last_instance_completes_at_once() -> None:
    d = decide(progress(last_s=10, released_s=10.2), QUIET, T0 + timedelta(seconds=10.3))
    assert (d.action, d.reason) == ("complete", "released")


def test_an_instance_after_the_release_brings_the_quiet_period_back() -> None:
    p = progress(last_s=11, released_s=10)
    assert decide(p, QUIET, T0 + timedelta(seconds=12)).action == "wait"
    assert decide(p, QUIET, T0 + timedelta(seconds=71)).reason == "quiet-period"


def test_without_a_release_the_quiet_period_decides() -> None:
    assert decide(progress(last_s=10, released_s=None), QUIET,
                  T0 + timedelta(seconds=12)).action == "wait"


def test_a_release_does_not_override_a_missing_required_series() -> None:
    rules = CompletionSettings(quiet_period_s=60, max_wait_s=600, required_series=(
        RequiredSeries(name="pet", modality="PT"),))
    p = progress(last_s=10, released_s=10.5)
    assert decide(p, rules, T0 + timedelta(seconds=11)).action == "wait"
    d = decide(progress(last_s=10, released_s=10.5, counts={"pet": 1}), rules,
               T0 + timedelta(seconds=11))
    assert (d.action, d.reason) == ("complete", "released")


def _instance(uid: str) -> ReceivedInstance:
    return ReceivedInstance(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.4.1",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT",
                            matched_rules=(), size_bytes=1, calling_ae_title="ORTHANC")


def test_the_ledger_marks_receiving_studies_only_and_a_late_arrival_waits_again(
        ledger: Ledger) -> None:
    ledger.record_instance(_instance("1.2.3.4.1.1"), "p1", lambda: None)
    assert ledger.mark_released(["1.2.3.4", "9.9.9"]) == 1  # an unknown study is no error
    assert sweep(ledger, QUIET, utcnow()) == 1
    (study,) = ledger.studies()
    assert (study.state, study.completion_reason) == (JobState.COMPLETE, "released")
    assert ledger.mark_released(["1.2.3.4"]) == 0  # completed: nothing to mark
    # a late instance re-opens it; the earlier release does not complete the new generation
    assert ledger.record_instance(_instance("1.2.3.4.1.2"), "p2", lambda: None) \
        is StoreOutcome.REOPENED
    assert sweep(ledger, QUIET, utcnow()) == 0
    assert ledger.studies()[0].state == JobState.RECEIVING
    assert ledger.mark_released(["1.2.3.4"]) == 1  # its own release does
    assert sweep(ledger, QUIET, utcnow()) == 1
    study = ledger.studies()[0]
    assert (study.state, study.generation, study.completion_reason) == (
        JobState.COMPLETE, 2, "released")


def test_a_ring_wakes_the_listener_and_another_node_never_hears_it(tmp_path: Path) -> None:
    heard, other = threading.Event(), threading.Event()
    bell, neighbour = Doorbell(tmp_path / "a", "sweep"), Doorbell(tmp_path / "b", "sweep")
    bell.listen(heard.set)
    neighbour.listen(other.set)
    try:
        Doorbell(tmp_path / "a", "sweep").ring()  # as another process of the same node would
        assert heard.wait(5)
        assert not other.wait(0.1)
    finally:
        bell.close()
        neighbour.close()
    Doorbell(tmp_path / "a", "sweep").ring()  # nobody listening: no error


def test_check_config_names_a_bad_ae_title(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[completion]\nwhole_study_senders = ["ORTHANC", "BACK\\\\SLASH", " "]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "completion.whole_study_senders[1]", "completion.whole_study_senders[2]"]
