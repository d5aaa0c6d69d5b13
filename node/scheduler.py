"""Timers: the completion sweep, the pipeline and delivery, run by APScheduler in the node's
main process.

Completion deadlines are not kept in memory: each sweep recomputes them from the ledger's
timestamps, so a restarted node resumes every pending quiet period and maximum wait.

Each timer's work runs in one thread at a time (:class:`_Work`): an interval tick that comes
while a run is still going is dropped quietly (that run covers it), and a wake-up (a study just
completed, results just built) during a run makes the work run once more right after it. So a
long inference never fills the log with APScheduler's "maximum number of running instances"
warnings, and no wake-up is lost.
"""

from __future__ import annotations

import logging
import threading
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


def sweep(ledger: Ledger, settings: CompletionSettings, now: datetime | None = None,
          seen: set[tuple[int, int]] | None = None) -> int:
    """Apply the completion rule to every RECEIVING study; return how many changed state.

    With ``seen`` (kept by the caller between sweeps), a study being received is logged once
    per generation when a sweep first sees it: one line per study, not one per instance.
    """
    now = now or utcnow()
    changed = 0
    receiving = ledger.studies(JobState.RECEIVING)
    if seen is not None:
        current = {(s.id, s.generation) for s in receiving}
        for study in receiving:
            if (study.id, study.generation) not in seen:
                log.info("study #%d: receiving%s from %s", study.id,
                         f" again (generation {study.generation})" if study.generation > 1
                         else "", study.calling_ae_title or "an unnamed caller")
        seen.intersection_update(current)
        seen.update(current)
    for study in receiving:
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


class _Work:
    """A timer job's work, run by one thread at a time; a wake-up during a run is kept.

    APScheduler starts the job on its interval and on a wake-up (``next_run_time`` moved to
    now). Started while a run goes on, it returns at once (an interval tick: that run covers
    it); ``wake`` during a run sets a flag, and the running thread goes round once more. A node
    error is logged and the next run retries.
    """

    def __init__(self, what: str, work: Callable[[], object]) -> None:
        self.what, self._work = what, work
        self._lock = threading.Lock()
        self._running = self._again = False

    def __call__(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        try:
            while True:
                with self._lock:
                    self._again = False
                try:
                    self._work()
                except NodeError as exc:
                    log.error("%s failed, will retry: %s", self.what, exc)
                with self._lock:
                    if not self._again:
                        return
        finally:
            with self._lock:
                self._running = False

    def wake(self) -> bool:
        """Ask for a run as soon as possible; True when none is going on (start one now)."""
        with self._lock:
            self._again = True
            return not self._running


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

    now = datetime.now().astimezone()
    # max_instances 2: a start during a run is let through to _Work, which drops it quietly
    # (max_instances 1 makes APScheduler log a warning for each); never "missed", only late
    every = {"max_instances": 2, "coalesce": True, "misfire_grace_time": None}
    works: dict[str, _Work] = {}

    def _add(job_id: str, work: _Work, seconds: float, *, at_once: bool = True) -> None:
        works[job_id] = work
        first = {"next_run_time": now} if at_once else {}  # else one interval from now
        scheduler.add_job(work, "interval", seconds=seconds, id=job_id, **first, **every)

    def _wake(job_id: str) -> None:
        if works[job_id].wake():
            job = scheduler.get_job(job_id)
            if job is not None:
                job.modify(next_run_time=datetime.now().astimezone())

    seen: set[tuple[int, int]] = set()

    def _complete() -> None:
        # a study that just completed goes straight to the pipeline, not a sweep interval later
        if sweep(ledger, completion, seen=seen):
            _wake("pipeline")

    # Delivery has its own job (and thread): a slow or unreachable destination must not hold
    # up de-identification and inference of other studies. Due times live in the outbox rows,
    # so a restarted node resumes every back-off where it was.
    _add("delivery", _Work("delivery sweep", deliverer.run_once),
         settings.delivery.poll_interval_s)
    _add("pipeline", _Work("pipeline run", orchestrator.run_once), completion.sweep_interval_s)
    _add("completion-sweep", _Work("completion sweep", _complete), completion.sweep_interval_s)
    _add("incoming-cleanup", _Work("incoming cleanup", _incoming),
         max(10.0, stale_after_s / 4), at_once=False)
    scheduler.start()

    orchestrator.on_built = lambda: _wake("delivery")
    return scheduler
