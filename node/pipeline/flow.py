"""The one flow of a study: complete -> de-identify -> infer -> build -> deliver -> report.

:meth:`Flow.advance` reads as the flow: it takes one job as far as it goes now, one stage after
the other. Each stage is a function of one job in its own package (``complete/``, ``deid/``,
``infer/``, ``build/``, ``deliver/``) that does its work and returns a
:class:`~node.pipeline.context.Step` (where the job goes, and why); this module does the
transitions, the audit events (through the ledger), the log line of each move, and the error
policy: a node error in de-identification, inference or building makes the job FAILED with the
reason, one in delivery is retried at the next wake.

Two runners, one code path. :meth:`Flow.run_stage` is the entry for one stage of one job (job
id in, state out): it does nothing unless the job waits for that stage, and every transition
expects the job's old state, so a stage run twice (a redelivered task) moves the job once. The
embedded runner (``node.pipeline.embedded``: timers in the node's process) calls
:meth:`Flow.run_waiting` for the jobs waiting in each loop's states; a queue runner (Celery,
issue 12 item 3) gives each stage its task calling :meth:`Flow.run_stage`, and is told through
:class:`Runner` which stage a job waits for next, to enqueue it there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from node.core import metrics
from node.core.errors import IllegalTransition, LedgerUnavailable, NodeError
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow, utcnow
from node.core.settings import CompletionSettings, Settings
from node.pipeline.build.stage import build_job
from node.pipeline.complete.stage import complete_job
from node.pipeline.context import StageContext, Step
from node.pipeline.deid.stage import deidentify_job
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.infer.stage import infer_job

log = logging.getLogger("node.pipeline")


class Stage(StrEnum):
    COMPLETE = "complete"
    DEIDENTIFY = "deidentify"
    INFER = "infer"
    BUILD = "build"
    DELIVER = "deliver"
    REPORT = "report"


#: the state a job waits in, and the stage that takes it on from there
WAITS_FOR: dict[JobState, Stage] = {
    JobState.RECEIVING: Stage.COMPLETE,
    JobState.COMPLETE: Stage.DEIDENTIFY,
    JobState.DEIDENTIFIED: Stage.INFER,
    JobState.INFERRED: Stage.BUILD,
    JobState.BUILT: Stage.DELIVER,  # the objects to the PACS (alerts go out at once)
    JobState.DELIVERED: Stage.REPORT,  # the results to the EMR
    JobState.REPORTED: Stage.REPORT,  # the alerts still out
}
#: the embedded runner's loops: processing, and delivery (a slow or unreachable destination
#: must not hold up de-identification and inference of other studies)
PROCESSING = frozenset({Stage.DEIDENTIFY, Stage.INFER, Stage.BUILD})
DELIVERY = frozenset({Stage.DELIVER, Stage.REPORT})
EVERY_STAGE = frozenset(Stage)


class Runner(Protocol):
    """Where the flow says that a job now waits for a stage its caller does not run: the
    embedded runner wakes that stage's timer; a queue runner enqueues ``(stage, job_id)``."""

    def ready(self, stage: Stage, job_id: int) -> None: ...


@dataclass(frozen=True)
class _Policy:
    what: str  # in the reason of a FAILED job
    log: logging.Logger
    noun: str  # "study" or "job" in the log lines
    fails_job: bool  # a node error makes the job FAILED (else: retried at the next wake)


_DELIVERY_LOG = logging.getLogger("node.delivery")
_POLICY = {
    Stage.COMPLETE: _Policy("completion", logging.getLogger("node.completion"), "study", False),
    Stage.DEIDENTIFY: _Policy("de-identification", log, "study", True),
    Stage.INFER: _Policy("inference", log, "study", True),
    Stage.BUILD: _Policy("building the results", log, "study", True),
    Stage.DELIVER: _Policy("delivery", _DELIVERY_LOG, "job", False),
    Stage.REPORT: _Policy("reporting", _DELIVERY_LOG, "job", False),
}


@dataclass
class Flow:
    """The flow over one ledger. Without ``ctx`` (the processing stages' parts) only
    completion and delivery run: what a delivery-only process or test needs."""

    ledger: Ledger
    settings: Settings
    deliverer: Deliverer
    ctx: StageContext | None = None
    runner: Runner | None = None
    #: (job, generation) of the studies being received that the log has named already
    _seen: set[tuple[int, int]] = field(default_factory=set, init=False, repr=False)

    # ------------------------------------------------------------------ the flow

    def advance(self, job: StudyRow, stages: Collection[Stage] = EVERY_STAGE) -> JobState:
        """Take one job as far as it goes now, through the ``stages`` its caller runs."""
        start = job.state
        job = self._stage(Stage.COMPLETE, job, stages)
        job = self._stage(Stage.DEIDENTIFY, job, stages)
        job = self._stage(Stage.INFER, job, stages)
        job = self._stage(Stage.BUILD, job, stages)
        job = self._stage(Stage.DELIVER, job, stages)
        job = self._stage(Stage.REPORT, job, stages)
        following = WAITS_FOR.get(job.state)
        if (job.state != start and following is not None and following not in stages
                and self.runner is not None):
            self.runner.ready(following, job.id)
        return job.state

    def run_stage(self, stage: Stage, job_id: int) -> JobState:
        """One stage of one job: job id in, its state after out. A no-op (the job's current
        state out) unless the job waits for ``stage``: safe to run twice."""
        return self.advance(self.ledger.study_by_id(job_id), {stage})

    def run_waiting(self, stages: Collection[Stage]) -> int:
        """Every job waiting for one of ``stages``, oldest first, each as far as those stages
        take it (a study's results do not wait for the next study's de-identification);
        return how many jobs moved. Reads only the jobs in those states (the ledger's index
        on state), never the history."""
        moved = 0
        waiting = [s for s, st in WAITS_FOR.items() if self._runs(st, stages)]
        for job in self.ledger.studies(*waiting):
            moved += self.advance(job, stages) != job.state
        return moved

    def deliver_late(self) -> int:
        """Deliveries no job state waits for (report e-mails, report versions of DONE jobs),
        each on its own: the delivery loop runs this after the jobs' own deliveries."""
        try:
            return self.deliverer.deliver_late()
        except LedgerUnavailable as exc:
            _DELIVERY_LOG.error("late deliveries: ledger unavailable, will retry: %s", exc)
            return 0

    def complete_due(self, now: datetime | None = None) -> int:
        """The completion sweep: every RECEIVING study whose rule is met moves on."""
        return sweep(self.ledger, self.settings.completion, now, self._seen,
                     self.runner)

    # ------------------------------------------------------------------ one stage

    def _stage(self, stage: Stage, job: StudyRow, stages: Collection[Stage]) -> StudyRow:
        """Run ``stage`` while the job waits for it (REPORT may take two moves)."""
        while self._runs(stage, stages) and WAITS_FOR.get(job.state) is stage:
            started = time.perf_counter()
            step = self._work(stage, job)
            if step is None or not commit(self.ledger, job, step, stage):
                break
            metrics.stage_done(stage.value, time.perf_counter() - started)
            job = self.ledger.study_by_id(job.id)
        return job

    def _runs(self, stage: Stage, stages: Collection[Stage]) -> bool:
        """Processing needs its parts (``ctx``); without an enabled model a study's processing
        ends DEIDENTIFIED."""
        if stage not in stages:
            return False
        if stage in PROCESSING:
            return self.ctx is not None and (stage is not Stage.INFER or bool(self.ctx.models))
        return True

    def _work(self, stage: Stage, job: StudyRow) -> Step | None:
        policy = _POLICY[stage]
        try:
            return self._stage_function(stage)(job)
        except LedgerUnavailable as exc:
            policy.log.error("%s #%d: ledger unavailable, will retry: %s", policy.noun, job.id,
                             exc)
        except NodeError as exc:
            if not policy.fails_job:
                policy.log.error("%s #%d: %s step failed, will retry: %s", policy.noun, job.id,
                                 policy.what, exc)
                return None
            return Step(JobState.FAILED, f"{policy.what} failed: {exc}")
        return None

    def _stage_function(self, stage: Stage) -> Callable[[StudyRow], Step | None]:
        ctx = self.ctx
        if stage is Stage.COMPLETE:
            return lambda job: complete_job(self.ledger, self.settings.completion, job, utcnow())
        if stage in DELIVERY:
            return self.deliverer.deliver_job
        assert ctx is not None  # _runs: no processing stage without its parts
        processing: dict[Stage, Callable[[StageContext, StudyRow], Step]] = {
            Stage.DEIDENTIFY: deidentify_job, Stage.INFER: infer_job, Stage.BUILD: build_job}
        return lambda job: processing[stage](ctx, job)


def commit(ledger: Ledger, job: StudyRow, step: Step, stage: Stage) -> bool:
    """Move the job as ``step`` says, if it is still where the stage found it; log the move
    and run the step's hooks. False when the job had moved meanwhile (the work is dropped)."""
    try:
        moved = ledger.transition(job.id, step.target, reason=step.reason, expect=job.state,
                                  also=step.also)
    except IllegalTransition:
        moved = False
    if not moved:
        if step.superseded is not None:
            step.superseded()
        return False
    if step.committed is not None:
        step.committed()
    policy = _POLICY[stage]
    level = logging.ERROR if step.target == JobState.FAILED else logging.INFO
    reason = f"{step.reason}, {step.detail}" if step.detail else step.reason
    if step.target == JobState.FAILED and policy.fails_job:
        policy.log.error("study #%d failed: %s", job.id, step.reason)
    else:
        policy.log.log(level, "%s #%d: %s -> %s (%s)", policy.noun, job.id, job.state,
                       step.target, reason)
    return True


def sweep(ledger: Ledger, settings: CompletionSettings, now: datetime | None = None,
          seen: set[tuple[int, int]] | None = None, runner: Runner | None = None) -> int:
    """Apply the completion rule to every RECEIVING study; return how many changed state.

    With ``seen`` (kept by the caller between sweeps), a study being received is logged once
    per generation when a sweep first sees it: one line per study, not one per instance.
    """
    now = now or utcnow()
    changed = 0
    receiving = ledger.studies(JobState.RECEIVING)
    if seen is not None:
        _log_receiving(receiving, seen)
    for job in receiving:
        started = time.perf_counter()
        step = complete_job(ledger, settings, job, now)
        if step is not None and commit(ledger, job, step, Stage.COMPLETE):
            changed += 1
            metrics.stage_done(Stage.COMPLETE.value, time.perf_counter() - started)
            following = WAITS_FOR.get(step.target)
            if runner is not None and following is not None:
                runner.ready(following, job.id)
    return changed


def _log_receiving(receiving: list[StudyRow], seen: set[tuple[int, int]]) -> None:
    current = {(s.id, s.generation) for s in receiving}
    for study in receiving:
        if (study.id, study.generation) not in seen:
            _POLICY[Stage.COMPLETE].log.info(
                "study #%d: receiving%s from %s", study.id,
                f" again (generation {study.generation})" if study.generation > 1 else "",
                study.calling_ae_title or "an unnamed caller")
    seen.intersection_update(current)
    seen.update(current)
