"""What the Studies, Study and Failures pages read: keyset pages and one job's parts.

The Studies list reads like ``Ledger.page`` (each state newest first along the
(state, received_at, id) index, ``limit`` rows at most each), and adds what a person paging
back and forth needs: an upper date bound and a cursor towards newer studies (``after``).
A page costs the same at any depth of history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.errors import InvalidDicomError
from sqlalchemy import ColumnElement, Engine, and_, func, literal, select, true, tuple_

from node.core import at_rest, db
from node.core.errors import UnknownStudy
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow
from node.core.outbox import ItemState, Outbox, OutboxItem
from node.web import queries
from node.web.queries import StudyFilter

log = logging.getLogger("node.web")

#: series a Study page lists (and reads one header of, for the description)
SERIES_LIMIT = 100
#: failed jobs and failed deliveries the Failures page lists
FAILURES_LIMIT = 200


@dataclass(frozen=True)
class Page:
    rows: list[StudyRow]  # newest first
    newer: int | None  # the cursor for the next newer page (``after``), None: none newer
    older: int | None  # the cursor for the next older page (``before``)


def _cursor(engine: Engine, study_id: int) -> datetime:
    s = db.studies.c
    with db.reader(engine) as conn:
        received = conn.execute(select(s.received_at).where(s.id == study_id)).scalar_one_or_none()
    if received is None:
        raise UnknownStudy(f"no job #{study_id} in the ledger")
    return received  # type: ignore[no-any-return]


def conditions(f: StudyFilter) -> list[ColumnElement[bool]]:
    """The calling AE, model and triage parts of the API's filter, as the page's conditions:
    the AE title pages along its own index; a model or triage keeps the jobs among those with a
    current run of it (the ids read once, through the results' model and triage indexes)."""
    s, r = db.studies.c, db.results.c
    out: list[ColumnElement[bool]] = []
    if f.calling_ae is not None:
        out.append(s.calling_ae_title == f.calling_ae)
    if f.model is not None or f.triage is not None:
        runs: list[ColumnElement[bool]] = [r.current == true()]
        if f.model is not None:
            runs.append(r.model == f.model)
        if f.triage is not None:
            runs.append(r.triage == f.triage.value)
        out.append(s.id.in_(select(r.study_id).where(*runs)))
    return out


def studies_page(ledger: Ledger, states: list[JobState], *, limit: int,
                 since: datetime | None = None, until: datetime | None = None,
                 before: int | None = None, after: int | None = None,
                 narrow: list[ColumnElement[bool]] | None = None) -> Page:
    """One page of jobs received in [since, until), newest first, older than job ``before``
    or newer than job ``after`` (at most one of the two), narrowed by ``narrow``
    (:func:`conditions`)."""
    s = db.studies.c
    key = tuple_(s.received_at, s.id)
    where: list[ColumnElement[bool]] = list(narrow or ())
    if since is not None:
        where.append(s.received_at >= since)
    if until is not None:
        where.append(s.received_at < until)
    if before is not None:
        where.append(key < tuple_(literal(_cursor(ledger.engine, before)), literal(before)))
    if after is not None:
        where.append(key > tuple_(literal(_cursor(ledger.engine, after)), literal(after)))
    rows: list[StudyRow] = []
    for state in states:
        rows += _rows(ledger.engine, and_(s.state == state.value, *where), limit=limit + 1,
                      newest_first=after is None)
    rows.sort(key=lambda r: (r.received_at, r.id), reverse=True)
    if after is None:
        more, rows = len(rows) > limit, rows[:limit]
        return Page(rows, newer=rows[0].id if rows and before is not None else None,
                    older=rows[-1].id if more else None)
    more, rows = len(rows) > limit, rows[-limit:]
    return Page(rows, newer=rows[0].id if more else None,
                older=rows[-1].id if rows else None)


_STUDY_COLUMNS = tuple(db.studies.c[name] for name in (
    "id", "study_instance_uid", "state", "generation", "instances", "duplicates", "received_at",
    "opened_at", "last_received_at", "completed_at", "completion_reason", "state_reason",
    "calling_ae_title"))


def _rows(engine: Engine, where: ColumnElement[bool], *, limit: int,
          newest_first: bool = True) -> list[StudyRow]:
    s = db.studies.c
    order = (s.received_at.desc(), s.id.desc()) if newest_first else (s.received_at, s.id)
    query = select(*_STUDY_COLUMNS).where(where).order_by(*order).limit(limit)
    with db.reader(engine) as conn:
        return [StudyRow(**{**r._asdict(), "state": JobState(r.state)})
                for r in conn.execute(query)]


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str | None
    instances: int
    description: str | None
    number: str | None


def series(ledger: Ledger, spool: Path, study_id: int) -> list[Series]:
    """The study's series with their instance counts, and each one's Series Description and
    Number read from one of its files (None where the file is gone or unreadable)."""
    i = db.instances.c
    query = (select(i.series_instance_uid, func.max(i.modality), func.count(), func.min(i.path))
             .where(i.study_id == study_id).group_by(i.series_instance_uid)
             .order_by(i.series_instance_uid).limit(SERIES_LIMIT))
    with db.reader(ledger.engine) as conn:
        rows = list(conn.execute(query))
    out = []
    for uid, modality, count, path in rows:
        description, number = _header(spool / path)
        out.append(Series(uid, modality, int(count), description, number))
    return out


def _header(path: Path) -> tuple[str | None, str | None]:
    try:
        ds = at_rest.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SeriesDescription", "SeriesNumber"])
    except (OSError, InvalidDicomError, ValueError) as exc:
        log.debug("a series header could not be read (%s)", exc.__class__.__name__)
        return None, None
    number = ds.get("SeriesNumber")
    return (str(ds.get("SeriesDescription", "")) or None,
            None if number is None else str(number))


@dataclass(frozen=True)
class Event:
    at: datetime
    from_state: str | None
    to_state: str | None
    detail: str | None


def timeline(ledger: Ledger, study_id: int) -> list[Event]:
    """The job's state changes, oldest first (the API's timeline, with times as times)."""
    return [Event(datetime.fromisoformat(e["at"].removesuffix("Z")), e["from"], e["to"],
                  e["detail"]) for e in queries.timeline(ledger.engine, study_id)]


@dataclass(frozen=True)
class Failures:
    jobs: list[StudyRow]
    deliveries: list[OutboxItem]


def failures(ledger: Ledger, outbox: Outbox) -> Failures:
    """FAILED jobs and FAILED outbox items, newest first: both along their state indexes, so
    the page costs what the dead letters count, not the history."""
    jobs = _rows(ledger.engine, db.studies.c.state == JobState.FAILED.value,
                 limit=FAILURES_LIMIT)
    items = outbox.items(state=ItemState.FAILED)[-FAILURES_LIMIT:]
    return Failures(jobs, items[::-1])
