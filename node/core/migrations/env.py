"""Alembic's environment for the ledger: migrations run on the connection that
``node.core.migrations`` opens.

There is no alembic.ini and no URL here: ``node.core.migrations.upgrade`` hands over a connection
already inside the transaction the whole upgrade runs in (the node's own engine, with its SQLite
settings), so a failed migration leaves the ledger as it was.
"""

from __future__ import annotations

from alembic import context

from node.core import db

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the ledger's migrations run through node.core.migrations (dicom-node migrate)")
context.configure(
    connection=connection,
    target_metadata=db.metadata,
    # SQLite alters most things by copying the table: Alembic's batch mode does that
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
