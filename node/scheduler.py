"""Timers: the completion sweep, the pipeline and delivery, run by APScheduler in the node's
main process.

Completion deadlines are not kept in memory: each sweep recomputes them from the ledger's
timestamps, so a restarted node resumes every pending quiet period and maximum wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from node.config import CompletionSettings, Settings
from node.delivery import Deliverer
from node.errors import NodeError
from node.jobstate import JobState
from node.ledger import Ledger, utcnow
from node.orchestrator import Orchestrator
from node.pipeline.completion import StudyProgress, decide
from node.spool import Spool

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


def _guarded(what: str, work: Callable[[], object]) -> Callable[[], None]:
    """A timer job that logs a node error and lets the next run retry."""

    def run() -> None:
        try:
            work()
        except NodeError as exc:
            log.error("%s failed, will retry: %s", what, exc)

    return run


def start_scheduler(
    ledger: Ledger, spool: Spool, settings: Settings, orchestrator: Orchestrator,
    deliverer: Deliverer,
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    completion = settings.completion
    stale_after_s = 2 * (settings.scp.network_timeout_s + settings.scp.dimse_timeout_s)

    def _incoming() -> None:
        removed = spool.remove_stale_incoming(stale_after_s)
        if removed:
            log.warning("removed %d abandoned partial receptions from incoming/", removed)

    def _wake(job_id: str) -> None:
        job = scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now().astimezone())

    now = datetime.now().astimezone()
    every = {"max_instances": 1, "coalesce": True}
    # Delivery has its own job (and thread): a slow or unreachable destination must not hold
    # up de-identification and inference of other studies. Due times live in the outbox rows,
    # so a restarted node resumes every back-off where it was.
    scheduler.add_job(_guarded("delivery sweep", deliverer.run_once), "interval",
                      seconds=settings.delivery.poll_interval_s, id="delivery",
                      next_run_time=now, **every)
    scheduler.add_job(_guarded("pipeline run", orchestrator.run_once), "interval",
                      seconds=completion.sweep_interval_s, id="pipeline", next_run_time=now,
                      **every)
    def _complete() -> None:
        # a study that just completed goes straight to the pipeline, not a sweep interval later
        if sweep(ledger, completion):
            _wake("pipeline")

    scheduler.add_job(_guarded("completion sweep", _complete),
                      "interval", seconds=completion.sweep_interval_s, id="completion-sweep",
                      next_run_time=now, **every)
    scheduler.add_job(_incoming, "interval", seconds=max(10.0, stale_after_s / 4),
                      id="incoming-cleanup", **every)
    scheduler.start()

    orchestrator.on_built = lambda: _wake("delivery")
    return scheduler
