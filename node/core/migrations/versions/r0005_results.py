"""Results per job and model, for filtering by model and triage (filled in by the API work).

Revision ID: r0005_results
Revises: r0004_api_tokens
"""

from __future__ import annotations

revision = "r0005_results"
down_revision: str | None = "r0004_api_tokens"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
