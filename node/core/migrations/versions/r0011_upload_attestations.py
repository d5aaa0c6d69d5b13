"""Uploaded pictures stated free of identifying text (issue 14, item 3): ``upload_attestations``.

One row per picture whose uploader stated, on the Upload page or through the API, that it shows
no identifying text (no burned-in name, ID, date): the SOP Instance UID the node gave the
picture's Secondary Capture, who stated it, and when. The de-identification stage reads it to
let such an instance pass the burned-in-text rule.

Revision ID: r0011_upload_attestations
Revises: r0010_report_notes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0011_upload_attestations"
down_revision: str | None = "r0010_report_notes"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "upload_attestations",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("attested_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_attestations")
