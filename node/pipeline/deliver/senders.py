"""One sender per outbox kind, found through one registry (:data:`SENDERS`: kind -> sender).

A sender takes the due items of one destination (a batch: C-STORE sends them over one
association, STOW-RS in one request; HL7 and alerts one after another) and reports each item's
outcome through ``record`` as soon as it is known, so a crash mid-batch re-sends only the rest.
A destination that is no longer configured is a permanent failure of its items. Outcomes name
destinations, statuses and error types, never patient data.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node.core import at_rest
from node.core.errors import PermanentError, TransientError
from node.core.outbox import Kind, OutboxItem, Outcome
from node.core.settings import Settings
from node.hl7.mllp import Hl7Unavailable, classify, send_message
from node.pipeline.deliver.notify import post_webhook, send_email
from node.pipeline.deliver.report_mail import send_report_mail
from node.pipeline.deliver.stow import stow
from node.scp.sender import Destination, DestinationUnavailable, InstanceOutcome, send

#: called with each item and its outcome as soon as it is known
Record = Callable[[OutboxItem, Outcome, str], None]


@dataclass
class Peers:
    """What every sender needs: the settings, the outbox folder, the TLS contexts (built once,
    at start-up: a bad certificate is a settings error then)."""

    settings: Settings
    root: Path
    tls: dict[str, ssl.SSLContext | None] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float:
        return self.settings.delivery.timeout_s


class Sender(Protocol):
    def __call__(self, peers: Peers, destination: str, items: list[OutboxItem],
                 record: Record) -> None: ...


def send_dicom(peers: Peers, destination: str, items: list[OutboxItem], record: Record) -> None:
    """C-STORE every item over one association to the PACS ``destination``."""
    d = {x.name: x for x in peers.settings.delivery.dicom}.get(destination)
    if d is None:
        _not_configured(items, record, f"destination {destination} is no longer configured")
        return
    target = Destination(name=d.name, ae_title=d.ae_title, host=d.host, port=d.port,
                         calling_ae_title=d.calling_ae_title or peers.settings.node.ae_title,
                         tls=peers.tls.get(d.name))

    def each(index: int, result: InstanceOutcome) -> None:
        kind: Outcome = ("delivered" if result.result in ("delivered", "warning")
                         else "transient" if result.result == "transient" else "permanent")
        record(items[index], kind, result.detail)

    try:
        send(target, [peers.root / i.path for i in items], timeout_s=peers.timeout_s,
             on_outcome=each)
    except (DestinationUnavailable, PermanentError) as exc:
        outcome: Outcome = "transient" if isinstance(exc, TransientError) else "permanent"
        for item in items:
            record(item, outcome, str(exc))


def send_stow(peers: Peers, destination: str, items: list[OutboxItem], record: Record) -> None:
    """POST every item in one STOW-RS request to the DICOMweb ``destination``."""
    target = {x.name: x for x in peers.settings.delivery.stow}.get(destination)
    if target is None:
        _not_configured(items, record, f"destination {destination} is no longer configured")
        return
    try:
        results = stow(target, [peers.root / i.path for i in items],
                       [i.object_uid for i in items], peers.timeout_s)
    except OSError as exc:
        results = [("transient", f"{destination}: result file unreadable "
                    f"({type(exc).__name__})")] * len(items)
    for item, (outcome, detail) in zip(items, results, strict=True):
        record(item, outcome, detail)


def send_hl7(peers: Peers, destination: str, items: list[OutboxItem], record: Record) -> None:
    """Each ORU^R01 over MLLP to the HL7 ``destination``, its ACK classified."""
    dest = {x.name: x for x in peers.settings.delivery.hl7}.get(destination)

    def one(item: OutboxItem) -> tuple[Outcome, str]:
        if dest is None:
            return "permanent", f"HL7 destination {destination} is no longer configured"
        message = at_rest.read_bytes(peers.root / item.path).decode("utf-8")
        try:
            ack = send_message(dest.host, dest.port, message, timeout_s=peers.timeout_s,
                               tls=peers.tls.get(dest.name))
        except Hl7Unavailable as exc:
            return "transient", str(exc)
        # the ACK's text comes from the EMR and may quote patient data: only its code is kept
        return classify(ack, dest.on_error, dest.on_reject), f"{dest.name}: ACK {ack.code}"

    _each(items, record, one)


def send_webhook(peers: Peers, destination: str, items: list[OutboxItem],
                 record: Record) -> None:
    """Each alert payload as a JSON POST to the webhook ``destination``."""
    target = {x.name: x for x in peers.settings.delivery.webhooks}.get(destination)

    def one(item: OutboxItem) -> tuple[Outcome, str]:
        if target is None:
            return "permanent", f"webhook {destination} is no longer configured"
        return post_webhook(target, _payload(peers, item), peers.timeout_s)

    _each(items, record, one)


def send_mail(peers: Peers, destination: str, items: list[OutboxItem], record: Record) -> None:
    """Each alert payload as an e-mail through the SMTP server of ``destination``."""
    target = {x.name: x for x in peers.settings.delivery.email}.get(destination)

    def one(item: OutboxItem) -> tuple[Outcome, str]:
        if target is None:
            return "permanent", f"e-mail target {destination} is no longer configured"
        return send_email(target, _payload(peers, item), peers.timeout_s)

    _each(items, record, one)


def send_report(peers: Peers, destination: str, items: list[OutboxItem],
                record: Record) -> None:
    """Each report e-mail (``node.pipeline.deliver.report_mail``) through the SMTP server of
    ``delivery.report_mail``; ``destination`` only names the address's domain."""
    server = peers.settings.delivery.report_mail

    def one(item: OutboxItem) -> tuple[Outcome, str]:
        if not server.smtp_host:
            return "permanent", "report e-mail is no longer configured"
        return send_report_mail(server, item, peers.root, peers.timeout_s)

    _each(items, record, one)


#: the one sender of each outbox kind
SENDERS: dict[Kind, Sender] = {
    Kind.DICOM: send_dicom,
    Kind.STOW: send_stow,
    Kind.HL7: send_hl7,
    Kind.WEBHOOK: send_webhook,
    Kind.EMAIL: send_mail,
    Kind.REPORT_MAIL: send_report,
}


def _payload(peers: Peers, item: OutboxItem) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(at_rest.read_bytes(peers.root / item.path))
    return payload


def _each(items: list[OutboxItem], record: Record,
          one: Callable[[OutboxItem], tuple[Outcome, str]]) -> None:
    for item in items:
        try:
            outcome, detail = one(item)
        except OSError as exc:
            outcome, detail = "transient", f"{item.kind} file unreadable ({type(exc).__name__})"
        record(item, outcome, detail)


def _not_configured(items: list[OutboxItem], record: Record, detail: str) -> None:
    for item in items:
        record(item, "permanent", detail)
