"""The audit trail: who did what, with which study, from where, and how it ended.

One row of the ``audit`` table per user action (login, failed login, logout, retry, ...) and per
exchange with a peer (association accepted or rejected, instances received, results sent, ORU
sent). Users are named by their account name; peers by AE title and address; a study by its
job id. Never patient identity, and never a Study Instance UID: the row has the job id, and only
the message built for the audit repository looks the UID up (``node.core.audit_forward``), so
no UID reaches a log line, the API or the CSV export.

Writes are one transaction per call; the receive path writes its records once per association,
at its end (:func:`record_all`), never once per instance. A row is written pending forwarding
when forwarding is on for the writer (``forward``; by default the process-wide setting made by
:func:`set_forwarding` at start-up), so records made while it is off are not sent later.

Listing pages newest first by id (keyset: ``before``), filtered by action, user and time; the
CSV export walks the same pages and neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from node.core import db
from node.core.ledger import iso_z, utcnow

_forwarding = False


def set_forwarding(enabled: bool) -> None:
    """Whether records written by this process without an explicit ``forward`` are pending
    forwarding (``serve`` sets it from ``audit.enabled``)."""
    global _forwarding
    _forwarding = enabled


@dataclass(frozen=True)
class Entry:
    """One audit record. ``detail`` is the node's own words, never request or dataset data."""

    action: str
    outcome: str
    user: str | None = None
    role: str | None = None
    address: str = ""
    study_id: int | None = None
    detail: str = ""
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    instances: int | None = None
    #: (SOP Class UID, instances of it)
    sop_classes: Sequence[tuple[str, int]] = ()
    #: when it happened (default: when it is recorded)
    at: datetime | None = None

    def row(self, forward: bool) -> dict[str, Any]:
        return {
            "at": self.at or utcnow(), "user_name": _cut(self.user, 64), "role": self.role,
            "address": self.address[:64], "action": self.action[:32],
            "study_id": self.study_id, "outcome": self.outcome[:16],
            "detail": self.detail or None,
            "calling_ae_title": _cut(self.calling_ae_title, 16),
            "called_ae_title": _cut(self.called_ae_title, 16), "instances": self.instances,
            "sop_classes": format_sop_classes(self.sop_classes) or None,
            "forward_pending": forward, "forward_attempts": 0,
        }


def _cut(text: str | None, n: int) -> str | None:
    return None if text is None else text[:n]


def format_sop_classes(classes: Iterable[tuple[str, int]]) -> str:
    return " ".join(f"{uid}={count}" for uid, count in classes)


def parse_sop_classes(text: str | None) -> list[tuple[str, int]]:
    out = []
    for part in (text or "").split():
        uid, _, count = part.partition("=")
        out.append((uid, int(count) if count.isdigit() else 0))
    return out


def record(engine: Engine, entry: Entry, *, forward: bool | None = None) -> None:
    """Write one record in its own transaction."""
    record_all(engine, [entry], forward=forward)


def record_all(engine: Engine, entries: Sequence[Entry], *, forward: bool | None = None) -> None:
    """Write several records in one transaction (the receive path's per-association batch)."""
    if not entries:
        return
    pending = _forwarding if forward is None else forward
    with engine.begin() as conn:
        write(conn, entries, forward=pending)


def write(conn: Connection, entries: Sequence[Entry], *, forward: bool) -> None:
    """Write records inside a transaction that is already open (to piggy-back on one)."""
    conn.execute(insert(db.audit), [e.row(forward) for e in entries])


def study_ids(conn: Connection, study_uids: Iterable[str]) -> dict[str, int]:
    """Study Instance UID -> job id, for the studies of one association."""
    uids = sorted(set(study_uids))
    if not uids:
        return {}
    s = db.studies.c
    rows = conn.execute(select(s.study_instance_uid, s.id).where(s.study_instance_uid.in_(uids)))
    return {r.study_instance_uid: r.id for r in rows}


# ------------------------------------------------------------------ listing and export


@dataclass(frozen=True)
class Filters:
    action: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None


COLUMNS = ("id", "at", "user", "role", "address", "action", "job", "outcome", "detail",
           "calling_ae_title", "called_ae_title", "instances", "sop_classes", "forwarded_at")


def page(engine: Engine, *, limit: int, before: int | None = None,
         filters: Filters | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` records older than record ``before`` that pass ``filters``, newest
    first. Keyset pagination on id: page N costs what page 1 costs."""
    f = filters or Filters()
    a = db.audit.c
    query = select(a.id, a.at, a.user_name, a.role, a.address, a.action, a.study_id,
                   a.outcome, a.detail, a.calling_ae_title, a.called_ae_title, a.instances,
                   a.sop_classes, a.forwarded_at).order_by(a.id.desc()).limit(limit)
    if before is not None:
        query = query.where(a.id < before)
    if f.action:
        query = query.where(a.action == f.action)
    if f.user:
        query = query.where(a.user_name == f.user)
    if f.since is not None:
        query = query.where(a.at >= f.since)
    if f.until is not None:
        query = query.where(a.at < f.until)
    with db.reader(engine) as conn:
        return [{"id": r.id, "at": iso_z(r.at), "user": r.user_name, "role": r.role,
                 "address": r.address, "action": r.action, "job": r.study_id,
                 "outcome": r.outcome, "detail": r.detail,
                 "calling_ae_title": r.calling_ae_title, "called_ae_title": r.called_ae_title,
                 "instances": r.instances, "sop_classes": r.sop_classes,
                 "forwarded_at": iso_z(r.forwarded_at)} for r in conn.execute(query)]


def every(engine: Engine, filters: Filters | None = None,
          batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every record that passes ``filters``, newest first, read a page at a time."""
    before: int | None = None
    while True:
        rows = page(engine, limit=batch, before=before, filters=filters)
        yield from rows
        if len(rows) < batch:
            return
        before = rows[-1]["id"]


#: a cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
#: (OWASP "CSV injection"); tab and carriage return start one in some of them too
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """The cell's text; one that a spreadsheet would run as a formula gets a leading '."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The records as CSV text (a header line, then one line per record), a line at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(COLUMNS)
    yield take()
    for row in rows:
        writer.writerow([safe_cell(row.get(c)) for c in COLUMNS])
        yield take()


# ------------------------------------------------------------------ forwarding state


@dataclass(frozen=True)
class Pending:
    """A record waiting for the audit repository, with what its message needs."""

    id: int
    at: datetime
    user: str | None
    role: str | None
    address: str | None
    action: str
    outcome: str
    detail: str | None
    calling_ae_title: str | None
    called_ae_title: str | None
    instances: int | None
    sop_classes: list[tuple[str, int]]
    #: the job's Study Instance UID, for the repository only (None: no job, or it is gone)
    study_instance_uid: str | None


def pending(engine: Engine, limit: int) -> list[Pending]:
    """The oldest ``limit`` records still to forward (through ix_audit_unsent)."""
    a, s = db.audit.c, db.studies.c
    query = (select(a.id, a.at, a.user_name, a.role, a.address, a.action, a.outcome, a.detail,
                    a.calling_ae_title, a.called_ae_title, a.instances, a.sop_classes,
                    s.study_instance_uid)
             .select_from(db.audit.outerjoin(db.studies, s.id == a.study_id))
             .where(a.forward_pending.is_(True)).order_by(a.id).limit(limit))
    with db.reader(engine) as conn:
        return [Pending(r.id, r.at, r.user_name, r.role, r.address, r.action, r.outcome,
                        r.detail, r.calling_ae_title, r.called_ae_title, r.instances,
                        parse_sop_classes(r.sop_classes), r.study_instance_uid)
                for r in conn.execute(query)]


def mark_forwarded(engine: Engine, sent: Sequence[int], skipped: Sequence[int] = ()) -> None:
    """``sent``: handed to the repository now; ``skipped``: no audit message for them."""
    a = db.audit.c
    with engine.begin() as conn:
        if sent:
            conn.execute(update(db.audit).where(a.id.in_(list(sent)))
                         .values(forward_pending=False, forwarded_at=utcnow(),
                                 forward_attempts=a.forward_attempts + 1))
        if skipped:
            conn.execute(update(db.audit).where(a.id.in_(list(skipped)))
                         .values(forward_pending=False))


def count_attempt(engine: Engine, ids: Sequence[int]) -> None:
    """A try to send these that failed: they stay pending."""
    if ids:
        a = db.audit.c
        with engine.begin() as conn:
            conn.execute(update(db.audit).where(a.id.in_(list(ids)))
                         .values(forward_attempts=a.forward_attempts + 1))


def include_earlier(engine: Engine) -> int:
    """Make the records never forwarded (written while forwarding was off) pending; how many."""
    a = db.audit.c
    with engine.begin() as conn:
        result = conn.execute(update(db.audit).where(a.forward_pending.is_(False),
                                                     a.forwarded_at.is_(None))
                              .values(forward_pending=True))
    return int(result.rowcount or 0)
