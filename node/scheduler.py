"""Timers: the completion sweep, run by APScheduler in the node's main process.

Completion deadlines are not kept in memory: each sweep recomputes them from the ledger's
timestamps, so a restarted node resumes every pending quiet period and maximum wait.
"""

from __future__ import annotations

import logging
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from node.config import CompletionSettings
from node.errors import NodeError
from node.jobstate import JobState
from node.ledger import Ledger, utcnow
from node.pipeline.completion import StudyProgress, decide

log = logging.getLogger("node.completion")

_TARGET = {"complete": JobState.COMPLETE, "hold": JobState.HELD, "discard": JobState.DISCARDED}


def sweep(ledger: Ledger, settings: CompletionSettings, now: datetime | None = None) -> int:
    """Apply the completion rule to every RECEIVING study; return how many changed state."""
    now = now or utcnow()
    changed = 0
    for study in ledger.studies(JobState.RECEIVING):
        counts = ledger.rule_counts(study.id) if settings.required_series else {}
        progress = StudyProgress(
            opened_at=study.opened_at,
            last_received_at=study.last_received_at,
            instances=study.instances,
            rule_counts=counts,
        )
        decision = decide(progress, settings, now)
        if decision.action == "wait":
            continue
        target = _TARGET[decision.action]
        if ledger.transition(study.id, target, reason=decision.reason, expect=JobState.RECEIVING):
            changed += 1
            log.info(
                "study #%d: %s -> %s (%s, %d instances)",
                study.id, JobState.RECEIVING, target, decision.reason, study.instances,
            )
    return changed


def start_scheduler(ledger: Ledger, settings: CompletionSettings) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")

    def _job() -> None:
        try:
            sweep(ledger, settings)
        except NodeError as exc:
            log.error("completion sweep failed, will retry: %s", exc)

    scheduler.add_job(
        _job, "interval", seconds=settings.sweep_interval_s, id="completion-sweep",
        max_instances=1, coalesce=True, next_run_time=datetime.now().astimezone(),
    )
    scheduler.start()
    return scheduler
