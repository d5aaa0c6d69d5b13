"""A study's accession number, by keyed pseudonym (issue 14, the Studies page's search by
accession number): ``studies.accession_key`` and ``ix_studies_accession``.

The de-identification stage writes the de-identified copy's Accession Number (a keyed digest of
the original, never the number) with the move to DEIDENTIFIED, as it writes ``patient_key``. A
radiologist or clinician who types an accession number or a patient ID on the Studies page finds
the study through its pseudonym: the ledger still holds no identifier in clear. NULL for every
row already there (the key needs the node's secret, which a migration does not have).

Revision ID: r0013_accession_key
Revises: r0012_patient_key
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0013_accession_key"
down_revision: str | None = "r0012_patient_key"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("accession_key", sa.String(32)))
    op.create_index("ix_studies_accession", "studies", ["accession_key", "received_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_studies_accession", table_name="studies")
    op.drop_column("studies", "accession_key")
