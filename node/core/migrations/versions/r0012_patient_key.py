"""A study's patient, by keyed pseudonym (issue 14, the Study page's earlier studies):
``studies.patient_key`` and ``ix_studies_patient``.

The de-identification stage writes the de-identified copy's Patient ID (a keyed digest of the
issuer and the original ID, never the ID) with the move to DEIDENTIFIED; the Study page lists
the other studies with the same key, newest first, through ``ix_studies_patient``: one index
range however long the ledger's history. NULL (every row already there: the key needs the
node's secret, which a migration does not have): the study shows no earlier studies, and is
not shown as one, until it is de-identified again.

Revision ID: r0012_patient_key
Revises: r0011_upload_attestations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0012_patient_key"
down_revision: str | None = "r0011_upload_attestations"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("patient_key", sa.String(64)))
    op.create_index("ix_studies_patient", "studies", ["patient_key", "received_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_studies_patient", table_name="studies")
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as r0002 does
    op.drop_column("studies", "patient_key")
