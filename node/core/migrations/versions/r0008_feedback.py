"""Radiologists' feedback on model results (issue 14, item 2): the ``feedback`` table.

One row per verdict a radiologist gives on one model run: the run (``results.id``) and the
job, the model's name and version and the AI's triage copied from the run (so the feedback
and the Model quality page outlive a re-run, which marks the run not current), who gave it,
the verdict, the corrected triage (NULL: the AI's triage stands), a bounded plain-text note,
and when. ``ix_feedback_created`` serves the per-model per-week summary over a window of time
(covering: the summary reads no row); ``ix_feedback_study`` lists one job's feedback.

Revision ID: r0008_feedback
Revises: r0007_daily_rollup
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0008_feedback"
down_revision: str | None = "r0007_daily_rollup"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("results.id"), nullable=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("ai_triage", sa.String(16)),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("corrected_triage", sa.String(16)),
        sa.Column("note", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_feedback_created", "feedback",
                    ["created_at", "model", "result_id", "user_name", "verdict", "ai_triage",
                     "corrected_triage"])
    op.create_index("ix_feedback_study", "feedback", ["study_id", "id"])


def downgrade() -> None:
    op.drop_table("feedback")
