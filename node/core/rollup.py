"""Running totals of the ledger's history, so that the statistics cost the same at any age.

``daily_counts`` holds one number per (metric, UTC day, key), ``state_counts`` the jobs in each
state now. Both are changed in the transaction that makes the change they count (the receive
path, :meth:`Ledger.transition`, the results of the infer stage), through a :class:`Tally`:
the deltas of one transaction, written at its end as upserts (``count = count + delta``) in one
fixed order (metric, day, key; then state), so that two transactions never wait on each other
in a cycle on PostgreSQL.

The metrics:

* ``studies``: studies first received that day (key "");
* ``instances``: the instances of the studies first received that day, as the statistics have
  always shown them, except those of the studies receiving now: a study's instances are
  added when it leaves RECEIVING and taken off when it is reopened, so the receive path's
  common case (one more instance of a receiving study) writes nothing here; the statistics
  add the receiving studies' own counts (:func:`receiving_instances`: a few live jobs,
  through the state index). A late instance kept by a study that stays where it is counts
  at once; a duplicate counts nothing;
* ``entered``: moves into a state that day (key: the state; a new study enters RECEIVING);
* ``runs``: current model runs created that day (key: ``model/triage``; a run superseded by a
  newer generation, or replaced by a re-run, is taken off the day it was created);
* ``reported_s``: moves into REPORTED that day by the seconds since the job's completion then
  (key: the bucket, :func:`bucket`). A reopened job reported again counts again.

The seconds go into fixed log-spaced buckets, 16 to a doubling: bucket 0 holds [0, 1) s,
bucket ``i`` >= 1 holds [2**((i-1)/16), 2**(i/16)) s. A quantile read from them is the
bucket's geometric middle, so it is within 2.2 % of the true value (2**(1/32) - 1) above one
second, and within 0.5 s below it. A month of seconds fits in under 400 buckets.

:func:`recount` computes the same numbers from the raw rows (the migration's back-fill, and the
tests' check that the running totals never drift); :func:`rebuild` writes them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, true

from node.core import db

STUDIES, INSTANCES, ENTERED, RUNS, REPORTED_S = (
    "studies", "instances", "entered", "runs", "reported_s")
#: buckets per doubling of the completion-to-REPORTED seconds
STEPS = 16
#: the largest relative error of a quantile above one second: half a bucket, geometrically
RELATIVE_ERROR = 2 ** (1 / (2 * STEPS)) - 1

Daily = Counter[tuple[str, date, str]]


def bucket(seconds: float) -> int:
    """The histogram bucket of ``seconds`` (negative counts as 0)."""
    if seconds < 1:
        return 0
    return 1 + math.floor(math.log2(seconds) * STEPS)


def middle(index: int) -> float:
    """The value a quantile in bucket ``index`` is read as: its geometric middle."""
    return 0.5 if index == 0 else 2 ** ((index - 0.5) / STEPS)


def run_key(model: str, triage: str | None) -> str:
    """The ``runs`` key: a model's name is its folder's, so it holds no '/'."""
    return f"{model}/{triage}"


def split_run_key(key: str) -> tuple[str, str]:
    model, _, triage = key.partition("/")
    return model, triage


class Tally:
    """The rollup's deltas of one transaction; :meth:`write` adds them in that transaction."""

    def __init__(self) -> None:
        self.daily: Daily = Counter()
        self.states: Counter[str] = Counter()

    def add(self, metric: str, day: date, key: str = "", n: int = 1) -> None:
        self.daily[metric, day, key] += n

    def move(self, day: date, before: str | None, after: str) -> None:
        """A job entered ``after`` (from ``before``; None: a new job)."""
        self.add(ENTERED, day, after)
        if before is not None:
            self.states[before] -= 1
        self.states[after] += 1

    def reported(self, day: date, completed: datetime | None, at: datetime) -> None:
        """A move into REPORTED at ``at`` of a job completed at ``completed``."""
        if completed is not None and at >= completed:
            self.add(REPORTED_S, day, str(bucket((at - completed).total_seconds())))

    def write(self, conn: Connection) -> None:
        if not (self.daily or self.states):
            return
        daily = [{"metric": m, "day": d, "key": k, "n": n}
                 for (m, d, k), n in sorted(self.daily.items()) if n]
        states = [{"state": s, "n": n} for s, n in sorted(self.states.items()) if n]
        daily_upsert, state_upsert = _upserts(conn)
        if daily:
            conn.execute(daily_upsert, daily)
        if states:
            conn.execute(state_upsert, states)


_UPSERTS: dict[str, tuple[Any, Any]] = {}


def _upserts(conn: Connection) -> tuple[Any, Any]:
    """The two upserts for this dialect, built once (building one costs more than running it)."""
    name = conn.dialect.name
    if name not in _UPSERTS:
        made = []
        for table, keys in ((db.daily_counts, ["metric", "day", "key"]),
                            (db.state_counts, ["state"])):
            ins = db.dialect_insert(conn.engine, table)
            made.append(ins.on_conflict_do_update(
                index_elements=keys, set_={"n": table.c.n + ins.excluded.n}))
        _UPSERTS[name] = (made[0], made[1])
    return _UPSERTS[name]


# ---------------------------------------------------------------- reading

def daily(conn: Connection, metric: str, first: date) -> dict[tuple[date, str], int]:
    """(day, key) -> count of ``metric`` from ``first`` on: a range of the primary key."""
    c = db.daily_counts.c
    query = select(c.day, c.key, c.n).where(c.metric == metric, c.day >= first)
    return {(_as_date(d), str(k)): int(n) for d, k, n in conn.execute(query) if n}


def totals(conn: Connection, metric: str, first: date) -> dict[str, int]:
    """key -> count of ``metric`` from ``first`` on, summed over the days in the database."""
    c = db.daily_counts.c
    query = (select(c.key, func.sum(c.n)).where(c.metric == metric, c.day >= first)
             .group_by(c.key))
    return {str(k): int(n) for k, n in conn.execute(query) if n}


def receiving_instances(conn: Connection, first: date) -> dict[date, int]:
    """day -> instances of the studies received that day that are receiving now: what the
    ``instances`` metric leaves to them. Read through the state index: live jobs only."""
    s = db.studies.c
    start = datetime.combine(first, datetime.min.time())
    query = select(s.received_at, s.instances).where(s.state == "RECEIVING",
                                                     s.received_at >= start)
    out: dict[date, int] = {}
    for received_at, n in conn.execute(query):
        out[received_at.date()] = out.get(received_at.date(), 0) + int(n)
    return out


def states(conn: Connection) -> dict[str, int]:
    c = db.state_counts.c
    return {str(s): int(n) for s, n in conn.execute(select(c.state, c.n))}


def quantiles(histogram: Mapping[int, int]) -> tuple[int, float | None, float | None]:
    """(count, median, p95 by nearest rank) read from bucket -> count."""
    total = sum(histogram.values())
    if total <= 0:
        return 0, None, None

    def at_rank(rank: int) -> float:
        seen = 0
        for index in sorted(histogram):
            seen += histogram[index]
            if seen >= rank:
                return middle(index)
        raise AssertionError("rank beyond the histogram")  # pragma: no cover

    half = total // 2
    median = at_rank(half + 1) if total % 2 else (at_rank(half) + at_rank(half + 1)) / 2
    return total, median, at_rank(math.ceil(0.95 * total))


def _as_date(value: Any) -> date:
    """SQLite gives date() and DATE columns back as text, PostgreSQL as dates."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


# ---------------------------------------------------------------- from the raw rows

def recount(conn: Connection) -> tuple[Daily, Counter[str]]:
    """The rollup computed from the raw rows: one pass over studies, events and results.

    Reads only columns the ledger has had since r0005, so the migration that introduced the
    rollup can call it. The completion a move into REPORTED is measured from is the job's last
    move into COMPLETE before it (that is when ``completed_at`` was set)."""
    out: Daily = Counter()
    s, e, r = db.studies.c, db.events.c, db.results.c
    received = func.date(s.received_at)
    settled = case((s.state == "RECEIVING", 0), else_=s.instances)
    for d, n, k in conn.execute(select(received, func.count(), func.sum(settled))
                                .group_by(received)):
        out[STUDIES, _as_date(d), ""] += int(n)
        out[INSTANCES, _as_date(d), ""] += int(k or 0)
        out[ENTERED, _as_date(d), "RECEIVING"] += int(n)
    moved = func.date(e.at)
    for d, state, n in conn.execute(select(moved, e.to_state, func.count())
                                    .where(e.to_state.is_not(None)).group_by(moved, e.to_state)):
        out[ENTERED, _as_date(d), str(state)] += int(n)
    created = func.date(r.created_at)
    for d, model, triage, n in conn.execute(
            select(created, r.model, r.triage, func.count()).where(r.current == true())
            .group_by(created, r.model, r.triage)):
        out[RUNS, _as_date(d), run_key(str(model), triage)] += int(n)
    for at, completed in conn.execute(_reported_moves()):
        if completed is not None:
            seconds = (at - _as_datetime(completed)).total_seconds()
            out[REPORTED_S, at.date(), str(bucket(seconds))] += 1
    counts: Counter[str] = Counter()
    for state, n in conn.execute(select(s.state, func.count()).group_by(s.state)):
        counts[str(state)] = int(n)
    return out, counts


def _reported_moves() -> Any:
    """(at, completion before it) of every move into REPORTED."""
    e = db.events.c
    done = db.events.alias("done")
    completion = (select(func.max(done.c.at))
                  .where(and_(done.c.study_id == e.study_id, done.c.to_state == "COMPLETE",
                              done.c.at <= e.at))
                  .scalar_subquery())
    return select(e.at, completion).where(e.to_state == "REPORTED")


def _as_datetime(value: Any) -> datetime:
    """max() over a DateTime column: SQLite gives the text back, PostgreSQL a datetime."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def rebuild(conn: Connection) -> None:
    """Replace the rollup with :func:`recount` of the raw rows (the migration's back-fill)."""
    daily_rows, state_rows = recount(conn)
    conn.execute(db.daily_counts.delete())
    conn.execute(db.state_counts.delete())
    tally = Tally()
    tally.daily, tally.states = daily_rows, state_rows
    tally.write(conn)


def stored(conn: Connection) -> tuple[Daily, Counter[str]]:
    """The rollup as stored, zeros left out: what :func:`recount` is compared with."""
    c = db.daily_counts.c
    out: Daily = Counter()
    for m, d, k, n in conn.execute(select(c.metric, c.day, c.key, c.n)):
        if n:
            out[str(m), _as_date(d), str(k)] = int(n)
    return out, Counter({s: n for s, n in states(conn).items() if n})
