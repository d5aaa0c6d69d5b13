"""Live work without history: instance counts on the study row, jobs found by state.

``studies.instances`` is filled from the rows already there (one pass over ``instances``) and
kept from then on by the receive path in the transaction that adds each instance, so reading a
study no longer counts its instance rows. ``ix_studies_state_received`` (state, received_at, id)
serves every periodic "jobs in this state, oldest first" query and ``status``'s pages; it
replaces ``ix_studies_state``, its prefix.

Revision ID: r0002_live_work
Revises: r0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002_live_work"
down_revision: str | None = "r0001_baseline"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "studies", sa.Column("instances", sa.Integer(), nullable=False, server_default="0")
    )
    op.execute(
        "UPDATE studies SET instances = counted.n FROM "
        "(SELECT study_id, count(*) AS n FROM instances GROUP BY study_id) AS counted "
        "WHERE counted.study_id = studies.id"
    )
    op.create_index("ix_studies_state_received", "studies", ["state", "received_at", "id"])
    op.drop_index("ix_studies_state", table_name="studies")


def downgrade() -> None:
    op.create_index("ix_studies_state", "studies", ["state"])
    op.drop_index("ix_studies_state_received", table_name="studies")
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): batch mode's copy of the table would
    # trip the foreign keys that point at it
    op.drop_column("studies", "instances")
