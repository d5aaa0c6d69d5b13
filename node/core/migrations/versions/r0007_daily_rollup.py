"""The statistics' running totals: ``daily_counts`` and ``state_counts`` (node.core.rollup).

``daily_counts`` (metric, day, key) -> n holds studies and instances received per day, moves
into each state per day, current model runs per day by model and triage, and per day a
histogram of the seconds from completion to REPORTED; ``state_counts`` the jobs per state.
From this revision on the node keeps both in the transaction of each change, and
``GET /api/v1/statistics`` reads only them, so its cost no longer grows with the history.
The upgrade back-fills both from the rows already there, in one pass over studies, events
and results (``rollup.rebuild``, the same count the tests compare the running totals with).

Revision ID: r0007_daily_rollup
Revises: r0006_audit_forwarding
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0007_daily_rollup"
down_revision: str | None = "r0006_audit_forwarding"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    from node.core import rollup

    op.create_table(
        "daily_counts",
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("key", sa.String(96), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "state_counts",
        sa.Column("state", sa.String(32), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    rollup.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("state_counts")
    op.drop_table("daily_counts")
