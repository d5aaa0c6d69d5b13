"""The audit trail of the DICOM wire: associations accepted and rejected, instances received.

Receiving is the hot path, so an instance costs one dict update here (:meth:`Exchange.stored`,
called by the C-STORE handler once the instance is durable) and the records are written once
per association, when it ends: one row for the association (accepted, when, by whom, how it
ended, how many instances) and one "received" row per study with its SOP classes and their
counts, in one transaction. A rejected association is one row, written when it is rejected.
Records name AE titles, addresses and job ids; never a UID of a study or a patient's identity.

A failure to write is logged in one line and never reaches the peer: the instances were
acknowledged already and stay in the ledger and the spool.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from sqlalchemy.exc import SQLAlchemyError

from node.core import audit
from node.core.ledger import utcnow

if TYPE_CHECKING:
    from node.scp.handlers import ScpHandlers

log = logging.getLogger("node.scp")


class Exchange:
    """What one association carried, per study and SOP class; written when it ends."""

    def __init__(self, assoc: Any, handlers: ScpHandlers) -> None:
        self._assoc = assoc
        self._handlers = handlers
        self._studies: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._accepted: tuple[Any, str, str] | None = None  # when, calling, called
        assoc.bind(evt.EVT_ACCEPTED, self._on_accepted)

    def _on_accepted(self, _event: Any) -> None:
        rq = self._assoc.requestor
        self._accepted = (utcnow(), str(rq.ae_title).strip(),
                          str(rq.primitive.called_ae_title).strip())

    def stored(self, study_uid: str, sop_class_uid: str) -> None:
        """An instance was filed (the association thread's only cost of the audit trail)."""
        self._studies[study_uid][sop_class_uid] += 1

    @property
    def studies(self) -> list[str]:
        """The Study Instance UIDs of the instances filed so far."""
        return list(self._studies)

    def close(self) -> None:
        """Write the association's records (nothing for a connection never accepted)."""
        if self._accepted is None:
            return
        at, calling, called = self._accepted
        peer = str(self._assoc.requestor.address)
        ended = "aborted" if self._assoc.is_aborted else "released"
        total = sum(sum(c.values()) for c in self._studies.values())
        engine = self._handlers.ledger.engine
        entries = [audit.Entry(action="association", outcome="accepted", address=peer,
                               calling_ae_title=calling, called_ae_title=called,
                               instances=total, detail=ended, at=at)]
        try:
            with engine.begin() as conn:
                jobs = audit.study_ids(conn, self._studies)
                entries += [audit.Entry(
                    action="received", outcome="ok", address=peer, calling_ae_title=calling,
                    called_ae_title=called, study_id=jobs.get(uid),
                    instances=sum(classes.values()), sop_classes=sorted(classes.items()))
                    for uid, classes in self._studies.items()]
                audit.write(conn, entries, forward=self._handlers.settings.audit.enabled)
        except SQLAlchemyError as exc:
            log.error("audit records of an association from %s not written (%s)", peer,
                      type(exc).__name__)


def rejected(handlers: ScpHandlers, *, calling: str, called: str, host: str,
             reason: str) -> None:
    """A rejected association's record."""
    try:
        audit.record(handlers.ledger.engine, audit.Entry(
            action="association", outcome="rejected", address=host, calling_ae_title=calling,
            called_ae_title=called, detail=reason), forward=handlers.settings.audit.enabled)
    except SQLAlchemyError as exc:
        log.error("audit record of a rejected association from %s not written (%s)", host,
                  type(exc).__name__)
