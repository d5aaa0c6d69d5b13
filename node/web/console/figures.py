"""The Overview's figures beyond the statistics route's (``node.web.statistics``, which reads
the ledger's rollup), each one a bounded, indexed read:

- failed deliveries: a range of the outbox's (state, next_attempt_at) index;
- each destination's last success: the newest DELIVERED item among the newest deliveries
  (a bounded walk of that index), looked for further back (30 days at most) only for a
  destination that has items but none among them; its last error: the newest error of its
  items still waiting or failed (live items only: a delivered item has none).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from node.core import db
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


def utc_offset_minutes() -> int:
    offset = datetime.now().astimezone().utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


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


#: the newest delivered items a destination's last success is first looked for among
RECENT_DELIVERIES = 2000
#: waiting or failed items with an error read for the destinations' last errors
LIVE_ERRORS = 10_000


def destination_status(engine: Engine, settings: Settings) -> list[Destination]:
    """Each configured destination's last success and last error, in three bounded reads:
    the newest ``RECENT_DELIVERIES`` delivered items (one walk of the state index for all
    destinations); for a destination not among them that has any item at all (the
    destination's own index), its newest delivered item no older than ``DAYS``; and the
    errors of live items (waiting or failed: the state index, not the history)."""
    o = db.outbox.c
    delivered = ItemState.DELIVERED.value
    recent = (select(o.destination, o.delivered_at).where(o.state == delivered)
              .order_by(o.next_attempt_at.desc()).limit(RECENT_DELIVERIES).subquery())
    errors = (select(o.destination, o.updated_at, o.last_error)
              .where(o.state.in_([ItemState.PENDING.value, ItemState.FAILED.value]),
                     o.last_error.is_not(None))
              .order_by(o.updated_at.desc()).limit(LIVE_ERRORS))
    with db.reader(engine) as conn:
        success: dict[str, datetime] = dict(conn.execute(
            select(recent.c.destination, func.max(recent.c.delivered_at))
            .group_by(recent.c.destination)).all())
        last_error: dict[str, tuple[datetime, str]] = {}
        for name, at, error in conn.execute(errors):
            last_error.setdefault(name, (at, error))
        configured = destinations(settings)
        for name, _kind in configured:
            if name not in success:
                found = _older_success(conn, name)
                if found is not None:
                    success[name] = found
    return [Destination(name, kind, success.get(name),
                        last_error[name][0] if name in last_error else None,
                        last_error[name][1] if name in last_error else None)
            for name, kind in configured]


def _older_success(conn: Connection, name: str) -> datetime | None:
    o = db.outbox.c
    if conn.execute(select(o.id).where(o.destination == name).limit(1)).first() is None:
        return None  # nothing was ever queued for it
    floor = utcnow() - timedelta(days=DAYS)
    value = conn.execute(
        select(o.delivered_at)
        .where(o.state == ItemState.DELIVERED.value, o.next_attempt_at >= floor,
               o.destination == name)
        .order_by(o.next_attempt_at.desc()).limit(1)).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


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
