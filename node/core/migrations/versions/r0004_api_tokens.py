"""API tokens for machines (filled in by the API-token work).

Revision ID: r0004_api_tokens
Revises: r0003_users
"""

from __future__ import annotations

revision = "r0004_api_tokens"
down_revision: str | None = "r0003_users"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
