"""The Overview's figures, each one bounded, indexed query against the ledger.

- studies per state: one count per state along the (state, received_at, id) index;
- studies received per day over the last 30 days: a range of that index per state, grouped by
  the local calendar day in SQL (the cost follows the studies of 30 days, not the history);
- failed deliveries: a range of the outbox's (state, next_attempt_at) index;
- each destination's last success: the newest DELIVERED item of the destination, read newest
  first along that index and no further back than 30 days; its last error: the newest error of
  its items still waiting or failed (live items only: a delivered item has none).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, select

from node.core import db
from node.core.jobstate import JobState
from node.core.ledger import utcnow
from node.core.outbox import ItemState
from node.core.settings import Settings

#: the chart's span and the window a destination's last success is looked for in
DAYS = 30


@dataclass(frozen=True)
class Destination:
    name: str
    kind: str
    last_success: datetime | None
    last_error_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class Disk:
    free_bytes: int
    total_bytes: int

    @property
    def free_percent(self) -> int:
        return round(100 * self.free_bytes / self.total_bytes) if self.total_bytes else 0


def state_counts(engine: Engine) -> dict[JobState, int]:
    """Studies in each state now (every state, zeros included, in the flow's order)."""
    s = db.studies.c
    counts = dict.fromkeys(JobState, 0)
    with db.reader(engine) as conn:
        for state in JobState:
            counts[state] = int(conn.execute(
                select(func.count()).select_from(db.studies)
                .where(s.state == state.value)).scalar_one())
    return counts


def utc_offset_minutes() -> int:
    offset = datetime.now().astimezone().utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


def _local_day(engine: Engine, column: Any, minutes: int) -> ColumnElement[Any]:
    """The calendar day of a naive UTC time in the node's local zone, in SQL."""
    if engine.dialect.name == "postgresql":
        return func.date(column + timedelta(minutes=minutes))
    return func.date(column, f"{minutes:+d} minutes")


def received_per_day(engine: Engine, today: date | None = None) -> list[tuple[date, int]]:
    """(local day, studies received) for the last ``DAYS`` days up to today, oldest first."""
    minutes = utc_offset_minutes()
    local_now = utcnow() + timedelta(minutes=minutes)
    today = today or local_now.date()
    first = today - timedelta(days=DAYS - 1)
    since = datetime(first.year, first.month, first.day) - timedelta(minutes=minutes)
    s = db.studies.c
    day = _local_day(engine, s.received_at, minutes)
    query = (select(day, func.count())
             .where(s.state.in_([x.value for x in JobState]), s.received_at >= since)
             .group_by(day))
    with db.reader(engine) as conn:
        found = {_as_date(d): int(n) for d, n in conn.execute(query)}
    return [(first + timedelta(days=k), found.get(first + timedelta(days=k), 0))
            for k in range(DAYS)]


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def failed_deliveries(engine: Engine) -> int:
    o = db.outbox.c
    with db.reader(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(db.outbox)
                                .where(o.state == ItemState.FAILED.value)).scalar_one())


def destinations(settings: Settings) -> list[tuple[str, str]]:
    """(name, kind) of every configured destination, in the settings' order."""
    d = settings.delivery
    groups: Iterable[tuple[str, Iterable[Any]]] = (
        ("dicom", d.dicom), ("stow", d.stow), ("hl7", d.hl7), ("webhook", d.webhooks),
        ("email", d.email))
    return [(item.name, kind) for kind, items in groups for item in items]


def destination_status(engine: Engine, settings: Settings) -> list[Destination]:
    o = db.outbox.c
    floor = utcnow() - timedelta(days=DAYS)
    out = []
    with db.reader(engine) as conn:
        for name, kind in destinations(settings):
            success = conn.execute(
                select(o.delivered_at)
                .where(o.state == ItemState.DELIVERED.value, o.next_attempt_at >= floor,
                       o.destination == name)
                .order_by(o.next_attempt_at.desc()).limit(1)).scalar_one_or_none()
            error = conn.execute(
                select(o.updated_at, o.last_error)
                .where(o.state.in_([ItemState.PENDING.value, ItemState.FAILED.value]),
                       o.destination == name, o.last_error.is_not(None))
                .order_by(o.updated_at.desc()).limit(1)).one_or_none()
            out.append(Destination(name, kind, success, None if error is None else error[0],
                                   None if error is None else error[1]))
    return out


def disk(settings: Settings) -> Disk | None:
    try:
        usage = shutil.disk_usage(settings.var_path)
    except OSError:
        return None
    return Disk(usage.free, usage.total)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: str
    loaded: bool


def models(loaded: Mapping[str, Any], expected: Iterable[str]) -> list[ModelStatus]:
    """The models this node runs (loaded) and those it should but did not load."""
    found = [ModelStatus(name, str(m.manifest.version), True) for name, m in loaded.items()]
    missing = [ModelStatus(name, "", False) for name in sorted(set(expected) - set(loaded))]
    return sorted(found, key=lambda m: m.name) + missing
