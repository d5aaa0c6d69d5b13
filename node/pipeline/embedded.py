"""The embedded runner: the flow's loops on timers in the node's own process (the default).

Four timers, one thread each (``node.core.timers``): the completion sweep, processing
(de-identify, infer, build), delivery (deliver, report) and the cleanup of abandoned
receptions. A whole-study sender's association released (in any receiving process) rings the
completion sweep's :class:`~node.core.timers.Doorbell`, a study that just completed wakes
processing, results just built wake delivery,
through the flow's :class:`~node.pipeline.flow.Runner` seam; a queue runner plugs in there
instead. Delivery has its own timer: a slow or unreachable destination must not hold up
de-identification and inference of other studies. Due times live in the outbox rows and
completion deadlines in the ledger's timestamps, so a restarted node resumes where it was.
"""

from __future__ import annotations

import logging

from node.core.settings import Settings
from node.core.spool import Spool
from node.core.timers import Timer, Timers, completion_doorbell
from node.pipeline.flow import DELIVERY, PROCESSING, Flow, Stage

log = logging.getLogger("node.completion")


def incoming_cleanup(spool: Spool, settings: Settings) -> Timer:
    """The timer that removes partial receptions abandoned in incoming/ (any runner's)."""
    stale_after_s = 2 * (settings.scp.network_timeout_s + settings.scp.dimse_timeout_s)

    def incoming() -> None:
        removed = spool.remove_stale_incoming(stale_after_s)
        if removed:
            log.warning("removed %d abandoned partial receptions from incoming/", removed)

    return Timer("incoming cleanup", incoming, max(10.0, stale_after_s / 4), at_once=False)


def _deliver(flow: Flow) -> int:
    """One delivery sweep: the jobs waiting for delivery, then what no job waits for."""
    return flow.run_waiting(DELIVERY) + flow.deliver_late()


class EmbeddedRunner:
    """Runs every stage in process: a job ready for a stage wakes that stage's timer."""

    def __init__(self, flow: Flow, spool: Spool, settings: Settings) -> None:
        completion = settings.completion
        self.processing = Timer("pipeline run", lambda: flow.run_waiting(PROCESSING),
                                completion.sweep_interval_s)
        self.completion = Timer("completion sweep", flow.complete_due,
                                completion.sweep_interval_s)
        # a whole-study sender's association released, in any receiving process: sweep now
        self.bell = completion_doorbell(settings.var_path)
        self.delivery = Timer("delivery sweep", lambda: _deliver(flow),
                              settings.delivery.poll_interval_s)
        self.timers = Timers([
            self.delivery, self.processing,
            self.completion, incoming_cleanup(spool, settings),
        ])
        flow.runner = self

    def ready(self, stage: Stage, job_id: int) -> None:
        (self.delivery if stage in DELIVERY else self.processing).wake()

    def start(self) -> None:
        self.timers.start()
        self.bell.listen(self.completion.wake)

    def shutdown(self, wait: bool = True) -> None:
        self.bell.close()
        self.timers.shutdown(wait=wait)
