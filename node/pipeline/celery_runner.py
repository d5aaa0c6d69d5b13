"""The Celery runner: the flow's stages as Celery tasks, for workers on other processes or hosts.

The same stage functions as the embedded runner (``node.pipeline.embedded``), through the same
entry, :meth:`~node.pipeline.flow.Flow.advance` over one job; only who calls it differs. One
task, ``dicom_node.stage(stage, job_id)``, published to the queue of its stage:
``<prefix>.deidentify``, ``<prefix>.infer.<models>``, ``<prefix>.build`` and
``<prefix>.deliver`` (deliver and report), so a GPU machine can consume only inference. Its
arguments are a stage name and a job id: never patient data, JSON only (no pickle).

Delivery is at least once and the work is idempotent: ``acks_late`` (a message is acknowledged
when its task is over), ``reject_on_worker_lost`` and a prefetch of one, so a worker killed
mid-task has its message redelivered; each stage does nothing unless the job waits for it, and
its ledger transition expects the old state, so a duplicate moves the job at most once.

A publish can be lost (the node stopped between its commit and the publish, or the broker was
down): :meth:`CeleryRunner.requeue` (a timer on the receiving node) publishes again every job
that has waited in a stage's input state longer than ``workers.requeue_after_s``, and every job
whose failed delivery is due for its retry; a study completed by ``force-complete``, or whose
publish failed, at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from node.core.errors import NodeError
from node.core.jobstate import JobState
from node.core.ledger import Ledger, utcnow
from node.core.outbox import ItemState, Outbox
from node.core.settings import Settings
from node.core.spool import Spool
from node.core.timers import Timer, Timers, completion_doorbell
from node.pipeline.embedded import incoming_cleanup
from node.pipeline.flow import DELIVERY, WAITS_FOR, Flow, Stage

log = logging.getLogger("node.workers")

TASK = "dicom_node.stage"
#: the stages a worker runs (completion stays with the receiving node: it needs no files but
#: the ledger's); ``deliver`` includes reporting to the EMR and the alerts
WORKER_STAGES = (Stage.DEIDENTIFY, Stage.INFER, Stage.BUILD, Stage.DELIVER)
#: what one task of each queue's stage runs
_RUNS: dict[Stage, frozenset[Stage]] = {
    Stage.DEIDENTIFY: frozenset({Stage.DEIDENTIFY}), Stage.INFER: frozenset({Stage.INFER}),
    Stage.BUILD: frozenset({Stage.BUILD}), Stage.DELIVER: DELIVERY}
#: the states a job waits in for a worker
QUEUED_STATES = tuple(s for s, stage in WAITS_FOR.items() if stage is not Stage.COMPLETE)


def queue_stage(stage: Stage) -> Stage:
    """The worker stage (and queue) that runs ``stage``: report rides on deliver."""
    return Stage.DELIVER if stage is Stage.REPORT else stage


def queue_name(settings: Settings, stage: Stage, models: Iterable[str] = ()) -> str:
    """``<prefix>.<stage>``; inference: ``<prefix>.infer.<model>`` (models joined by +, as
    one inference stage runs every enabled model on a job)."""
    stage = queue_stage(stage)
    prefix = settings.workers.queue_prefix
    if stage is Stage.INFER:
        return f"{prefix}.infer.{'+'.join(sorted(models or settings.models.enabled))}"
    return f"{prefix}.{stage.value}"


def make_app(settings: Settings) -> Celery:
    """A Celery app on the configured broker: JSON only, late acknowledgement, prefetch one."""
    app = Celery("dicom-node", broker=settings.workers.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_ignore_result=True, task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1, task_create_missing_queues=True,
        broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
        # a publish to a broker that is down fails within about 2 s; the sweep retries it
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 1.0},
        broker_transport_options={"visibility_timeout": 3600},  # Redis: redelivery after 1 h
    )
    return app


class CeleryRunner:
    """Publishes ``(stage, job id)`` to the stage's queue when the flow says a job is ready."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        #: job id -> when this process last published it (the re-enqueue sweep's memory)
        self._sent: dict[int, datetime] = {}
        self._started = utcnow()
        self._lock = threading.Lock()

    def ready(self, stage: Stage, job_id: int) -> None:
        if stage is Stage.COMPLETE:
            return  # the receiving node's own sweep
        if stage is Stage.INFER and not self.settings.models.enabled:
            return  # no model: the job rests DEIDENTIFIED, as in the embedded runner
        self.publish(stage, job_id)

    def publish(self, stage: Stage, job_id: int) -> bool:
        """Send the task; False (and a log line) when the broker cannot be reached."""
        queue = queue_name(self.settings, stage)
        try:
            self.app.send_task(TASK, args=[queue_stage(stage).value, job_id], queue=queue)
        except (BrokerError, OSError) as exc:
            log.warning("job #%d: could not enqueue %s (%s); the re-enqueue sweep retries it",
                        job_id, queue_stage(stage).value, exc)
            return False
        with self._lock:
            self._sent[job_id] = utcnow()
        return True

    def requeue(self, ledger: Ledger, outbox: Outbox, now: datetime | None = None) -> int:
        """Publish again what waits too long, and failed deliveries due for their retry."""
        now = now or utcnow()
        grace = timedelta(seconds=self.settings.workers.requeue_after_s)
        states = [s for s in QUEUED_STATES
                  if WAITS_FOR[s] is not Stage.INFER or self.settings.models.enabled]
        waiting = ledger.waiting_since(*states)
        live = {w[0] for w in waiting}
        with self._lock:
            self._sent = {j: t for j, t in self._sent.items() if j in live}
            sent = dict(self._sent)
        published = 0
        for job_id, state, since in waiting:
            last = sent.get(job_id)
            stale = since + grace <= now and (last is None or last + grace <= now)
            # completed since this process started, not by its own sweep (force-complete), or
            # its publish failed: at once (no worker takes a job to COMPLETE, so none runs it)
            stale |= (state is JobState.COMPLETE and since >= self._started
                      and (last is None or last < since))
            retry_at = (_retry_due(outbox, job_id, now) if WAITS_FOR[state] in DELIVERY
                        else None)
            if (stale or (retry_at is not None and (last is None or last < retry_at))) \
                    and self.publish(WAITS_FOR[state], job_id):
                published += 1
        if published:
            log.info("enqueued %d waiting job(s) again", published)
        return published


def _retry_due(outbox: Outbox, job_id: int, now: datetime) -> datetime | None:
    """When the job's earliest failed delivery became due again (None: none is due)."""
    due = [i.next_attempt_at for i in outbox.items(job_id, state=ItemState.PENDING)
           if i.attempts > 0 and i.next_attempt_at <= now]
    return min(due) if due else None


def register(app: Celery, flow: Flow) -> None:
    """The stage task, bound to this worker's flow (its ledger, spool, keys and models)."""

    def stage_task(stage: str, job_id: int) -> str:
        step = Stage(stage)
        stages: Collection[Stage] = _RUNS[step]
        log.info("job #%d: %s task started", job_id, step.value)
        try:
            state: JobState = flow.advance(flow.ledger.study_by_id(job_id), stages)
        except NodeError as exc:
            log.error("job #%d: %s task not run: %s", job_id, step.value, exc)
            return "error"
        return state.value

    task: Any = app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)
    task(stage_task)


class ReceiverRunner:
    """What ``serve`` runs when workers do the stages: the completion sweep (which enqueues each
    completed study), the re-enqueue sweep and the cleanup of incoming/, on timers."""

    def __init__(self, flow: Flow, spool: Spool, settings: Settings) -> None:
        self.app = make_app(settings)
        self.runner = CeleryRunner(self.app, settings)
        flow.runner = self.runner
        outbox = Outbox(flow.ledger.engine)
        self.completion = Timer("completion sweep", flow.complete_due,
                                settings.completion.sweep_interval_s)
        self.bell = completion_doorbell(settings.var_path)  # as the embedded runner's
        self.timers = Timers([
            self.completion,
            Timer("re-enqueue sweep", lambda: self.runner.requeue(flow.ledger, outbox),
                  settings.workers.requeue_interval_s),
            # what no job state waits for (report e-mails, report versions of DONE jobs): no
            # task carries them, so the receiving node sends them itself
            Timer("late deliveries", flow.deliver_late, settings.delivery.poll_interval_s),
            incoming_cleanup(spool, settings),
        ])

    def start(self) -> None:
        self.timers.start()
        self.bell.listen(self.completion.wake)

    def shutdown(self, wait: bool = True) -> None:
        self.bell.close()
        self.timers.shutdown(wait=wait)
        self.app.close()
