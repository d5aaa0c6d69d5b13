"""The audit trail of deliveries: results sent to a PACS (C-STORE, STOW-RS), ORU sent to the EMR.

One record per job, destination and sweep, written after the sender is done with its batch (one
transaction, not one per object): how many objects went, how many did not, to which AE title or
host. Alerts (webhook, e-mail) are not peer exchanges of the audit trail. Records name
destinations and job ids, never patient identity or UIDs; a failure to write is one log line
and leaves the delivery as it was.
"""

from __future__ import annotations

import logging
from collections import Counter
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.core import audit
from node.core.outbox import Kind, OutboxItem, Outcome
from node.core.settings import Settings
from node.pipeline.deliver.senders import Record

log = logging.getLogger("node.delivery")

#: the audit action of each kind of peer delivery
ACTIONS = {Kind.DICOM: "sent", Kind.STOW: "sent", Kind.HL7: "oru-sent"}


class Tally:
    """A sender's ``record`` that also counts the outcomes per job, then writes them."""

    def __init__(self, record: Record) -> None:
        self._record = record
        self._counts: dict[int, Counter[str]] = {}

    def __call__(self, item: OutboxItem, outcome: Outcome, detail: str) -> None:
        self._record(item, outcome, detail)
        self._counts.setdefault(item.study_id, Counter())[outcome] += 1

    def write(self, engine: Engine, settings: Settings, kind: Kind, destination: str) -> None:
        action = ACTIONS.get(kind)
        if action is None or not self._counts:
            return
        calling, called, address = _peer(settings, kind, destination)
        entries = []
        for job, counts in self._counts.items():
            done = counts["delivered"]
            failed = sum(counts.values()) - done
            entries.append(audit.Entry(
                action=action, outcome="ok" if not failed else "failed", study_id=job,
                address=address, calling_ae_title=calling, called_ae_title=called,
                instances=done, sop_classes=[("", done)] if kind != Kind.HL7 and done else (),
                detail=f"to {destination}" + (f"; {failed} not delivered" if failed else "")))
        try:
            audit.record_all(engine, entries, forward=settings.audit.enabled)
        except SQLAlchemyError as exc:
            log.error("audit records of a delivery to %s not written (%s)", destination,
                      type(exc).__name__)


def _peer(settings: Settings, kind: Kind, name: str) -> tuple[str | None, str | None, str]:
    """(the node's calling AE title, the destination's AE title, its host) of a destination."""
    d = settings.delivery
    if kind == Kind.DICOM:
        for x in d.dicom:
            if x.name == name:
                return (x.calling_ae_title or settings.node.ae_title, x.ae_title, x.host)
    if kind == Kind.STOW:
        for s in d.stow:
            if s.name == name:
                return None, None, urlsplit(s.url).hostname or ""
    if kind == Kind.HL7:
        for h in d.hl7:
            if h.name == name:
                return None, None, h.host
    return None, None, ""
