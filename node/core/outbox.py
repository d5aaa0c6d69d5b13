"""The durable outbox: one ledger row per result object, HL7 message and alert per destination.

Rows are written in the same transaction that moves the study to BUILT, before any attempt. An
item is PENDING (due at ``next_attempt_at``), DELIVERED, FAILED (the dead letter: retried only
by an operator) or SUPERSEDED (a newer generation of the study replaced it before it left).
An item is identified by (destination, object UID): SOP Instance UIDs and HL7 control IDs are
derived from the job, so a rebuilt job finds its delivered items delivered and sends only the
rest: nothing is sent twice with different identities.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import Connection, Engine, func, or_, select, update

from node.core import db
from node.core.jobstate import JobState
from node.core.ledger import iso_z, utcnow

Outcome = Literal["delivered", "transient", "permanent"]


class Kind(StrEnum):
    """What an outbox item is and so which sender takes it (``node.pipeline.deliver.senders``)."""

    DICOM = "dicom"  # a result object, C-STORE to a PACS
    STOW = "stow"  # a result object, STOW-RS to a DICOMweb archive
    HL7 = "hl7"  # an ORU^R01 message over MLLP
    WEBHOOK = "webhook"  # an alert, JSON POST
    EMAIL = "email"  # an alert, SMTP
    REPORT_MAIL = "report-mail"  # a report's PDF e-mailed to an address a user gave, SMTP

    @property
    def is_alert(self) -> bool:
        return self in (Kind.WEBHOOK, Kind.EMAIL)


class ItemState(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True)
class NewItem:
    model: str
    kind: Kind
    destination: str
    object_uid: str
    label: str
    path: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    study_id: int
    generation: int
    model: str
    kind: Kind
    destination: str
    object_uid: str
    label: str
    path: str
    state: ItemState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "job": self.study_id, "generation": self.generation,
            "model": self.model, "kind": str(self.kind), "destination": self.destination,
            "object": self.label, "uid": self.object_uid, "state": self.state.value,
            "attempts": self.attempts, "next_attempt_at": iso_z(self.next_attempt_at),
            "last_error": self.last_error, "delivered_at": iso_z(self.delivered_at),
        }


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float
    cap_s: float
    max_attempts: int

    def delay_s(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed attempt: base, 2 base, 4 base, ... at most cap."""
        return float(min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1)))


_COLUMNS = tuple(db.outbox.c[name] for name in (
    "id", "study_id", "generation", "model", "kind", "destination", "object_uid", "label", "path",
    "state", "attempts", "next_attempt_at", "last_error", "delivered_at"))


def _item(row: Any) -> OutboxItem:
    return OutboxItem(**{**row._asdict(), "state": ItemState(row.state), "kind": Kind(row.kind)})


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ins = db.dialect_insert(engine, db.outbox)
        # A rebuilt job re-queues its items, except those already delivered.
        self._add = ins.on_conflict_do_update(
            index_elements=["destination", "object_uid"],
            set_={"state": ItemState.PENDING.value, "attempts": 0, "last_error": None,
                  "next_attempt_at": ins.excluded.next_attempt_at,
                  "updated_at": ins.excluded.updated_at, "path": ins.excluded.path,
                  "study_id": ins.excluded.study_id, "generation": ins.excluded.generation},
            where=db.outbox.c.state != ItemState.DELIVERED.value,
        )

    # ------------------------------------------------------------------ writing

    def add(self, conn: Connection, study_id: int, generation: int,
            items: Iterable[NewItem]) -> None:
        """Queue items inside the caller's transaction (the one that moves the job to BUILT)."""
        now = utcnow()
        rows = [{"study_id": study_id, "generation": generation, "model": i.model,
                 "kind": str(i.kind), "destination": i.destination, "object_uid": i.object_uid,
                 "label": i.label, "path": i.path, "state": ItemState.PENDING.value,
                 "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now}
                for i in items]
        if rows:
            conn.execute(self._add, rows)
        conn.execute(
            update(db.outbox)
            .where(db.outbox.c.study_id == study_id, db.outbox.c.generation < generation,
                   db.outbox.c.state == ItemState.PENDING.value)
            .values(state=ItemState.SUPERSEDED.value, updated_at=now,
                    last_error=f"superseded by generation {generation}")
        )

    def record(self, item: OutboxItem, outcome: Outcome, detail: str,
               policy: RetryPolicy) -> ItemState:
        """Record one attempt's outcome; return the item's new state."""
        now = utcnow()
        attempts = item.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "updated_at": now}
        if outcome == "delivered":
            values.update(state=ItemState.DELIVERED.value, delivered_at=now, last_error=None)
        elif outcome == "transient" and attempts < policy.max_attempts:
            values.update(state=ItemState.PENDING.value, last_error=detail,
                          next_attempt_at=now + timedelta(seconds=policy.delay_s(attempts)))
        else:
            gave_up = "" if outcome == "permanent" else f" (gave up after {attempts} attempts)"
            values.update(state=ItemState.FAILED.value, last_error=detail + gave_up)
        with self.engine.begin() as conn:
            conn.execute(update(db.outbox).where(db.outbox.c.id == item.id).values(**values))
        return ItemState(values["state"])

    def requeue_failed(self, study_ids: Iterable[int] | None = None,
                       item_ids: Iterable[int] | None = None) -> int:
        """Operator's retry: FAILED items (of ``study_ids``, or only ``item_ids``) become
        PENDING with a fresh attempt count."""
        now = utcnow()
        stmt = (update(db.outbox).where(db.outbox.c.state == ItemState.FAILED.value)
                .values(state=ItemState.PENDING.value, attempts=0, next_attempt_at=now,
                        updated_at=now))
        if study_ids is not None:
            stmt = stmt.where(db.outbox.c.study_id.in_(list(study_ids)))
        if item_ids is not None:
            stmt = stmt.where(db.outbox.c.id.in_(list(item_ids)))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    # ------------------------------------------------------------------ reading

    def items(self, study_id: int | None = None, generation: int | None = None,
              state: ItemState | None = None) -> list[OutboxItem]:
        query = select(*_COLUMNS).order_by(db.outbox.c.id)
        if study_id is not None:
            query = query.where(db.outbox.c.study_id == study_id)
        if generation is not None:
            query = query.where(db.outbox.c.generation == generation)
        if state is not None:
            query = query.where(db.outbox.c.state == state.value)
        with db.reader(self.engine) as conn:
            return [_item(r) for r in conn.execute(query)]

    def late_due(self, now: datetime | None = None) -> list[OutboxItem]:
        """Due items of a job's current generation that no job state waits for: every report
        e-mail, and what was queued for a job after it was DONE (a report version made by a
        doctor's note). Reads the pending items only (``ix_outbox_due``), never the history."""
        o, s = db.outbox.c, db.studies.c
        query = (select(*_COLUMNS).join(db.studies, s.id == o.study_id)
                 .where(o.state == ItemState.PENDING.value, o.next_attempt_at <= (now or utcnow()),
                        o.generation == s.generation,
                        or_(o.kind == Kind.REPORT_MAIL.value, s.state == JobState.DONE.value))
                 .order_by(o.id))
        with db.reader(self.engine) as conn:
            return [_item(r) for r in conn.execute(query)]

    def counts(self, study_ids: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
        """Items per state for each job (study id), current and older generations together.

        With ``study_ids``, only those jobs' items (through the index on study_id).
        """
        out: dict[int, dict[str, int]] = {}
        query = (select(db.outbox.c.study_id, db.outbox.c.state, func.count())
                 .group_by(db.outbox.c.study_id, db.outbox.c.state))
        if study_ids is not None:
            query = query.where(db.outbox.c.study_id.in_(list(study_ids)))
        with db.reader(self.engine) as conn:
            rows = conn.execute(query)
            for study_id, state, count in rows:
                out.setdefault(int(study_id), {})[str(state)] = int(count)
        return out


def is_due(item: OutboxItem, now: datetime | None = None) -> bool:
    return item.state == ItemState.PENDING and item.next_attempt_at <= (now or utcnow())
