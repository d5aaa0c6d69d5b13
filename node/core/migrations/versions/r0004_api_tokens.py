"""API tokens for machines, and directory (LDAP) users' shadow accounts.

``api_tokens`` keeps the sha256 of each token with its role, expiry, last use and revocation.
``users.source`` says whether an account is local (argon2id hash) or a directory user's shadow
row ("ldap"), which sessions and the audit trail reference; existing accounts are local.

Revision ID: r0004_api_tokens
Revises: r0003_users
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0004_api_tokens"
down_revision: str | None = "r0003_users"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("source", sa.String(8), nullable=False,
                                     server_default="local"))
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(48), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime()),
        sa.Column("last_used_at", sa.DateTime()),
        sa.Column("revoked_at", sa.DateTime()),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("source")
