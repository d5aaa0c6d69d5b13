"""The ledger's schema migrations (Alembic): run by ``serve`` at start and ``dicom-node migrate``.

Revisions are in ``versions/``, one module each, written by hand: ``r0001_baseline`` is the
schema as the node created it before migrations existed, each later one changes it (a new one
copies the last, sets ``down_revision`` to it, and becomes ``HEAD`` below). They ship inside the
package, so an installed node (editable or wheel) carries them.

A ledger made before migrations (its tables, no ``alembic_version``) is adopted: brought to the
baseline the way that node upgraded itself (missing tables and nullable columns added), stamped
with it, then upgraded like any other. An empty ledger, or one whose tables were dropped, is
built from the first revision. Everything runs in one transaction: a failure leaves the ledger
as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from node.core import db
from node.core.errors import NodeError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("node.ledger")

#: the newest revision: what this version of the node needs
HEAD = "r0013_accession_key"
BASELINE = "r0001_baseline"
#: serialises concurrent upgrades of one PostgreSQL ledger (SQLite's write lock does that there)
_PG_LOCK = 0x6469636F6D  # "dicom"


def current(engine: Engine) -> str | None:
    """The ledger's revision, or None where it has none (empty, or made before migrations)."""
    try:
        with db.reader(engine) as conn:
            return _revision(conn)
    except DBAPIError:
        return None


def _revision(conn: Connection) -> str | None:
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Run the migrations the ledger lacks; return its revision before (None: it was empty;
    a ledger from before migrations counts as the baseline) and after."""
    # Alembic is imported here, not at the top: `status` checks the revision with plain SQL
    # and should not pay for loading it
    from alembic import command
    from alembic.util.exc import CommandError

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        tables = set(inspect(conn).get_table_names())
        before = _revision(conn) if "alembic_version" in tables else None
        cfg = _config(conn)
        try:
            if "studies" not in tables:
                if before is not None:
                    command.stamp(cfg, "base", purge=True)
                before = None
            elif before is None:
                _adopt(conn)
                command.stamp(cfg, BASELINE)
                before = BASELINE
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise NodeError(
                f"the ledger's schema (revision {before}) is not one this version of dicom-node "
                f"knows (it knows up to {HEAD}): was it made by a newer version?"
            ) from exc
    if before != HEAD:
        log.info("ledger schema upgraded from %s to %s", before or "an empty ledger", HEAD)
    return before, HEAD


def require_current(engine: Engine) -> None:
    """Create an empty ledger; refuse one that needs migrations, saying how to run them.

    For the commands that read and change jobs (``status``, ``retry``, ...): only ``serve`` and
    ``migrate`` change the schema of a ledger that holds data.
    """
    revision = current(engine)
    if revision == HEAD:
        return
    if revision is None and not inspect(engine).has_table("studies"):
        upgrade(engine)
        return
    raise NodeError(
        f"the ledger's schema is at {revision or 'a version from before migrations'} and this "
        f"version needs {HEAD}: run `dicom-node migrate` (serve also does it at start)"
    )


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = conn
    return cfg


def _adopt(conn: Connection) -> None:
    """Bring a ledger from before migrations to the baseline, as that node upgraded itself."""
    from node.core.migrations.versions.r0001_baseline import tables

    baseline = tables()
    baseline.create_all(conn)
    existing = inspect(conn)
    for table in baseline.sorted_tables:
        present = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise NodeError(
                    f"the ledger's table {table.name} lacks column {column.name}, which this "
                    "version cannot add by itself"
                )
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
