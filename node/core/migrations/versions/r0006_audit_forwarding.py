"""Peer exchanges in the audit trail and its forwarding to the audit repository.

``audit`` gains what a peer exchange needs (calling and called AE titles, the number of
instances, their SOP classes with counts) and a forwarding state per row: ``forward_pending``
(true while the row waits for the audit repository), ``forward_attempts`` and
``forwarded_at``. ``ix_audit_unsent`` (forward_pending, id) lets the forwarding sweep read only
the rows still to send, oldest first, however long the history; ``ix_audit_action`` and
``ix_audit_user`` serve the API's filters. Rows already there are not pending: they were written
before forwarding existed.

Revision ID: r0006_audit_forwarding
Revises: r0005_results
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0006_audit_forwarding"
down_revision: str | None = "r0005_results"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("calling_ae_title", sa.String(16)))
    op.add_column("audit", sa.Column("called_ae_title", sa.String(16)))
    op.add_column("audit", sa.Column("instances", sa.Integer()))
    op.add_column("audit", sa.Column("sop_classes", sa.Text()))
    op.add_column("audit", sa.Column("forward_pending", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    op.add_column("audit", sa.Column("forward_attempts", sa.Integer(), nullable=False,
                                     server_default="0"))
    op.add_column("audit", sa.Column("forwarded_at", sa.DateTime()))
    op.create_index("ix_audit_unsent", "audit", ["forward_pending", "id"])
    op.create_index("ix_audit_action", "audit", ["action", "id"])
    op.create_index("ix_audit_user", "audit", ["user_name", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_user", table_name="audit")
    op.drop_index("ix_audit_action", table_name="audit")
    op.drop_index("ix_audit_unsent", table_name="audit")
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as r0002 does
    for column in ("forwarded_at", "forward_attempts", "forward_pending", "sop_classes",
                   "instances", "called_ae_title", "calling_ae_title"):
        op.drop_column("audit", column)
