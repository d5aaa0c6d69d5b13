"""Baseline: the ledger's schema as dicom-node created it before it had migrations.

Kept as it was (a frozen copy of ``node/core/db.py``'s tables on that day): a fresh ledger starts
here, and a ledger made before migrations is adopted by bringing it to exactly this and stamping
it (``node.core.migrations``). Never edit it; change the schema in a new revision.

Revision ID: r0001_baseline
Revises: (none)
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

revision = "r0001_baseline"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def tables() -> MetaData:
    """The baseline's tables, columns, indexes and constraints, as they were."""
    metadata = MetaData()
    Table(
        "studies",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("study_instance_uid", String(64), nullable=False, unique=True),
        Column("state", String(32), nullable=False, index=True),
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
    )

    Table(
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

    Table(
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

    Table(
        "events",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", DateTime, nullable=False),
        Column("study_id", Integer, ForeignKey("studies.id")),
        Column("kind", String(32), nullable=False),
        Column("from_state", String(32)),
        Column("to_state", String(32)),
        Column("detail", Text),
    )

    Table(
        "pseudonyms",
        metadata,
        Column("pseudonym", String(64), primary_key=True),
        Column("kind", String(16), nullable=False),
        # the original value, Fernet-encrypted with a key derived from the node's de-identification
        # secret, which is never stored in this database
        Column("ciphertext", Text, nullable=False),
        Column("created_at", DateTime, nullable=False),
    )

    Table(
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

    return metadata


def upgrade() -> None:
    tables().create_all(op.get_bind())


def downgrade() -> None:
    tables().drop_all(op.get_bind())
