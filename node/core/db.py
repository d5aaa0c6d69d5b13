"""The ledger's schema and engine: the only place that knows SQL dialects.

SQLite (WAL) is the embedded default; PostgreSQL is used when ``node.database_url`` names it.
Text columns hold UIDs, AE titles, states, rule names and reasons written by the node itself:
never patient names, IDs or free text from a dataset.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("state", String(32), nullable=False),
    Column("generation", Integer, nullable=False, default=1),
    Column("duplicates", Integer, nullable=False, default=0),
    Column("received_at", DateTime, nullable=False),
    Column("opened_at", DateTime, nullable=False),
    Column("last_received_at", DateTime, nullable=False),
    Column("completed_at", DateTime),
    Column("completion_reason", String(32)),
    Column("state_reason", Text),
    Column("calling_ae_title", String(16)),
    Column("updated_at", DateTime, nullable=False),
    # instances recorded for the study, kept by the receive path in the transaction that adds
    # the instance: reading a study costs the same with 10 or 10 million instance rows
    Column("instances", Integer, nullable=False, default=0, server_default="0"),
    # the patient's keyed pseudonym (the de-identified copy's Patient ID: a keyed digest of the
    # issuer and ID, never the ID), written with the move to DEIDENTIFIED; NULL where the study
    # had no Patient ID or was de-identified before r0012. The Study page's earlier studies
    # are this patient's (node.core.patients)
    Column("patient_key", String(64)),
    # the Accession Number's keyed pseudonym, written with patient_key (r0013): the Studies
    # page finds a study by the number a radiologist types, through its pseudonym
    Column("accession_key", String(32)),
    # when an association of a whole-study sender (completion.whole_study_senders) that
    # delivered instances of the study was released (A-RELEASE) while it was RECEIVING; the
    # completion rule completes the study at once when no instance arrived after it
    Column("released_at", DateTime),
    # every periodic query asks for the jobs in one state, oldest first; `status` pages
    # through a state newest first from a (received_at, id) key
    Index("ix_studies_state_received", "state", "received_at", "id"),
    # the API's filter by calling AE title pages like the state index, one caller at a time
    Index("ix_studies_caller_state_received", "calling_ae_title", "state", "received_at", "id"),
    # statistics: studies and instances per day of receipt, in a window (received_at never
    # changes, so the receive path's updates of the instance count leave this index alone)
    Index("ix_studies_received", "received_at"),
    # a patient's studies, newest first from a (received_at, id) key
    Index("ix_studies_patient", "patient_key", "received_at", "id"),
    Index("ix_studies_accession", "accession_key", "received_at", "id"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("study_id", Integer, ForeignKey("studies.id"), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("modality", String(16)),
    Column("matched_rules", Text, nullable=False, default=""),
    Column("path", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("calling_ae_title", String(16)),
    Column("received_at", DateTime, nullable=False),
    Index("ix_instances_study", "study_id"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received_at", DateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sop_class_uid", String(64)),
    Column("sop_instance_uid", String(64)),
    Column("calling_ae_title", String(16)),
    Column("peer_address", String(64)),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime, nullable=False),
    Column("study_id", Integer, ForeignKey("studies.id")),
    Column("kind", String(32), nullable=False),
    Column("from_state", String(32)),
    Column("to_state", String(32)),
    Column("detail", Text),
    # a study's timeline (the API's study page) reads its events only
    Index("ix_events_study", "study_id", "id"),
    # statistics: the moves into one state (REPORTED) in a window of time
    Index("ix_events_to_state_at", "to_state", "at", "study_id"),
)


pseudonyms = Table(
    "pseudonyms",
    metadata,
    Column("pseudonym", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    # the original value, Fernet-encrypted with a key derived from the node's de-identification
    # secret, which is never stored in this database
    Column("ciphertext", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)


# One row per model run of a job's generation (written with the move to INFERRED): what the
# API filters and counts by. ``current`` marks the runs of the newest generation that has
# results; older generations' rows stay, marked not current. ``finding`` is the meaning of
# the classification's predicted class (from the model's manifest), ``folder`` the run's
# result folder relative to var_dir. No patient data: model names, codes, keyed folder names.
results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", Integer, ForeignKey("studies.id"), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("triage", String(16)),
    Column("finding", Text),
    Column("current", Boolean, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("folder", Text, nullable=False),
    UniqueConstraint("study_id", "generation", "model", name="uq_results_run"),
    # the filters: the jobs with a run of this model (and triage), or of this triage; and,
    # for a common one, each candidate job's own runs (covering, so that SQLite prefers it)
    Index("ix_results_model_triage", "model", "triage", "current", "study_id"),
    Index("ix_results_study", "study_id", "current", "model", "triage"),
    Index("ix_results_triage", "triage", "current", "study_id"),
    # statistics: runs per model and triage in a window of time
    Index("ix_results_created", "created_at", "current", "model", "triage"),
)


outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", Integer, ForeignKey("studies.id"), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("model", String(64), nullable=False),
    # dicom | hl7 | webhook | email
    Column("kind", String(16), nullable=False),
    Column("destination", String(32), nullable=False),
    # what is sent: a SOP Instance UID, an HL7 control ID, an alert id
    Column("object_uid", String(64), nullable=False),
    # seg, sr, sc-1, report-pdf, kos, oru, alert
    Column("label", String(32), nullable=False),
    # file under <var_dir>/outbox/, relative
    Column("path", Text, nullable=False),
    # PENDING | DELIVERED | FAILED | SUPERSEDED
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("delivered_at", DateTime),
    UniqueConstraint("destination", "object_uid", name="uq_outbox_destination_object"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
    Index("ix_outbox_study", "study_id"),
)


# Users of the HTTP API (local accounts): argon2id hashes only, never a password.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    # failed logins in a row; at web.max_failed_logins the account is locked until locked_until
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    # "local" (password_hash is argon2id) or "ldap": a directory user's shadow row, whose role
    # is set from their groups at each login and whose password_hash never verifies
    Column("source", String(8), nullable=False, server_default="local"),
)

# Login sessions: the sha256 of the cookie's token (a stolen database opens no session) and the
# CSRF token the session's state-changing requests must echo.
sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("address", String(64)),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Index("ix_sessions_user", "user_id"),
)

# API tokens for machines: the sha256 of the token (shown once, when made), its role, expiry
# and last use; a revoked token stays, so its name keeps meaning one token in the audit trail.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(48), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime),
    Column("last_used_at", DateTime),
    Column("revoked_at", DateTime),
)

# What users did (login, failed login, retry, ...): who, role, from where, what, which job,
# outcome, when. Names are account names, never patient data.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime, nullable=False),
    Column("user_name", String(64)),
    Column("role", String(16)),
    Column("address", String(64)),
    Column("action", String(32), nullable=False),
    Column("study_id", Integer),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    # a peer exchange (r0006): the AE titles, how many instances, "<SOP Class UID>=<count>" ...
    Column("calling_ae_title", String(16)),
    Column("called_ae_title", String(16)),
    Column("instances", Integer),
    Column("sop_classes", Text),
    # forwarding to the audit repository (node.core.audit_forward): the sweep reads only the
    # rows still to send, oldest first, through ix_audit_unsent; its cost does not grow with
    # history. Rows written while forwarding is off are not pending.
    Column("forward_pending", Boolean, nullable=False, default=False, server_default=false()),
    Column("forward_attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("forwarded_at", DateTime),
    Index("ix_audit_unsent", "forward_pending", "id"),
    # the API's filters page newest first within one action or one user
    Index("ix_audit_action", "action", "id"),
    Index("ix_audit_user", "user_name", "id"),
)


# The statistics' running totals (node.core.rollup, r0007), kept in the transaction of the
# change they count: one number per metric, UTC day and key (a state, model/triage, a bucket
# of seconds), and the jobs per state now. A window of days is one range of the primary key.
daily_counts = Table(
    "daily_counts",
    metadata,
    Column("metric", String(16), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("key", String(96), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

state_counts = Table(
    "state_counts",
    metadata,
    Column("state", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
)


# Radiologists' verdicts on model runs (node.core.feedback, r0008): the run and the job, the
# model, version, generation and AI triage copied from the run (the feedback outlives a re-run),
# who, the verdict, the corrected triage (NULL: the AI's stands), a bounded plain-text note in
# the radiologist's own words (shown only to the roles that read results), and when.
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("study_id", Integer, ForeignKey("studies.id"), nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("ai_triage", String(16)),
    Column("user_name", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("corrected_triage", String(16)),
    Column("note", Text),
    Column("created_at", DateTime, nullable=False),
    # the Model quality page: a window of weeks, per model (covering: reads no table row)
    Index("ix_feedback_created", "created_at", "model", "result_id", "user_name", "verdict",
          "ai_triage", "corrected_triage"),
    # a job's feedback, on its Study page and through the API
    Index("ix_feedback_study", "study_id", "id"),
)

# Doctors' notes on a model run's PDF report (node.core.report_notes, r0010): each note makes
# a new version of the report (the original report is version 1, each note the next number),
# built as a new Encapsulated PDF instance in the report's series and queued to the PACS. The
# run, job, model and generation; the version, its SOP Instance UID and its PDF file (under
# <var_dir>/outbox/, relative); who wrote it (user and role), the note (bounded plain text in
# the author's own words, shown only to the roles that read results), and when.
report_notes = Table(
    "report_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("study_id", Integer, ForeignKey("studies.id"), nullable=False),
    Column("model", String(64), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("pdf_path", Text, nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    # two notes written at once cannot take the same version
    UniqueConstraint("result_id", "version", name="uq_report_notes_version"),
    # a job's versions, on its Study page and through the API
    Index("ix_report_notes_study", "study_id", "id"),
)

# Pictures uploaded with the uploader's statement that they show no identifying text
# (r0011): the SOP Instance UID the node gave the picture's Secondary Capture, who stated it
# and when. The de-identifier lets such an instance pass its burned-in-text rule only when
# this row and the instance's own row (taken in through the upload path) both say so; a
# peer's C-STORE header alone never does (node.pipeline.deid.pixels).
upload_attestations = Table(
    "upload_attestations",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False),
    Column("attested_at", DateTime, nullable=False),
)

READ_ONLY = "dicom_node_read_only"


def reader(engine: Engine) -> Connection:
    """A connection for reads only (on SQLite it does not take the write lock)."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def make_engine(url: str, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> Engine:
    """Create the engine; on SQLite, WAL mode, the chosen synchronous level, IMMEDIATE writes."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout_s, "isolation_level": None}
        )
        _sqlite_pragmas(engine, synchronous, busy_timeout_s)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    return engine


def _sqlite_pragmas(engine: Engine, synchronous: str, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades from read
        # to write fails at once with "database is locked" instead of waiting for busy_timeout.
        # Readers (see reader()) begin deferred: in WAL mode they never wait for the receiving
        # path's write lock, and never hold it up.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


def dialect_insert(engine: Engine, table: Table) -> Any:
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {engine.dialect.name}")


def insert_ignoring_conflicts(engine: Engine, table: Table, *conflict_cols: str) -> Insert:
    """An INSERT that does nothing when a row with the same ``conflict_cols`` exists."""
    stmt: Insert = dialect_insert(engine, table).on_conflict_do_nothing(
        index_elements=list(conflict_cols)
    )
    return stmt


def upsert(
    engine: Engine, table: Table, conflict_cols: list[str], update_cols: list[str]
) -> Insert:
    """An INSERT that, on conflict, updates ``update_cols`` from the proposed row."""
    ins = dialect_insert(engine, table)
    stmt: Insert = ins.on_conflict_do_update(
        index_elements=conflict_cols, set_={c: ins.excluded[c] for c in update_cols}
    )
    return stmt


def seconds_between(engine: Engine, start: Any, end: Any) -> Any:
    """SQL for the seconds from ``start`` to ``end`` (two DateTime expressions)."""
    if engine.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def create_schema(engine: Engine) -> None:
    """Bring the ledger to this version's schema: create it, or run the migrations it lacks.

    A ledger made before migrations existed is adopted first (see ``node.core.migrations``).
    """
    from node.core.migrations import upgrade

    upgrade(engine)
