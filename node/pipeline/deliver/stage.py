"""The deliver and report stages: due outbox items are sent; BUILT -> DELIVERED -> REPORTED -> DONE.

Order per job: the DICOM objects go to every PACS destination first (one association, or one
STOW-RS request, per destination and sweep); when all are stored the job is DELIVERED and the
ORU messages go to the EMR (so a clinician who follows the HL7 result finds the images in the
PACS); when they are acknowledged it is REPORTED, and DONE once the alerts are out too. Alerts
are sent as soon as the job is BUILT: they must not wait for the PACS.

A failed attempt is recorded on its item with the back-off of ``delivery``; an item that fails
permanently, or runs out of attempts, is FAILED and so is its job, with a reason naming the
destination and error (never patient data). ``dicom-node retry`` re-queues them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from node.core import metrics
from node.core.errors import IllegalTransition
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow
from node.core.outbox import ItemState, Kind, Outbox, OutboxItem, Outcome, RetryPolicy, is_due
from node.pipeline.context import Step
from node.pipeline.deliver.exchange import Tally
from node.pipeline.deliver.senders import SENDERS, Peers
from node.scp.tls import client_context

log = logging.getLogger("node.delivery")

_ALERTS = frozenset({Kind.WEBHOOK, Kind.EMAIL})
#: what each job state waits for, and the state that follows once it is all delivered
WAITS: dict[JobState, tuple[frozenset[Kind], JobState]] = {
    JobState.BUILT: (frozenset({Kind.DICOM, Kind.STOW}), JobState.DELIVERED),
    JobState.DELIVERED: (frozenset({Kind.HL7}), JobState.REPORTED),
    JobState.REPORTED: (_ALERTS, JobState.DONE),
}
#: kinds sent over one connection per destination and sweep; the others go one by one, first
_BATCHED = frozenset({Kind.DICOM, Kind.STOW})
#: kinds a job's state waits for; a report e-mail (a user's request, sent whatever the job's
#: state: ``deliver_late``) never moves or fails the job
_JOB_KINDS = frozenset(Kind) - {Kind.REPORT_MAIL}


@dataclass
class Deliverer:
    """Sends a job's due items with the sender of their kind and says where the job goes."""

    outbox: Outbox
    peers: Peers

    def __post_init__(self) -> None:
        d = self.peers.settings.delivery
        self.policy = RetryPolicy(d.retry_base_s, d.retry_cap_s, d.max_attempts)
        self.peers.tls.update(
            {x.name: client_context(x.tls, f"delivery.dicom[{x.name}]") for x in d.dicom})
        self.peers.tls.update(
            {x.name: client_context(x.tls, f"delivery.hl7[{x.name}]") for x in d.hl7})

    def deliver_job(self, job: StudyRow) -> Step | None:
        """One delivery step of a BUILT, DELIVERED or REPORTED job: what is due for its state
        (and every due alert: alerts never wait for the PACS) is attempted; the Step says
        where the job goes when all it waits for is delivered (None: not yet)."""
        wanted, _ = WAITS[job.state]
        items = self.outbox.items(job.id, job.generation)
        due = [i for i in items if is_due(i) and i.kind in wanted | _ALERTS]
        self._attempt(due)
        # the items are read again only when attempts changed them
        return next_step(job.state, self.outbox.items(job.id, job.generation) if due else items)

    def deliver_late(self) -> int:
        """Send what no job state waits for (``Outbox.late_due``): report e-mails, and a
        report version queued after its job was DONE. The job's state stays as it is; an item
        that fails for good is a dead letter of its own. How many items were attempted."""
        due = self.outbox.late_due()
        self._attempt(due)
        return len(due)

    def _attempt(self, due: list[OutboxItem]) -> None:
        groups: dict[tuple[Kind, str], list[OutboxItem]] = defaultdict(list)
        for item in due:
            groups[(item.kind, item.destination)].append(item)
        # one by one (HL7, alerts) first: an alert must not wait for a PACS association
        for (kind, destination), items in sorted(groups.items(),
                                                 key=lambda g: g[0][0] in _BATCHED):
            tally = Tally(self._record)  # the audit trail's count of what went where
            SENDERS[kind](self.peers, destination, items, tally)
            tally.write(self.outbox.engine, self.peers.settings, kind, destination)

    def _record(self, item: OutboxItem, outcome: Outcome, detail: str) -> None:
        state = self.outbox.record(item, outcome, detail, self.policy)
        metrics.delivery(item.kind, outcome)
        if state == ItemState.DELIVERED:
            log.debug("delivered %s of job #%d to %s", item.label, item.study_id,
                      item.destination)
        else:
            log.warning("job #%d: %s to %s not delivered (%s): %s", item.study_id, item.label,
                        item.destination, state.value.lower(), detail)


def next_step(state: JobState, items: list[OutboxItem]) -> Step | None:
    """FAILED when an item failed for good; the next state when every item the job's state
    waits for is delivered; None while one is pending."""
    failed = [i for i in items if i.state == ItemState.FAILED and i.kind in _JOB_KINDS]
    if failed:
        return Step(JobState.FAILED, _failure_reason(failed))
    wanted, following = WAITS[state]
    mine = [i for i in items if i.kind in wanted]
    if any(i.state == ItemState.PENDING for i in mine):
        return None
    return Step(following, _done_reason(following, mine))


def _failure_reason(failed: list[OutboxItem]) -> str:
    first = failed[0]
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return (f"delivery failed: {first.label} ({first.model}) to {first.destination}: "
            f"{first.last_error}{more}; `dicom-node retry {first.study_id}` re-queues")


def _done_reason(state: JobState, items: list[OutboxItem]) -> str:
    destinations = ", ".join(sorted({i.destination for i in items}))
    if state == JobState.DELIVERED:
        return (f"{len(items)} objects stored at {destinations}" if items
                else "no DICOM or STOW-RS destination configured")
    if state == JobState.REPORTED:
        return (f"{len(items)} HL7 results acknowledged by {destinations}" if items
                else "no HL7 destination configured")
    return f"all delivered; {len(items)} alerts sent" if items else "all delivered; no alert"


def retry_job(ledger: Ledger, outbox: Outbox, study: StudyRow) -> str:
    """An operator's retry of a FAILED job, or of a job's dead letters that no job state
    waits for; return what was done, in words."""
    if study.state != JobState.FAILED:
        # dead letters no job state waits for (a report e-mail, a report version of a DONE
        # job) are re-queued where they are; the job stays as it is
        late = [i.id for i in outbox.items(study.id, study.generation, ItemState.FAILED)
                if i.kind not in _JOB_KINDS or study.state == JobState.DONE]
        if not late:
            raise IllegalTransition(f"job #{study.id} is {study.state}, not FAILED: nothing "
                                    "to retry")
        requeued = outbox.requeue_failed([study.id], late)
        return (f"job #{study.id}: {requeued} failed deliveries re-queued (the job stays "
                f"{study.state})")
    built = outbox.items(study.id, study.generation)
    if built:
        requeued = outbox.requeue_failed([study.id])
        ledger.transition(study.id, JobState.BUILT, reason=f"retry: {requeued} deliveries "
                          "re-queued by an operator", expect=JobState.FAILED)
        return f"job #{study.id}: {requeued} failed deliveries re-queued (FAILED -> BUILT)"
    ledger.transition(study.id, JobState.COMPLETE, reason="retry: re-run by an operator",
                      expect=JobState.FAILED)
    return f"job #{study.id}: processing starts again (FAILED -> COMPLETE)"
