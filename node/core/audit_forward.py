"""Forwarding the audit trail to the hospital's audit repository, from the ledger.

The ``audit`` table is the outbox: a row written while forwarding is on is pending; a sweep in
``serve`` (a timer, like the delivery sweep) sends the pending rows oldest first as DICOM audit
messages (:mod:`node.core.atna`) over syslog (:mod:`node.core.syslog`) and marks each one sent
once it was handed over. While the repository is unreachable the rows stay pending and the sweep
tries again after a wait that doubles from ``audit.interval_s`` up to ``audit.retry_cap_s``:
none is lost. The log says "audit repository unreachable" once per outage and once that it is
reachable again, never once per row.

What each row becomes (:func:`message_for`):

==================  ==================================================================
login, logout       110114 User Authentication (Login / Logout; a refused login: failure)
association         rejected: 110113 Security Alert (Node Authentication); accepted: none
                    (the instances it carried are their own rows)
received            110104 DICOM Instances Transferred, action C, with the study
sent                110104 DICOM Instances Transferred, action R, with the study
anything else       no message (retry, ORU sent, ...): marked, kept in the ledger only
==================  ==================================================================

A message is sent at least once: a crash between the send and the mark sends those rows again.
Over UDP "handed over" means given to the kernel; only TLS tells the node that the repository
was reachable.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from sqlalchemy import Engine

from node.core import atna, audit
from node.core.settings import Settings
from node.core.syslog import (
    NOTICE,
    WARNING,
    RepositoryUnreachable,
    SyslogSender,
    Target,
    format_message,
    parse_address,
)
from node.core.timers import Timer, Timers

log = logging.getLogger("node.audit")

#: rows read and sent per round of a sweep
BATCH = 200


def target_of(settings: Settings) -> Target:
    a = settings.audit
    host, port = parse_address(a.repository)
    return Target(host, port, a.transport, a.timeout_s, a.ca_file, a.certificate, a.private_key)


class Context:
    """What every message says about the node itself."""

    def __init__(self, settings: Settings) -> None:
        self.source = atna.Source(settings.node.ae_title, settings.audit.site_id)
        self.ae_title = settings.node.ae_title
        host = settings.node.host
        self.address = host if host not in ("", "0.0.0.0", "::") else socket.getfqdn()  # noqa: S104


def message_for(row: audit.Pending, ctx: Context) -> tuple[bytes, int] | None:
    """The audit message of one row and its syslog severity; None: the row has none."""
    ok = row.outcome == "ok"
    if row.action in ("login", "logout"):
        xml = atna.user_authentication(
            at=row.at, source=ctx.source, user=row.user or "unknown user",
            address=row.address or "", logout=row.action == "logout", success=ok,
            node=ctx.ae_title)
        return xml, NOTICE if ok else WARNING
    peer = atna.Participant(row.calling_ae_title or "-", True, row.address or "",
                            ae_title=row.calling_ae_title or "")
    node = atna.Participant(row.called_ae_title or ctx.ae_title, False, ctx.address,
                            ae_title=row.called_ae_title or ctx.ae_title)
    if row.action == "association" and row.outcome == "rejected":
        return atna.security_alert(
            at=row.at, source=ctx.source, reporter=node, peer=peer,
            subject=row.address or "-", alert=row.detail or "association rejected"), WARNING
    if row.action in ("received", "sent"):
        study = (atna.Study(row.study_instance_uid, row.sop_classes)
                 if row.study_instance_uid else None)
        received = row.action == "received"
        if not received:  # the node called the destination: it is the requestor
            node = atna.Participant(row.calling_ae_title or ctx.ae_title, True, ctx.address,
                                    ae_title=row.calling_ae_title or ctx.ae_title)
            peer = atna.Participant(row.called_ae_title or "-", False, row.address or "",
                                    ae_title=row.called_ae_title or "")
        xml = atna.instances_transferred(
            at=row.at, source=ctx.source, sender=peer if received else node,
            receiver=node if received else peer, study=study, received=received, success=ok,
            description="" if ok else (row.detail or row.outcome))
        return xml, NOTICE if ok else WARNING
    code = _ACCESSES.get(row.action)
    if code is not None:
        study = atna.Study(row.study_instance_uid) if row.study_instance_uid else None
        user = atna.Participant(row.user or "unknown user", True, row.address or "")
        what = f"{row.action}: {row.detail}" if row.detail else row.action
        xml = atna.instances_accessed(
            at=row.at, source=ctx.source, user=user, node=node, study=study, action=code,
            success=ok, description=what)
        return xml, NOTICE if ok else WARNING
    return None


#: user actions on a study's objects, as DICOM Instances Accessed with this EventActionCode
_ACCESSES = {
    "retry": atna.Action.UPDATE, "force-complete": atna.Action.UPDATE,
    "quarantine-release": atna.Action.UPDATE, "quarantine-delete": atna.Action.DELETE,
    "download": atna.Action.READ, "view-identity": atna.Action.READ,
    "review": atna.Action.UPDATE,
}


class AuditForwarder:
    """The sweep: pending rows out, oldest first, with back-off while the repository is down."""

    def __init__(self, engine: Engine, settings: Settings, sender: SyslogSender | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.settings = settings.audit
        self.sender = sender or SyslogSender(target_of(settings))
        self.context = Context(settings)
        self._clock = clock
        self._next_try = 0.0
        self._wait_s = self.settings.interval_s
        self._down_since: float | None = None

    def sweep(self) -> int:
        """Send what is pending (unless backing off); return how many rows were sent."""
        if self._clock() < self._next_try:
            return 0
        sent_total = 0
        while True:
            rows = audit.pending(self.engine, BATCH)
            if not rows:
                break
            messages: list[bytes] = []
            ids: list[int] = []
            skipped: list[int] = []
            for row in rows:
                built = message_for(row, self.context)
                if built is None:
                    skipped.append(row.id)
                    continue
                xml, severity = built
                messages.append(format_message(
                    xml, app_name=self.settings.app_name, hostname=self.sender.hostname,
                    procid=self.sender.procid, severity=severity))
                ids.append(row.id)
            if skipped:
                audit.mark_forwarded(self.engine, [], skipped)
            try:
                sent = self.sender.send(messages)
            except RepositoryUnreachable as exc:
                self._down(str(exc), ids)
                return sent_total
            audit.mark_forwarded(self.engine, ids[:sent])
            sent_total += sent
            if sent < len(ids):
                self._down("the connection failed while sending", ids[sent:])
                return sent_total
            self._up(sent_total)
            if len(rows) < BATCH:
                break
        return sent_total

    def _down(self, why: str, waiting: list[int]) -> None:
        audit.count_attempt(self.engine, waiting)
        if self._down_since is None:
            self._down_since = self._clock()
            log.warning("audit repository unreachable (%s): audit records wait in the ledger; "
                        "trying again with back-off up to %g s", why, self.settings.retry_cap_s)
        else:
            self._wait_s = min(self._wait_s * 2, self.settings.retry_cap_s)
        self._next_try = self._clock() + self._wait_s

    def _up(self, sent: int) -> None:
        if self._down_since is not None:
            log.warning("audit repository reachable again after %.0f s: %d waiting audit "
                        "records sent", self._clock() - self._down_since, sent)
        self._down_since, self._wait_s, self._next_try = None, self.settings.interval_s, 0.0


def sender_of(settings: Settings) -> SyslogSender | None:
    """The syslog sender of ``[audit]`` (None when forwarding is off); a settings problem (the
    address, the TLS files) is a ConfigError now, before anything starts. Also sets whether
    this process's audit records are written pending forwarding (``audit.set_forwarding``)."""
    audit.set_forwarding(settings.audit.enabled)
    return SyslogSender(target_of(settings)) if settings.audit.enabled else None


def start(engine: Engine, settings: Settings,
          sender: SyslogSender | None) -> Callable[[], None]:
    """Start the forwarding sweep on its own timer; return what stops it (nothing to stop when
    forwarding is off)."""
    if sender is None:
        return lambda: None
    if settings.audit.send_earlier:
        earlier = audit.include_earlier(engine)
        if earlier:
            log.info("%d audit records written while forwarding was off will be sent too",
                     earlier)
    forwarder = AuditForwarder(engine, settings, sender)
    timers = Timers([Timer("audit forwarding", forwarder.sweep, settings.audit.interval_s)])
    timers.start()
    return lambda: timers.shutdown(wait=False)
