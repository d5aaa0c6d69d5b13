"""The completion rule (pure) and the sweep over a real ledger."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from node.core.errors import IllegalTransition
from node.core.jobstate import TRANSITIONS, JobState, check_transition
from node.core.series_rules import matching_rules
from node.core.settings import CompletionSettings, RequiredSeries
from node.pipeline.complete.rule import StudyProgress, decide

T0 = datetime(2026, 1, 1, 12, 0, 0)


def progress(*, last_s: float, opened_s: float = 0.0, counts: dict[str, int] | None = None) -> StudyProgress:
    return StudyProgress(opened_at=T0 + timedelta(seconds=opened_s),
                         last_received_at=T0 + timedelta(seconds=last_s), instances=10,
                         rule_counts=counts or {})


def test_waits_for_the_quiet_period_then_completes() -> None:
    s = CompletionSettings(quiet_period_s=60, max_wait_s=600)
    p = progress(last_s=30)
    assert decide(p, s, T0 + timedelta(seconds=89)).action == "wait"
    d = decide(p, s, T0 + timedelta(seconds=90))
    assert (d.action, d.reason) == ("complete", "quiet-period")


RULES = (RequiredSeries(name="axial", modality="CT", series_description="(?i)axial", min_instances=3),
         RequiredSeries(name="scout", modality="CT", series_description="(?i)scout"))


def test_required_series_hold_completion_until_present() -> None:
    s = CompletionSettings(quiet_period_s=10, max_wait_s=600, required_series=RULES)
    now = T0 + timedelta(seconds=100)
    assert decide(progress(last_s=0, counts={"axial": 3}), s, now).action == "wait"
    assert decide(progress(last_s=0, counts={"axial": 2, "scout": 1}), s, now).action == "wait"
    d = decide(progress(last_s=0, counts={"axial": 3, "scout": 1}), s, now)
    assert (d.action, d.reason) == ("complete", "rules-met")
    # rules met but instances still arriving: wait for quiet
    assert decide(progress(last_s=95, counts={"axial": 3, "scout": 1}), s, now).action == "wait"


@pytest.mark.parametrize(("action", "expected"), [("proceed", "complete"), ("hold", "hold"),
                                                  ("discard", "discard")])
def test_max_wait_applies_the_configured_action(action: str, expected: str) -> None:
    s = CompletionSettings(quiet_period_s=10, max_wait_s=300, max_wait_action=action,  # type: ignore[arg-type]
                           required_series=RULES)
    p = progress(last_s=50, counts={"axial": 1})
    assert decide(p, s, T0 + timedelta(seconds=299)).action == "wait"
    d = decide(p, s, T0 + timedelta(seconds=300))
    assert (d.action, d.reason) == (expected, "max-wait")


def test_max_wait_also_ends_a_study_that_never_goes_quiet() -> None:
    s = CompletionSettings(quiet_period_s=60, max_wait_s=120)
    assert decide(progress(last_s=119), s, T0 + timedelta(seconds=120)).action == "complete"


def test_matching_rules_by_modality_and_description() -> None:
    assert matching_rules(RULES, "CT", "Thorax AXIAL 1mm") == ("axial",)
    assert matching_rules(RULES, "ct", "SCOUT") == ("scout",)
    assert matching_rules(RULES, "MR", "axial") == ()
    assert matching_rules((RequiredSeries(name="any-mr", modality="MR"),), "MR", "") == ("any-mr",)


def test_transition_table_refuses_illegal_moves() -> None:
    check_transition(JobState.RECEIVING, JobState.COMPLETE)
    with pytest.raises(IllegalTransition):
        check_transition(JobState.RECEIVING, JobState.DONE)
    with pytest.raises(IllegalTransition):
        check_transition(JobState.DONE, JobState.COMPLETE)
    # every state is in the table, and every target is a state
    assert set(TRANSITIONS) == set(JobState)
    # a late instance can re-open a study from every state after completion
    for state in JobState:
        if state is not JobState.RECEIVING:
            check_transition(state, JobState.RECEIVING)
