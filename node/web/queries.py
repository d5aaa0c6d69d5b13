"""Read-only views for the API: one job's instances per series and timeline, and the studies
list's filters (state, receipt time, model, triage, calling AE title).

All read along the ledger's indexes (``ix_instances_study``, the events' study id, the state
and calling-AE indexes of ``studies``, the ``results`` indexes), so a study's page and a page
of the list cost about the same at any depth of history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, exists, func, select, true

from node.core import db
from node.core.contract import Triage
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow, iso_z

#: newest timeline events a study page shows
TIMELINE_LIMIT = 200


def series_counts(engine: Engine, study_id: int) -> list[dict[str, Any]]:
    """Instances per series of the study (Series Instance UID, modality, count)."""
    i = db.instances.c
    query = (select(i.series_instance_uid, func.max(i.modality), func.count())
             .where(i.study_id == study_id).group_by(i.series_instance_uid)
             .order_by(i.series_instance_uid))
    with db.reader(engine) as conn:
        return [{"series_instance_uid": uid, "modality": modality, "instances": int(n)}
                for uid, modality, n in conn.execute(query)]


def timeline(engine: Engine, study_id: int) -> list[dict[str, Any]]:
    """The job's state changes (audit events), oldest first: the newest ``TIMELINE_LIMIT``."""
    e = db.events.c
    query = (select(e.id, e.at, e.kind, e.from_state, e.to_state, e.detail)
             .where(e.study_id == study_id).order_by(e.id.desc()).limit(TIMELINE_LIMIT))
    with db.reader(engine) as conn:
        rows = list(conn.execute(query))
    return [{"at": iso_z(r.at), "kind": r.kind, "from": r.from_state, "to": r.to_state,
             "detail": r.detail} for r in reversed(rows)]


# ---------------------------------------------------------------- the studies list's filters

#: up to this many runs matching a model/triage filter, the page's query takes the matching job
#: ids from ``results`` first (``id IN (SELECT ...)``: the database may look the few jobs up by
#: id); beyond it the filter is a correlated EXISTS on ``results`` that the page's
#: newest-first walk stops asking once the page is full
RESULT_IDS_CAP = 2000

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: an AE title: 1 to 16 characters of the Default Character Repertoire, no backslash
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


class BadFilter(ValueError):
    """A filter the API cannot use; its text names the parameter and what it expects."""


@dataclass(frozen=True)
class StudyFilter:
    """What GET /api/v1/studies narrows the list to; every field combines with the others."""

    states: tuple[JobState, ...] = tuple(JobState)
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    model: str | None = None  # has a current run of this model
    triage: Triage | None = None  # has a current run with this triage level
    calling_ae: str | None = None

    @classmethod
    def parse(cls, *, state: str | None = None, since: str | None = None,
              until: str | None = None, model: str | None = None, triage: str | None = None,
              calling_ae: str | None = None) -> StudyFilter:
        """The filter from the query string's texts; BadFilter names what is wrong."""
        found = cls(states=_states(state), since=parse_time("since", since),
                    until=parse_time("until", until), model=_model(model), triage=_triage(triage),
                    calling_ae=_calling_ae(calling_ae))
        if found.since is not None and found.until is not None and found.until <= found.since:
            raise BadFilter("until: must be later than since")
        return found


def studies_page(ledger: Ledger, f: StudyFilter, *, limit: int,
                 before: int | None = None) -> list[StudyRow]:
    """One keyset page of jobs (oldest first, the newest ``limit``) that pass ``f``.

    A calling AE title pages along ``ix_studies_caller_state_received`` as a state pages along
    the state index. A model or triage filter counts its runs first (at most RESULT_IDS_CAP + 1
    index entries): a rare one becomes ``id IN`` the matching job ids, a common one an EXISTS
    that each candidate job answers through the results' unique (study_id, generation, model)
    index; either way a page reads about ``limit`` rows plus the jobs skipped on the way, not
    the whole history.
    """
    s = db.studies.c
    conditions: list[ColumnElement[bool]] = []
    if f.calling_ae is not None:
        conditions.append(s.calling_ae_title == f.calling_ae)
    if f.model is not None or f.triage is not None:
        conditions.append(_has_result(ledger.engine, f.model, f.triage))
    return ledger.page(f.states, limit=limit, since=f.since, until=f.until, before=before,
                       conditions=conditions)


def _has_result(engine: Engine, model: str | None, triage: Triage | None) -> ColumnElement[bool]:
    r = db.results.c
    where: list[ColumnElement[bool]] = [r.current == true()]
    if model is not None:
        where.append(r.model == model)
    if triage is not None:
        where.append(r.triage == triage.value)
    probe = select(func.count()).select_from(
        select(r.study_id).where(*where).limit(RESULT_IDS_CAP + 1).subquery())
    with db.reader(engine) as conn:
        found = int(conn.execute(probe).scalar_one())
    if found <= RESULT_IDS_CAP:
        return db.studies.c.id.in_(select(r.study_id).where(*where))
    return exists().where(r.study_id == db.studies.c.id, *where)


def _states(text: str | None) -> tuple[JobState, ...]:
    if not text:
        return tuple(JobState)
    try:
        return tuple(JobState(x.strip().upper()) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadFilter("state: expected job states, e.g. FAILED,DONE") from None


def parse_time(name: str, text: str | None) -> datetime | None:
    """An ISO 8601 time from a query string, as the ledger keeps it (naive UTC); BadFilter
    names the parameter when it is none."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise BadFilter(f"{name}: expected an ISO 8601 UTC time, e.g. 2026-12-01T08:00") from None
    if value.tzinfo is not None:  # the ledger keeps naive UTC
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _model(text: str | None) -> str | None:
    if text is None:
        return None
    if not _MODEL_NAME.fullmatch(text):
        raise BadFilter("model: expected a model name, e.g. lung-ct")
    return text


def _triage(text: str | None) -> Triage | None:
    if text is None:
        return None
    try:
        return Triage(text.strip().upper())
    except ValueError:
        raise BadFilter("triage: expected one of " + ", ".join(t.value for t in Triage)) from None


def _calling_ae(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip()
    if not _AE_TITLE.fullmatch(value):
        raise BadFilter("calling_ae: expected an AE title (1 to 16 characters, no backslash)")
    return value
