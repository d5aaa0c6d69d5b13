"""Peer exchanges in the audit trail and its forwarding to the audit repository (filled in by the ATNA work).

Revision ID: r0006_audit_forwarding
Revises: r0005_results
"""

from __future__ import annotations

revision = "r0006_audit_forwarding"
down_revision: str | None = "r0005_results"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
