"""Delivery: attempts due outbox items and moves jobs BUILT -> DELIVERED -> REPORTED -> DONE.

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

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node import at_rest
from node.alerts import post_webhook, send_email
from node.config import DicomDestination, EmailAlert, Hl7Destination, Settings, WebhookAlert
from node.dicomweb import stow
from node.errors import IllegalTransition, NodeError, PermanentError, TransientError
from node.hl7.mllp import Hl7Unavailable, classify, send_message
from node.jobstate import JobState
from node.ledger import Ledger, StudyRow
from node.outbox import ItemState, Outbox, OutboxItem, Outcome, RetryPolicy, is_due
from node.scp.sender import Destination, DestinationUnavailable, InstanceOutcome, send
from node.scp.tls import client_context

log = logging.getLogger("node.delivery")

_ALERTS = frozenset({"webhook", "email"})
#: what each job state waits for, and the state that follows once it is all delivered
_STAGES: dict[JobState, tuple[frozenset[str], JobState]] = {
    JobState.BUILT: (frozenset({"dicom", "stow"}), JobState.DELIVERED),
    JobState.DELIVERED: (frozenset({"hl7"}), JobState.REPORTED),
    JobState.REPORTED: (_ALERTS, JobState.DONE),
}


@dataclass
class Deliverer:
    ledger: Ledger
    outbox: Outbox
    settings: Settings
    root: Path

    def __post_init__(self) -> None:
        d = self.settings.delivery
        self.policy = RetryPolicy(d.retry_base_s, d.retry_cap_s, d.max_attempts)
        self._dicom = {x.name: x for x in d.dicom}
        self._stow = {x.name: x for x in d.stow}
        self._hl7 = {x.name: x for x in d.hl7}
        self._webhooks = {x.name: x for x in d.webhooks}
        self._email = {x.name: x for x in d.email}
        # TLS contexts are built once, at start-up: a bad certificate is a config error then
        self._tls = {x.name: client_context(x.tls, f"delivery.dicom[{x.name}]") for x in d.dicom}
        self._tls.update(
            {x.name: client_context(x.tls, f"delivery.hl7[{x.name}]") for x in d.hl7})

    def run_once(self) -> int:
        """Attempt what is due and advance jobs; return how many jobs changed state."""
        moved = 0
        # one read of the jobs in delivery's states, through the ledger's index on state
        for study in self.ledger.studies(*_STAGES):
            try:
                moved += self._study(study)
            except NodeError as exc:
                log.error("job #%d: delivery step failed, will retry: %s", study.id, exc)
        return moved

    def _study(self, study: StudyRow) -> int:
        wanted, _ = _STAGES[study.state]
        items = self.outbox.items(study.id, study.generation)
        due = [i for i in items if is_due(i) and i.kind in wanted | _ALERTS]
        self._attempt(due)
        # the items are read again only when attempts changed them
        return self._advance(study, None if due else items)

    def _advance(self, study: StudyRow, items: list[OutboxItem] | None = None) -> int:
        if items is None:
            items = self.outbox.items(study.id, study.generation)
        failed = [i for i in items if i.state == ItemState.FAILED]
        state, moved = study.state, 0
        if failed:
            return int(self._move(study.id, state, JobState.FAILED, _failure_reason(failed)))
        while state in _STAGES:
            wanted, following = _STAGES[state]
            mine = [i for i in items if i.kind in wanted]
            if any(i.state == ItemState.PENDING for i in mine):
                break
            if not self._move(study.id, state, following, _done_reason(following, mine)):
                break
            state, moved = following, moved + 1
        return moved

    def _move(self, study_id: int, current: JobState, target: JobState, reason: str) -> bool:
        try:
            moved = self.ledger.transition(study_id, target, reason=reason, expect=current)
        except IllegalTransition:
            return False
        if moved:
            level = logging.ERROR if target == JobState.FAILED else logging.INFO
            log.log(level, "job #%d: %s -> %s (%s)", study_id, current, target, reason)
        return moved

    # ---------------------------------------------------------------- attempts

    def _attempt(self, due: list[OutboxItem]) -> None:
        batches: dict[tuple[str, str], list[OutboxItem]] = defaultdict(list)
        for item in due:
            if item.kind in ("dicom", "stow"):
                batches[(item.kind, item.destination)].append(item)
            else:
                self._one(item)
        for (kind, name), items in batches.items():
            if name not in (self._dicom if kind == "dicom" else self._stow):
                for item in items:
                    self._record(item, "permanent", f"destination {name} is no longer configured")
            elif kind == "dicom":
                self._dicom_batch(name, items)
            else:
                self._stow_batch(name, items)

    def _stow_batch(self, name: str, items: list[OutboxItem]) -> None:
        target = self._stow[name]
        try:
            results = stow(target, [self.root / i.path for i in items],
                           [i.object_uid for i in items], self.settings.delivery.timeout_s)
        except OSError as exc:
            results = [("transient", f"{name}: result file unreadable ({type(exc).__name__})")]
            results *= len(items)
        for item, (outcome, detail) in zip(items, results, strict=True):
            self._record(item, outcome, detail)

    def _record(self, item: OutboxItem, outcome: Outcome, detail: str) -> None:
        state = self.outbox.record(item, outcome, detail, self.policy)
        if state == ItemState.DELIVERED:
            log.debug("delivered %s of job #%d to %s", item.label, item.study_id,
                      item.destination)
        else:
            log.warning("job #%d: %s to %s not delivered (%s): %s", item.study_id, item.label,
                        item.destination, state.value.lower(), detail)

    def _dicom_batch(self, name: str, items: list[OutboxItem]) -> None:
        target = self._dicom[name]

        def record(index: int, result: InstanceOutcome) -> None:
            # recorded as each response arrives: a crash mid-batch re-sends only the rest
            kind: Outcome = ("delivered" if result.result in ("delivered", "warning")
                             else "transient" if result.result == "transient" else "permanent")
            self._record(items[index], kind, result.detail)

        try:
            send(self._destination(target), [self.root / i.path for i in items],
                 timeout_s=self.settings.delivery.timeout_s, on_outcome=record)
        except (DestinationUnavailable, PermanentError) as exc:
            outcome: Outcome = "transient" if isinstance(exc, TransientError) else "permanent"
            for item in items:
                self._record(item, outcome, str(exc))

    def _destination(self, d: DicomDestination) -> Destination:
        return Destination(
            name=d.name, ae_title=d.ae_title, host=d.host, port=d.port,
            calling_ae_title=d.calling_ae_title or self.settings.node.ae_title,
            tls=self._tls.get(d.name),
        )

    def _one(self, item: OutboxItem) -> None:
        senders: dict[str, Callable[[OutboxItem], tuple[Outcome, str]]] = {
            "hl7": self._send_hl7, "webhook": self._send_webhook, "email": self._send_email}
        send_one = senders.get(item.kind)
        if send_one is None:
            self._record(item, "permanent", f"unknown outbox kind {item.kind}")
            return
        try:
            outcome, detail = send_one(item)
        except OSError as exc:
            outcome, detail = "transient", f"{item.kind} file unreadable ({type(exc).__name__})"
        self._record(item, outcome, detail)

    def _send_hl7(self, item: OutboxItem) -> tuple[Outcome, str]:
        dest: Hl7Destination | None = self._hl7.get(item.destination)
        if dest is None:
            return "permanent", f"HL7 destination {item.destination} is no longer configured"
        message = at_rest.read_bytes(self.root / item.path).decode("utf-8")
        try:
            ack = send_message(dest.host, dest.port, message,
                               timeout_s=self.settings.delivery.timeout_s,
                               tls=self._tls.get(dest.name))
        except Hl7Unavailable as exc:
            return "transient", str(exc)
        outcome = classify(ack, dest.on_error, dest.on_reject)
        # the ACK's text comes from the EMR and may quote patient data: only its code is kept
        return outcome, f"{dest.name}: ACK {ack.code}"

    def _send_webhook(self, item: OutboxItem) -> tuple[Outcome, str]:
        target: WebhookAlert | None = self._webhooks.get(item.destination)
        if target is None:
            return "permanent", f"webhook {item.destination} is no longer configured"
        payload = json.loads(at_rest.read_bytes(self.root / item.path).decode("utf-8"))
        return post_webhook(target, payload, self.settings.delivery.timeout_s)

    def _send_email(self, item: OutboxItem) -> tuple[Outcome, str]:
        target: EmailAlert | None = self._email.get(item.destination)
        if target is None:
            return "permanent", f"e-mail target {item.destination} is no longer configured"
        payload = json.loads(at_rest.read_bytes(self.root / item.path).decode("utf-8"))
        return send_email(target, payload, self.settings.delivery.timeout_s)


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
    """An operator's retry of a FAILED job; return what was done, in words."""
    if study.state != JobState.FAILED:
        raise IllegalTransition(f"job #{study.id} is {study.state}, not FAILED: nothing to retry")
    built = outbox.items(study.id, study.generation)
    if built:
        requeued = outbox.requeue_failed([study.id])
        ledger.transition(study.id, JobState.BUILT, reason=f"retry: {requeued} deliveries "
                          "re-queued by an operator", expect=JobState.FAILED)
        return f"job #{study.id}: {requeued} failed deliveries re-queued (FAILED -> BUILT)"
    ledger.transition(study.id, JobState.COMPLETE, reason="retry: re-run by an operator",
                      expect=JobState.FAILED)
    return f"job #{study.id}: processing starts again (FAILED -> COMPLETE)"
