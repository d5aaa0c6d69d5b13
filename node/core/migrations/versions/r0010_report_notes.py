"""Doctors' notes on the PDF report (issue 14, item 2): the ``report_notes`` table.

One row per note on one model run's report: the run (``results.id``), the job, the model and
generation, the report version the note made (the original report is version 1) with its
SOP Instance UID and PDF file, who wrote it (user and role), the note, and when.
``uq_report_notes_version`` keeps two notes written at once from taking one version;
``ix_report_notes_study`` lists one job's versions.

Revision ID: r0010_report_notes
Revises: r0009_release_mark
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0010_report_notes"
down_revision: str | None = "r0009_release_mark"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "report_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("results.id"), nullable=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("pdf_path", sa.Text(), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("result_id", "version", name="uq_report_notes_version"),
    )
    op.create_index("ix_report_notes_study", "report_notes", ["study_id", "id"])


def downgrade() -> None:
    op.drop_table("report_notes")
