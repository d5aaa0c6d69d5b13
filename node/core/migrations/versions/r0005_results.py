"""Results per job and model, for the API's filters by model and triage and its statistics.

``results`` holds one row per model run of a job's generation, written in the transaction that
moves the job to INFERRED; ``current`` marks the newest generation's runs. Its indexes serve
the filters (model and triage, triage alone, each ending in the job id; a job's own runs for a
filter that matches many) and the counts per model and triage in a window. On ``studies``:
``ix_studies_caller_state_received`` pages one calling AE title's jobs like the state index
does, ``ix_studies_received`` finds a window of receipt days. On ``events``:
``ix_events_to_state_at`` finds the moves into REPORTED in a window (completion to REPORTED).

Revision ID: r0005_results
Revises: r0004_api_tokens
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0005_results"
down_revision: str | None = "r0004_api_tokens"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("triage", sa.String(16)),
        sa.Column("finding", sa.Text()),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.UniqueConstraint("study_id", "generation", "model", name="uq_results_run"),
    )
    op.create_index("ix_results_model_triage", "results",
                    ["model", "triage", "current", "study_id"])
    op.create_index("ix_results_triage", "results", ["triage", "current", "study_id"])
    op.create_index("ix_results_study", "results", ["study_id", "current", "model", "triage"])
    op.create_index("ix_results_created", "results",
                    ["created_at", "current", "model", "triage"])
    op.create_index("ix_studies_caller_state_received", "studies",
                    ["calling_ae_title", "state", "received_at", "id"])
    op.create_index("ix_studies_received", "studies", ["received_at"])
    op.create_index("ix_events_to_state_at", "events", ["to_state", "at", "study_id"])


def downgrade() -> None:
    op.drop_index("ix_events_to_state_at", table_name="events")
    op.drop_index("ix_studies_received", table_name="studies")
    op.drop_index("ix_studies_caller_state_received", table_name="studies")
    op.drop_table("results")
