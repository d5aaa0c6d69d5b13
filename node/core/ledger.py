"""The ledger: every received instance, every study job and its state, every state change.

All reads and writes of the node's tables go through here. State changes go through
:meth:`Ledger.transition`, which checks the transition table and writes an audit event in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    literal,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from node.core import db, rollup
from node.core.errors import LedgerUnavailable, UnknownStudy
from node.core.jobstate import FORCE_COMPLETABLE, JobState, check_transition, is_reopenable
from node.core.settings import Settings


def utcnow() -> datetime:
    """Naive UTC, as stored in the ledger."""
    return datetime.now(UTC).replace(tzinfo=None)


#: jobs that are over: ``status`` shows the newest of them, page by page, and every live one
FINISHED = (JobState.DONE, JobState.DISCARDED)
LIVE = tuple(state for state in JobState if state not in FINISHED)


@dataclass(frozen=True)
class ReceivedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    matched_rules: tuple[str, ...]
    size_bytes: int
    calling_ae_title: str


class StoreOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REOPENED = "reopened"


@dataclass(frozen=True)
class StudyRow:
    id: int
    study_instance_uid: str
    state: JobState
    generation: int
    instances: int
    duplicates: int
    received_at: datetime
    opened_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    completion_reason: str | None
    state_reason: str | None
    calling_ae_title: str | None
    #: when an association of a whole-study sender that delivered instances of the study was
    #: released (A-RELEASE) while the study was receiving; None: no such release
    released_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "state": self.state.value,
            "instances": self.instances,
            "duplicates": self.duplicates,
            "generation": self.generation,
            "received_at": iso_z(self.received_at),
            "last_received_at": iso_z(self.last_received_at),
            "completed_at": iso_z(self.completed_at),
            "completion_reason": self.completion_reason,
            "state_reason": self.state_reason,
            "calling_ae_title": self.calling_ae_title,
        }


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    received_at: datetime
    reason: str
    path: str
    size_bytes: int
    calling_ae_title: str | None
    #: the request's Affected SOP Class and Instance UIDs, where the object had them
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": iso_z(self.received_at),
            "reason": self.reason,
            "file": self.path,
            "size_bytes": self.size_bytes,
            "calling_ae_title": self.calling_ae_title,
        }


@dataclass(frozen=True)
class ResultRecord:
    """One model run of a job's generation as the ``results`` table keeps it: what the API
    filters and counts by. ``folder`` is the run's result folder, relative to var_dir."""

    model: str
    model_version: str
    triage: str | None
    finding: str | None
    folder: str


def record_results(conn: Connection, study_id: int, generation: int,
                   runs: Iterable[ResultRecord]) -> None:
    """The job's runs of ``generation``, in the caller's transaction (the one that moves the
    job to INFERRED, so an INFERRED job always has its rows). They replace that generation's
    rows of an earlier run (an operator's retry runs inference again); older generations'
    rows stay, no longer current. The rollup's runs per day follow the current rows."""
    r = db.results.c
    now = utcnow()
    runs = list(runs)
    rows = [{"study_id": study_id, "generation": generation, "model": run.model,
             "model_version": run.model_version, "triage": run.triage, "finding": run.finding,
             "current": True, "created_at": now, "folder": run.folder} for run in runs]
    leaving = r.generation <= generation if rows else r.generation == generation
    tally = rollup.Tally()
    for created, model, triage in conn.execute(
            select(r.created_at, r.model, r.triage)
            .where(r.study_id == study_id, r.current == true(), leaving)):
        tally.add(rollup.RUNS, created.date(), rollup.run_key(model, triage), -1)
    for run in runs:
        tally.add(rollup.RUNS, now.date(), rollup.run_key(run.model, run.triage))
    conn.execute(db.results.delete().where(r.study_id == study_id, r.generation == generation))
    tally.write(conn)
    if rows:
        conn.execute(update(db.results).where(r.study_id == study_id, r.generation < generation)
                     .values(current=False))
        conn.execute(db.results.insert(), rows)


def iso_z(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


class Ledger:
    def __init__(self, engine: Engine, *, late_arrival: str = "reopen") -> None:
        self.engine = engine
        self._late_arrival = late_arrival
        # The receive path's statements are built once and executed with plain parameter
        # dicts: building them per call (.values(...)) cost more than the SQL itself.
        # The study's instance count is raised with the upsert (the common case: a new
        # instance) and lowered again with the duplicate count when the instance was already
        # there, so keeping it costs no statement of its own on the receive path.
        s = db.studies.c
        ins = db.dialect_insert(engine, db.studies)
        self._upsert_study = ins.on_conflict_do_update(
            index_elements=[s.study_instance_uid],
            set_={"last_received_at": ins.excluded.last_received_at,
                  "updated_at": ins.excluded.updated_at, "instances": s.instances + 1},
        ).returning(s.id, s.state, s.generation, s.instances,
                    # a study the upsert made: no DateTime parsed back on the common path
                    (s.received_at == s.last_received_at).label("made"))
        self._insert_instance = db.insert_ignoring_conflicts(
            engine, db.instances, "sop_instance_uid"
        )
        self._count_duplicate = (
            update(db.studies)
            .where(s.id == bindparam("study_id"))
            .values(duplicates=s.duplicates + 1, instances=s.instances - 1)
        )

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise LedgerUnavailable(
                f"ledger write failed ({exc.orig.__class__.__name__})"
            ) from exc

    # ---------------------------------------------------------------- receiving

    def record_instance(
        self, inst: ReceivedInstance, relative_path: str, place: Callable[[], None]
    ) -> StoreOutcome:
        """Record an instance; ``place`` puts its file in the spool inside the transaction.

        The row is committed only after ``place`` returned, so a committed row always has its
        file. A SOP Instance UID already in the ledger is a duplicate: nothing is written. The
        common case is two statements: an upsert of the study and an insert of the instance.
        """
        now = utcnow()
        try:
            with self._tx() as conn:
                return self._record(conn, inst, relative_path, place, now)
        except IntegrityError:
            # Another association committed the same instance between our insert and commit.
            return StoreOutcome.DUPLICATE

    def _record(
        self,
        conn: Connection,
        inst: ReceivedInstance,
        relative_path: str,
        place: Callable[[], None],
        now: datetime,
    ) -> StoreOutcome:
        s = db.studies.c
        study = conn.execute(
            self._upsert_study,
            {
                "study_instance_uid": inst.study_instance_uid,
                "state": JobState.RECEIVING.value,
                "generation": 1,
                "duplicates": 0,
                "instances": 1,
                "received_at": now,
                "opened_at": now,
                "last_received_at": now,
                "calling_ae_title": inst.calling_ae_title,
                "updated_at": now,
            },
        ).one()
        result = conn.execute(
            self._insert_instance,
            {
                "sop_instance_uid": inst.sop_instance_uid,
                "study_id": study.id,
                "series_instance_uid": inst.series_instance_uid,
                "sop_class_uid": inst.sop_class_uid,
                "transfer_syntax_uid": inst.transfer_syntax_uid,
                "modality": inst.modality,
                "matched_rules": ",".join(inst.matched_rules),
                "path": relative_path,
                "size_bytes": inst.size_bytes,
                "calling_ae_title": inst.calling_ae_title,
                "received_at": now,
            },
        )
        # the rollup (node.core.rollup): a study the upsert made (its receipt is this call's
        # time). A receiving study's instances are counted when it leaves RECEIVING, so the
        # common case (an instance of a receiving study) writes nothing to it.
        tally = rollup.Tally()
        if study.made:
            tally.add(rollup.STUDIES, now.date())
            tally.move(now.date(), None, JobState.RECEIVING.value)
        if result.rowcount == 0:
            conn.execute(self._count_duplicate, {"study_id": study.id})
            tally.write(conn)
            return StoreOutcome.DUPLICATE
        place()
        state = JobState(study.state)
        if not (is_reopenable(state) and self._late_arrival == "reopen"):
            if state != JobState.RECEIVING:  # kept where it is: counted now
                tally.add(rollup.INSTANCES, self._received_day(conn, study.id))
            tally.write(conn)
            return StoreOutcome.STORED
        check_transition(state, JobState.RECEIVING)
        generation = study.generation + 1
        conn.execute(
            update(db.studies)
            .where(s.id == study.id)
            .values(state=JobState.RECEIVING.value, generation=generation, opened_at=now)
        )
        self._event(conn, study.id, "reopened", state, JobState.RECEIVING, now,
                    f"late instance; generation {generation}")
        tally.move(now.date(), state.value, JobState.RECEIVING.value)
        tally.add(rollup.INSTANCES, self._received_day(conn, study.id), n=1 - study.instances)
        tally.write(conn)
        return StoreOutcome.REOPENED

    def mark_released(self, study_uids: Iterable[str]) -> int:
        """An association of a whole-study sender that delivered instances of ``study_uids`` was
        released: note the time on those of them still RECEIVING (committed when this returns,
        before anything acts on it); return how many were marked."""
        uids = sorted(set(study_uids))
        if not uids:
            return 0
        s = db.studies.c
        with self._tx() as conn:
            result = conn.execute(
                update(db.studies)
                .where(s.study_instance_uid.in_(uids), s.state == JobState.RECEIVING.value)
                .values(released_at=utcnow()))
            return int(result.rowcount)

    @staticmethod
    def _received_day(conn: Connection, study_id: int) -> date:
        s = db.studies.c
        received: datetime = conn.execute(
            select(s.received_at).where(s.id == study_id)).scalar_one()
        return received.date()

    def record_quarantine(
        self,
        *,
        reason: str,
        path: str,
        size_bytes: int,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        calling_ae_title: str | None,
        peer_address: str | None,
    ) -> int:
        with self._tx() as conn:
            result = conn.execute(
                db.quarantine.insert().values(
                    received_at=utcnow(),
                    reason=reason,
                    path=path,
                    size_bytes=size_bytes,
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop_instance_uid,
                    calling_ae_title=calling_ae_title,
                    peer_address=peer_address,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    # ---------------------------------------------------------------- state

    def transition(
        self, study_id: int, target: JobState, *, reason: str, expect: JobState | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Move a job to ``target``. Returns False if its state changed under us (``expect``).

        ``also`` runs in the same transaction (e.g. queueing the job's outbox items), so both
        are committed together or not at all, and the rollup's counts (node.core.rollup) after
        it: the move, and the seconds from completion of a move into REPORTED.
        """
        now = utcnow()
        s = db.studies.c
        with self._tx() as conn:
            current, completed_at, instances, received_at = conn.execute(
                select(s.state, s.completed_at, s.instances, s.received_at)
                .where(s.id == study_id).with_for_update()
            ).one()
            state = JobState(current)
            if expect is not None and state != expect:
                return False
            check_transition(state, target)
            values: dict[str, Any] = {
                "state": target.value, "updated_at": now, "state_reason": reason,
            }
            if target == JobState.COMPLETE:
                values.update(completed_at=now, completion_reason=reason)
            conn.execute(update(db.studies).where(db.studies.c.id == study_id).values(**values))
            self._event(conn, study_id, "transition", state, target, now, reason)
            if also is not None:
                also(conn)
            tally = rollup.Tally()
            tally.move(now.date(), state.value, target.value)
            if JobState.RECEIVING in (state, target):  # its instances counted, or no more
                sign = -1 if target == JobState.RECEIVING else 1
                tally.add(rollup.INSTANCES, received_at.date(), n=sign * instances)
            if target == JobState.REPORTED:
                tally.reported(now.date(), completed_at, now)
            tally.write(conn)
            return True

    def force_complete(self, study_uid: str) -> JobState:
        """Operator's force-complete. Returns the state the study was in."""
        row = self.study(study_uid)
        if row.state not in FORCE_COMPLETABLE:
            check_transition(row.state, JobState.COMPLETE)
        self.transition(row.id, JobState.COMPLETE, reason="forced", expect=row.state)
        return row.state

    @staticmethod
    def _event(
        conn: Connection,
        study_id: int,
        kind: str,
        from_state: JobState,
        to_state: JobState,
        at: datetime,
        detail: str,
    ) -> None:
        conn.execute(
            db.events.insert().values(
                at=at, study_id=study_id, kind=kind, from_state=from_state.value,
                to_state=to_state.value, detail=detail,
            )
        )

    # ---------------------------------------------------------------- reading

    def study(self, study_uid: str) -> StudyRow:
        rows = self._studies(db.studies.c.study_instance_uid == study_uid)
        if not rows:
            raise UnknownStudy("no study with that Study Instance UID is in the ledger")
        return rows[0]

    def studies(self, *states: JobState) -> list[StudyRow]:
        """The studies in ``states`` (every study when none is named), oldest first.

        Through the index on (state, received_at, id), with the instance count read from the
        study row: the cost follows the number of studies in those states, not the history.
        The pipeline's timers name the states they act on; only tests and tools ask for all.
        """
        s = db.studies.c
        if not states:
            return self._studies(None)
        if len(states) == 1:
            return self._studies(s.state == states[0].value)
        return self._studies(s.state.in_([x.value for x in states]))

    def waiting_since(self, *states: JobState) -> list[tuple[int, JobState, datetime]]:
        """(job id, state, time of its last move) of the jobs in ``states``: what the queue
        runner's re-enqueue sweep needs (through the state index: live jobs only)."""
        s = db.studies.c
        query = select(s.id, s.state, s.updated_at).where(
            s.state.in_([x.value for x in states])).order_by(s.received_at, s.id)
        with db.reader(self.engine) as conn:
            return [(row.id, JobState(row.state), row.updated_at) for row in conn.execute(query)]

    def page(self, states: Iterable[JobState], *, limit: int, since: datetime | None = None,
             before: int | None = None, until: datetime | None = None,
             conditions: Iterable[Any] = ()) -> list[StudyRow]:
        """The newest ``limit`` studies in ``states``, oldest first: one page of ``status``.

        Keyset pagination: ``before`` (a job id) continues after the last page, whose oldest
        row was that job; ``since`` keeps only studies received at or after it, ``until``
        those received before it; ``conditions`` narrow it further (the API's filters,
        ``node.web.queries``). Each state is read newest first along its stretch of the
        (state, received_at, id) index and stops after ``limit`` rows, so a page costs the
        same at any depth of history.
        """
        extra = list(conditions)
        s = db.studies.c
        cursor = None
        if before is not None:
            with db.reader(self.engine) as conn:
                received = conn.execute(
                    select(s.received_at).where(s.id == before)).scalar_one_or_none()
            if received is None:
                raise UnknownStudy(f"no job #{before} in the ledger")
            cursor = tuple_(s.received_at, s.id) < tuple_(literal(received), literal(before))
        rows: list[StudyRow] = []
        for state in states:
            where = [s.state == state.value]
            if since is not None:
                where.append(s.received_at >= since)
            if until is not None:
                where.append(s.received_at < until)
            if cursor is not None:
                where.append(cursor)
            rows += self._studies(and_(*where, *extra), newest_first=True, limit=limit)
        rows.sort(key=lambda r: (r.received_at, r.id))
        return rows[-limit:] if limit > 0 else []

    def _studies(self, where: Any, *, newest_first: bool = False,
                 limit: int | None = None) -> list[StudyRow]:
        s = db.studies.c
        order = (s.received_at.desc(), s.id.desc()) if newest_first else (s.received_at, s.id)
        query = select(
            s.id, s.study_instance_uid, s.state, s.generation, s.instances, s.duplicates,
            s.received_at, s.opened_at, s.last_received_at, s.completed_at,
            s.completion_reason, s.state_reason, s.calling_ae_title, s.released_at,
        ).order_by(*order).limit(limit)
        if where is not None:
            query = query.where(where)
        with db.reader(self.engine) as conn:
            rows = [
                StudyRow(**{**row._asdict(), "state": JobState(row.state)})
                for row in conn.execute(query)
            ]
        return rows[::-1] if newest_first else rows

    def rule_counts(self, study_id: int) -> dict[str, int]:
        """Instances per required-series rule name in the study (all generations)."""
        i = db.instances.c
        counts: dict[str, int] = {}
        with db.reader(self.engine) as conn:
            rows = conn.execute(
                select(i.matched_rules, func.count())
                .where(i.study_id == study_id, i.matched_rules != "")
                .group_by(i.matched_rules)
            )
            for names, count in rows:
                for name in str(names).split(","):
                    counts[name] = counts.get(name, 0) + int(count)
        return counts

    def newest_receipt(self) -> datetime | None:
        """When the newest instance the receiving path recorded arrived (None: none yet).

        Read along the primary key from its end. Instances recorded again by start-up
        recovery carry no calling AE title and are passed over, so a recovery cut short by
        another crash starts again from the same point.
        """
        i = db.instances.c
        with db.reader(self.engine) as conn:
            value = conn.execute(
                select(i.received_at).where(i.calling_ae_title != "")
                .order_by(i.id.desc()).limit(1)
            ).scalar_one_or_none()
        return value if isinstance(value, datetime) else None

    def recount(self, study_id: int) -> None:
        """Set the study's instance count from its instance rows (after start-up recovery),
        and the rollup's instances of its day by the difference (unless it is receiving)."""
        s, i = db.studies.c, db.instances.c
        count = select(func.count()).where(i.study_id == study_id).scalar_subquery()
        with self._tx() as conn:
            before, received_at, state = conn.execute(
                select(s.instances, s.received_at, s.state).where(s.id == study_id)).one()
            after = conn.execute(update(db.studies).where(s.id == study_id).values(
                instances=count).returning(s.instances)).scalar_one()
            if state != JobState.RECEIVING.value:
                tally = rollup.Tally()
                tally.add(rollup.INSTANCES, received_at.date(), n=int(after) - int(before))
                tally.write(conn)

    def instance_paths(self, study_id: int) -> list[str]:
        with db.reader(self.engine) as conn:
            return list(
                conn.execute(
                    select(db.instances.c.path)
                    .where(db.instances.c.study_id == study_id)
                    .order_by(db.instances.c.id)
                ).scalars()
            )

    def record_attestation(self, sop_instance_uid: str, user_name: str) -> None:
        """Record that ``user_name`` stated the picture given this SOP Instance UID shows no
        identifying text (before the picture is taken in: the UID is the node's, new)."""
        with self._tx() as conn:
            conn.execute(db.upload_attestations.insert().values(
                sop_instance_uid=sop_instance_uid, user_name=user_name, attested_at=utcnow()))

    def attested_paths(self, study_id: int, calling_ae_title: str) -> set[str]:
        """Spool paths of the study's instances stated free of identifying text and taken in
        with ``calling_ae_title`` (the upload path's own)."""
        i, a = db.instances.c, db.upload_attestations.c
        with db.reader(self.engine) as conn:
            return set(conn.execute(
                select(i.path)
                .join(db.upload_attestations, a.sop_instance_uid == i.sop_instance_uid)
                .where(i.study_id == study_id, i.calling_ae_title == calling_ae_title)
            ).scalars())

    def instance_files(self, study_id: int) -> dict[str, str]:
        """SOP Instance UID -> spool path of every instance of the study."""
        i = db.instances.c
        with db.reader(self.engine) as conn:
            rows = conn.execute(select(i.sop_instance_uid, i.path).where(i.study_id == study_id))
            return {str(uid): str(path) for uid, path in rows}

    def study_by_id(self, study_id: int) -> StudyRow:
        rows = self._studies(db.studies.c.id == study_id)
        if not rows:
            raise UnknownStudy(f"no job #{study_id} in the ledger")
        return rows[0]

    def quarantine_count(self) -> int:
        with db.reader(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(db.quarantine)).scalar_one())

    def quarantined(self) -> list[QuarantineRow]:
        q = db.quarantine.c
        with db.reader(self.engine) as conn:
            return [
                QuarantineRow(
                    id=r.id, received_at=r.received_at, reason=r.reason, path=r.path,
                    size_bytes=r.size_bytes, calling_ae_title=r.calling_ae_title,
                )
                for r in conn.execute(
                    select(q.id, q.received_at, q.reason, q.path, q.size_bytes,
                           q.calling_ae_title).order_by(q.id)
                )
            ]

    def quarantine_page(self, *, limit: int, before: int | None = None) -> list[QuarantineRow]:
        """The newest ``limit`` quarantined objects (older than ``before``, an id), newest
        first: keyset pages along the primary key, the same cost at any depth."""
        q = db.quarantine.c
        where = [] if before is None else [q.id < before]
        return self._quarantine_rows(where, limit=limit)

    def quarantine_entry(self, quarantine_id: int) -> QuarantineRow | None:
        """One quarantined object (None: no such id)."""
        rows = self._quarantine_rows([db.quarantine.c.id == quarantine_id], limit=1)
        return rows[0] if rows else None

    def _quarantine_rows(self, where: list[Any], *, limit: int) -> list[QuarantineRow]:
        q = db.quarantine.c
        query = (select(q.id, q.received_at, q.reason, q.path, q.size_bytes,
                        q.calling_ae_title, q.sop_class_uid, q.sop_instance_uid)
                 .where(*where).order_by(q.id.desc()).limit(limit))
        with db.reader(self.engine) as conn:
            return [QuarantineRow(**r._asdict()) for r in conn.execute(query)]

    def requarantine(self, quarantine_id: int, reason: str) -> None:
        """A released object that is still refused stays quarantined, with the new reason."""
        q = db.quarantine.c
        with self._tx() as conn:
            conn.execute(update(db.quarantine).where(q.id == quarantine_id)
                         .values(reason=reason))

    def forget_quarantined(self, quarantine_id: int) -> bool:
        """Remove a quarantine row (its file released or deleted); False if it was gone."""
        with self._tx() as conn:
            result = conn.execute(db.quarantine.delete()
                                  .where(db.quarantine.c.id == quarantine_id))
            return bool(result.rowcount)


def open_engine(settings: Settings) -> Engine:
    """The ledger's database engine with the settings' SQLite pragmas and busy timeout."""
    return db.make_engine(
        settings.database_url,
        synchronous=settings.ledger.sqlite_synchronous,
        busy_timeout_s=settings.ledger.busy_timeout_s,
    )


def open_ledger(settings: Settings, *, create: bool = False) -> Ledger:
    """The ledger the settings name (its SQLite folder made first); ``create`` makes the schema.

    Kept here, not in ``node.app``, so a command that only reads the ledger does not import the
    whole node (models, web, workers) first: each ``dicom-node`` command starts in a fraction of
    the time."""
    if settings.database_url.startswith("sqlite"):
        settings.var_path.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings)
    if create:
        db.create_schema(engine)
    return Ledger(engine, late_arrival=settings.completion.late_arrival)
