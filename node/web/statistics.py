"""GET /api/v1/statistics: the node's work in numbers, for every logged-in role.

Studies and instances per day (the last ``days``) and per ISO week (the last ``weeks``), by the
day the study was first received, its instances counted with it; jobs per state now; current
model runs per model and triage level created in the day window; and the median and 95th
percentile of the seconds from completion to a move into REPORTED, for the moves in the day
window (a job reopened and reported again counts once per report). Days are UTC days, as the
ledger keeps time.

Everything is read from the rollup the ledger keeps in the transaction of each change
(node.core.rollup): one range of ``daily_counts``' primary key per metric (days x keys
rows), the ``state_counts`` rows and the instance counts of the studies still receiving
(live jobs, through the state index), so the answer costs the same with a thousand studies
in the history as with a million (bench/api.py). The median and p95 come from the rollup's
histogram: within 2.2 % of the exact value above one second (``rollup.RELATIVE_ERROR``).
Counts carry no patient data: the route is open to every role.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Engine

from node.core import db, rollup
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
    first = min(first_day, first_week)
    with db.reader(engine) as conn:
        received: dict[date, dict[str, int]] = {}
        for metric in (rollup.STUDIES, rollup.INSTANCES):
            for (day, _), n in rollup.daily(conn, metric, first).items():
                received.setdefault(day, _zero())[metric] += n
        for day, n in rollup.receiving_instances(conn, first).items():
            received.setdefault(day, _zero())[rollup.INSTANCES] += n
        runs = _runs(rollup.totals(conn, rollup.RUNS, first_day))
        reported = rollup.totals(conn, rollup.REPORTED_S, first_day)
        states = rollup.states(conn)
    return {
        "window": {"days": days, "from": iso_z(day_start), "weeks": weeks,
                   "weeks_from": first_week.isoformat(), "until": iso_z(now)},
        "per_day": [{"date": d.isoformat(), **received.get(d, _zero())}
                    for d in (first_day + timedelta(days=i) for i in range(days))],
        "per_week": _per_week(received, first_week, weeks),
        "states": {state.value: states.get(state.value, 0) for state in JobState},
        "models": [{"model": model, "runs": sum(levels.values()), "triage": levels}
                   for model, levels in sorted(runs.items())],
        "triage": _triage_totals(runs),
        "completion_to_reported_s": _report_times(reported),
    }


def _zero() -> dict[str, int]:
    return {rollup.STUDIES: 0, rollup.INSTANCES: 0}


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


def _runs(per_key: dict[str, int]) -> dict[str, dict[str, int]]:
    """model -> triage level -> current runs, from the rollup's "model/level" counts."""
    out: dict[str, dict[str, int]] = {}
    for key, n in per_key.items():
        model, level = rollup.split_run_key(key)
        levels = out.setdefault(model, {})
        levels[level] = levels.get(level, 0) + n
    return out


def _triage_totals(runs: dict[str, dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for levels in runs.values():
        for level, n in levels.items():
            totals[level] = totals.get(level, 0) + n
    return dict(sorted(totals.items()))


def _report_times(per_bucket: dict[str, int]) -> dict[str, Any]:
    """Median and p95 (nearest rank) of the seconds from completion to REPORTED, read from
    the histogram summed over the window's days."""
    histogram = {int(key): n for key, n in per_bucket.items()}
    moves, median, p95 = rollup.quantiles(histogram)
    if median is None or p95 is None:
        return {"jobs": 0, "median": None, "p95": None}
    return {"jobs": moves, "median": round(median, 3), "p95": round(p95, 3)}
