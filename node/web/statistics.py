"""GET /api/v1/statistics: the node's work in numbers, for every logged-in role.

Studies and instances per day (the last ``days``) and per ISO week (the last ``weeks``), by the
day the study was first received, its instances counted with it; jobs per state now; current
model runs per model and triage level in the day window; and the median and 95th percentile of
the time from completion (``studies.completed_at``) to the move into REPORTED (the events),
for the jobs reported in the day window. Days are UTC days, as the ledger keeps time.

Each number is one indexed query: the window of ``ix_studies_received``, the state index read
whole (one entry per job), ``ix_results_created`` and ``ix_events_to_state_at`` for the
window; at 100,000 studies the whole answer costs tens of milliseconds (bench/api.py), so no
running totals are kept. Counts carry no patient data: the route is open to every role.
"""

from __future__ import annotations

import math
import statistics as stats
from datetime import date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Engine, func, select, true

from node.core import db
from node.core.jobstate import JobState
from node.core.ledger import iso_z, utcnow
from node.web.access import EVERYONE, route
from node.web.context import WebContext
from node.web.deps import context

router = APIRouter(prefix="/api/v1")
_CTX = Depends(context)


@route(router, "GET", "/statistics", EVERYONE)
def statistics(days: int = Query(30, ge=1, le=366), weeks: int = Query(12, ge=1, le=106),
               ctx: WebContext = _CTX) -> dict[str, Any]:
    """Studies and instances per day and ISO week, jobs per state, runs per model and triage,
    median and p95 seconds from completion to REPORTED."""
    return summarize(ctx.ledger.engine, utcnow(), days=days, weeks=weeks)


def summarize(engine: Engine, now: datetime, *, days: int = 30,
              weeks: int = 12) -> dict[str, Any]:
    """The statistics as of ``now`` (naive UTC)."""
    today = now.date()
    first_day = today - timedelta(days=days - 1)
    first_week = today - timedelta(days=today.weekday(), weeks=weeks - 1)  # a Monday
    day_start = datetime.combine(first_day, datetime.min.time())
    received = _received_per_day(engine, datetime.combine(min(first_day, first_week),
                                                          datetime.min.time()))
    runs = _runs(engine, day_start)
    return {
        "window": {"days": days, "from": iso_z(day_start), "weeks": weeks,
                   "weeks_from": first_week.isoformat(), "until": iso_z(now)},
        "per_day": [{"date": d.isoformat(), **received.get(d, _zero())}
                    for d in (first_day + timedelta(days=i) for i in range(days))],
        "per_week": _per_week(received, first_week, weeks),
        "states": _states(engine),
        "models": [{"model": model, "runs": sum(levels.values()), "triage": levels}
                   for model, levels in sorted(runs.items())],
        "triage": _triage_totals(runs),
        "completion_to_reported_s": _report_times(engine, day_start),
    }


def _zero() -> dict[str, int]:
    return {"studies": 0, "instances": 0}


def _received_per_day(engine: Engine, start: datetime) -> dict[date, dict[str, int]]:
    s = db.studies.c
    day = func.date(s.received_at)
    query = (select(day, func.count(), func.sum(s.instances))
             .where(s.received_at >= start).group_by(day))
    with db.reader(engine) as conn:
        return {date.fromisoformat(str(d)[:10]): {"studies": int(n), "instances": int(k or 0)}
                for d, n, k in conn.execute(query)}


def _per_week(received: dict[date, dict[str, int]], first: date,
              weeks: int) -> list[dict[str, Any]]:
    out = []
    for w in range(weeks):
        monday = first + timedelta(weeks=w)
        total = _zero()
        for d in (monday + timedelta(days=i) for i in range(7)):
            for key, value in received.get(d, {}).items():
                total[key] += value
        year, week, _ = monday.isocalendar()
        out.append({"week": f"{year}-W{week:02d}", "from": monday.isoformat(), **total})
    return out


def _states(engine: Engine) -> dict[str, int]:
    s = db.studies.c
    with db.reader(engine) as conn:
        found = {str(state): int(n) for state, n in
                 conn.execute(select(s.state, func.count()).group_by(s.state))}
    return {state.value: found.get(state.value, 0) for state in JobState}


def _runs(engine: Engine, start: datetime) -> dict[str, dict[str, int]]:
    """model -> triage level -> current runs created since ``start``."""
    r = db.results.c
    query = (select(r.model, r.triage, func.count())
             .where(r.created_at >= start, r.current == true()).group_by(r.model, r.triage))
    out: dict[str, dict[str, int]] = {}
    with db.reader(engine) as conn:
        for model, triage, n in conn.execute(query):
            out.setdefault(str(model), {})[str(triage)] = int(n)
    return out


def _triage_totals(runs: dict[str, dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for levels in runs.values():
        for level, n in levels.items():
            totals[level] = totals.get(level, 0) + n
    return dict(sorted(totals.items()))


def _report_times(engine: Engine, start: datetime) -> dict[str, Any]:
    """Seconds from completion to REPORTED of the jobs reported since ``start``: a job's move
    into REPORTED before its last completion (an earlier generation) does not count."""
    e, s = db.events.c, db.studies.c
    query = (select(db.seconds_between(engine, s.completed_at, e.at))
             .select_from(db.events.join(db.studies, s.id == e.study_id))
             .where(e.to_state == JobState.REPORTED.value, e.at >= start,
                    s.completed_at.is_not(None), e.at >= s.completed_at))
    with db.reader(engine) as conn:
        took = sorted(float(v) for v in conn.execute(query).scalars())
    if not took:
        return {"jobs": 0, "median": None, "p95": None}
    return {"jobs": len(took), "median": round(stats.median(took), 3),
            "p95": round(took[math.ceil(0.95 * len(took)) - 1], 3)}
