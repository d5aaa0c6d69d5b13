"""Timers: the completion sweep, the pipeline and delivery, in the node's main process.

Completion deadlines are not kept in memory: each sweep recomputes them from the ledger's
timestamps, so a restarted node resumes every pending quiet period and maximum wait.

Each timer (:class:`Timer`) runs its work, then waits its interval or until it is woken (a
study just completed wakes the pipeline, results just built wake delivery), on APScheduler. A
run can never overlap the next one, and a wake-up during a run makes the work run again right
after it: nothing is skipped and nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
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


class Timer:
    """Run ``work`` now (or after one interval), then again ``interval_s`` after each run ends,
    or as soon as ``wake`` is called. A node error is logged and the next run retries; so is any
    other error (with its traceback: that is a bug), and the timer lives on.

    The timer is one APScheduler job with a one-shot date trigger that the run itself schedules
    again when it ends: there is never a second instance to start while one runs (so never
    APScheduler's "maximum number of running instances" warning, which an interval trigger gave
    for every tick during a long inference: 32 lines in one demo), and a wake-up during a run
    makes the work run again right after it instead of being skipped.
    """

    def __init__(self, name: str, work: Callable[[], object], interval_s: float, *,
                 at_once: bool = True) -> None:
        self.name, self._work, self.interval_s = name, work, interval_s
        self._at_once = at_once
        self._lock = threading.Lock()
        self._running = self._again = self._stopped = False
        self._scheduler: BackgroundScheduler | None = None

    def attach(self, scheduler: BackgroundScheduler) -> None:
        self._scheduler = scheduler
        with self._lock:
            self._schedule(0.0 if self._at_once else self.interval_s)

    def wake(self) -> None:
        """Run as soon as possible: now if idle, right after the current run otherwise."""
        with self._lock:
            if self._running or self._scheduler is None or self._stopped:
                self._again = True
                return
            # JobLookupError: APScheduler has just taken the job to run it; that run is the wake-up
            with contextlib.suppress(JobLookupError):
                self._scheduler.modify_job(self.name, next_run_time=_now())

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def _schedule(self, delay_s: float) -> None:
        """Called with the lock held."""
        assert self._scheduler is not None
        self._scheduler.add_job(
            self._run, "date", run_date=_now() + timedelta(seconds=delay_s), id=self.name,
            name=self.name, replace_existing=True, misfire_grace_time=None)

    def _run(self) -> None:
        with self._lock:
            self._running, self._again = True, False
        try:
            self._work()
        except NodeError as exc:
            log.error("%s failed, will retry: %s", self.name, exc)
        except Exception:
            log.exception("%s failed unexpectedly, will retry", self.name)
        finally:
            with self._lock:
                self._running = False
                if not self._stopped:
                    self._schedule(0.0 if self._again else self.interval_s)


def _now() -> datetime:
    return datetime.now(UTC)


class Timers:
    """The node's timers on one APScheduler, started together and stopped together."""

    def __init__(self, timers: list[Timer]) -> None:
        self.by_name = {t.name: t for t in timers}
        # one worker per timer: a long inference never delays the completion sweep or delivery
        self._scheduler = BackgroundScheduler(
            timezone="UTC", executors={"default": ThreadPoolExecutor(max(1, len(timers)))})

    def start(self) -> None:
        self._scheduler.start()
        for timer in self.by_name.values():
            timer.attach(self._scheduler)

    def shutdown(self, wait: bool = True) -> None:
        for timer in self.by_name.values():
            timer.stop()
        self._scheduler.shutdown(wait=wait)


def start_scheduler(
    ledger: Ledger, spool: Spool, settings: Settings, orchestrator: Orchestrator,
    deliverer: Deliverer,
) -> Timers:
    completion = settings.completion
    stale_after_s = 2 * (settings.scp.network_timeout_s + settings.scp.dimse_timeout_s)

    def _incoming() -> None:
        removed = spool.remove_stale_incoming(stale_after_s)
        if removed:
            log.warning("removed %d abandoned partial receptions from incoming/", removed)

    seen: set[tuple[int, int]] = set()
    pipeline = Timer("pipeline run", orchestrator.run_once, completion.sweep_interval_s)

    def _complete() -> None:
        # a study that just completed goes straight to the pipeline, not a sweep interval later
        if sweep(ledger, completion, seen=seen):
            pipeline.wake()

    # Delivery has its own timer (and thread): a slow or unreachable destination must not hold
    # up de-identification and inference of other studies. Due times live in the outbox rows,
    # so a restarted node resumes every back-off where it was.
    delivery = Timer("delivery sweep", deliverer.run_once, settings.delivery.poll_interval_s)
    timers = Timers([
        delivery, pipeline,
        Timer("completion sweep", _complete, completion.sweep_interval_s),
        Timer("incoming cleanup", _incoming, max(10.0, stale_after_s / 4), at_once=False),
    ])
    orchestrator.on_built = delivery.wake
    timers.start()
    return timers
