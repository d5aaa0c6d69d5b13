"""The completion stage: a RECEIVING study becomes COMPLETE (or HELD, or DISCARDED).

Deadlines are not kept in memory: each call recomputes them from the ledger's timestamps
(opened, last received) and the counts per required-series rule, so a restarted node resumes
every pending quiet period and maximum wait. The rule itself is pure (``rule.decide``).
"""

from __future__ import annotations

from datetime import datetime

from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow
from node.core.settings import CompletionSettings
from node.pipeline.complete.rule import StudyProgress, decide
from node.pipeline.context import Step

_TARGET = {"complete": JobState.COMPLETE, "hold": JobState.HELD, "discard": JobState.DISCARDED}


def complete_job(ledger: Ledger, settings: CompletionSettings, job: StudyRow,
                 now: datetime) -> Step | None:
    """RECEIVING -> COMPLETE / HELD / DISCARDED when the rule says so; None: wait."""
    counts = ledger.rule_counts(job.id) if settings.required_series else {}
    progress = StudyProgress(opened_at=job.opened_at, last_received_at=job.last_received_at,
                             instances=job.instances, rule_counts=counts,
                             released_at=job.released_at)
    decision = decide(progress, settings, now)
    if decision.action == "wait":
        return None
    return Step(_TARGET[decision.action], decision.reason, detail=f"{job.instances} instances")
