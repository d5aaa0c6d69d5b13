"""Completion on release by a whole-study sender (issue 15, item 2): ``studies.released_at``.

When an association of a peer named in ``completion.whole_study_senders`` ends with A-RELEASE,
the receive path writes the time into ``released_at`` of every RECEIVING study it delivered
instances of, committed before the completion sweep is woken. The completion rule completes such
a study at once unless an instance arrived after that time (``last_received_at``). NULL (every
row already there): no release seen, the quiet period applies.

Revision ID: r0009_release_mark
Revises: r0008_feedback
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0009_release_mark"
down_revision: str | None = "r0008_feedback"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("released_at", sa.DateTime()))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as r0002 does
    op.drop_column("studies", "released_at")
