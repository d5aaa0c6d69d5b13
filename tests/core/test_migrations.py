"""Schema migrations (Alembic) on SQLite and PostgreSQL: a ledger made by the node before
migrations existed is upgraded without losing a row, and the result is the schema the code uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, select, text

from node.core import db, migrations
from node.core.errors import NodeError
from node.core.ledger import Ledger, ReceivedInstance
from node.core.migrations.versions.r0001_baseline import tables as baseline_tables
from tests.conftest import DICOM_NODE, NodeProcess, run, write_config

#: the ledger's tables exactly as ``db.create_schema`` made them on SQLite on the day before
#: migrations (commit 7381061), from its sqlite_master
TODAYS_SQLITE_SCHEMA = {
    "events": "CREATE TABLE events (\n\tid INTEGER NOT NULL, \n\tat DATETIME NOT NULL, \n\tstudy_id INTEGER, \n\tkind VARCHAR(32) NOT NULL, \n\tfrom_state VARCHAR(32), \n\tto_state VARCHAR(32), \n\tdetail TEXT, \n\tPRIMARY KEY (id), \n\tFOREIGN KEY(study_id) REFERENCES studies (id)\n)",
    "instances": "CREATE TABLE instances (\n\tid INTEGER NOT NULL, \n\tsop_instance_uid VARCHAR(64) NOT NULL, \n\tstudy_id INTEGER NOT NULL, \n\tseries_instance_uid VARCHAR(64) NOT NULL, \n\tsop_class_uid VARCHAR(64) NOT NULL, \n\ttransfer_syntax_uid VARCHAR(64) NOT NULL, \n\tmodality VARCHAR(16), \n\tmatched_rules TEXT NOT NULL, \n\tpath TEXT NOT NULL, \n\tsize_bytes BIGINT NOT NULL, \n\tcalling_ae_title VARCHAR(16), \n\treceived_at DATETIME NOT NULL, \n\tPRIMARY KEY (id), \n\tUNIQUE (sop_instance_uid), \n\tFOREIGN KEY(study_id) REFERENCES studies (id)\n)",
    "ix_instances_study": "CREATE INDEX ix_instances_study ON instances (study_id)",
    "ix_outbox_due": "CREATE INDEX ix_outbox_due ON outbox (state, next_attempt_at)",
    "ix_outbox_study": "CREATE INDEX ix_outbox_study ON outbox (study_id)",
    "ix_studies_state": "CREATE INDEX ix_studies_state ON studies (state)",
    "outbox": "CREATE TABLE outbox (\n\tid INTEGER NOT NULL, \n\tstudy_id INTEGER NOT NULL, \n\tgeneration INTEGER NOT NULL, \n\tmodel VARCHAR(64) NOT NULL, \n\tkind VARCHAR(16) NOT NULL, \n\tdestination VARCHAR(32) NOT NULL, \n\tobject_uid VARCHAR(64) NOT NULL, \n\tlabel VARCHAR(32) NOT NULL, \n\tpath TEXT NOT NULL, \n\tstate VARCHAR(16) NOT NULL, \n\tattempts INTEGER NOT NULL, \n\tnext_attempt_at DATETIME NOT NULL, \n\tlast_error TEXT, \n\tcreated_at DATETIME NOT NULL, \n\tupdated_at DATETIME NOT NULL, \n\tdelivered_at DATETIME, \n\tPRIMARY KEY (id), \n\tCONSTRAINT uq_outbox_destination_object UNIQUE (destination, object_uid), \n\tFOREIGN KEY(study_id) REFERENCES studies (id)\n)",
    "pseudonyms": "CREATE TABLE pseudonyms (\n\tpseudonym VARCHAR(64) NOT NULL, \n\tkind VARCHAR(16) NOT NULL, \n\tciphertext TEXT NOT NULL, \n\tcreated_at DATETIME NOT NULL, \n\tPRIMARY KEY (pseudonym)\n)",
    "quarantine": "CREATE TABLE quarantine (\n\tid INTEGER NOT NULL, \n\treceived_at DATETIME NOT NULL, \n\treason TEXT NOT NULL, \n\tpath TEXT NOT NULL, \n\tsize_bytes BIGINT NOT NULL, \n\tsop_class_uid VARCHAR(64), \n\tsop_instance_uid VARCHAR(64), \n\tcalling_ae_title VARCHAR(16), \n\tpeer_address VARCHAR(64), \n\tPRIMARY KEY (id)\n)",
    "studies": "CREATE TABLE studies (\n\tid INTEGER NOT NULL, \n\tstudy_instance_uid VARCHAR(64) NOT NULL, \n\tstate VARCHAR(32) NOT NULL, \n\tgeneration INTEGER NOT NULL, \n\tduplicates INTEGER NOT NULL, \n\treceived_at DATETIME NOT NULL, \n\topened_at DATETIME NOT NULL, \n\tlast_received_at DATETIME NOT NULL, \n\tcompleted_at DATETIME, \n\tcompletion_reason VARCHAR(32), \n\tstate_reason TEXT, \n\tcalling_ae_title VARCHAR(16), \n\tupdated_at DATETIME NOT NULL, \n\tPRIMARY KEY (id), \n\tUNIQUE (study_instance_uid)\n)",
}
TABLES = ("studies", "instances", "events", "quarantine", "pseudonyms", "outbox")
#: instances per study in the old ledger: an empty study, a small one, a bigger one
SIZES = {1: 0, 2: 3, 3: 40}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = db.make_engine(url)
    _drop_everything(engine)
    yield engine
    _drop_everything(engine)
    engine.dispose()


def _drop_everything(engine: Engine) -> None:
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)


def make_todays_ledger(engine: Engine) -> None:
    """A ledger as today's main created it: its DDL on SQLite, the baseline on PostgreSQL."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            order = ["studies", "instances", "quarantine", "events", "pseudonyms", "outbox"]
            for name in order + sorted(k for k in TODAYS_SQLITE_SCHEMA if k.startswith("ix_")):
                conn.exec_driver_sql(TODAYS_SQLITE_SCHEMA[name])
        else:
            baseline_tables().create_all(conn)


def fill(engine: Engine) -> None:
    """Rows in every table, with plain INSERTs (no code of this version)."""
    t0 = datetime(2026, 12, 1, 8, 0, 0, 123000)
    meta = baseline_tables()
    studies, instances, events, quarantine, pseudonyms, outbox = (
        meta.tables[n] for n in TABLES)
    with engine.begin() as conn:
        for sid, n in SIZES.items():
            conn.execute(studies.insert().values(
                id=sid, study_instance_uid=f"1.2.826.0.1.{sid}", state="DONE" if sid < 3 else "RECEIVING",
                generation=sid, duplicates=sid - 1, received_at=t0 + timedelta(minutes=sid),
                opened_at=t0, last_received_at=t0 + timedelta(hours=sid), completed_at=t0 if sid < 3 else None,
                completion_reason="quiet-period" if sid < 3 else None, state_reason=f"reason {sid}",
                calling_ae_title="CT1", updated_at=t0))
            if n:
                conn.execute(instances.insert(), [
                    {"sop_instance_uid": f"1.2.826.0.1.{sid}.{k}", "study_id": sid,
                     "series_instance_uid": f"1.2.826.0.1.{sid}.0", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                     "transfer_syntax_uid": "1.2.840.10008.1.2.1", "modality": "CT",
                     "matched_rules": "axial" if k % 2 else "", "path": f"ab/s{sid}/i{k}.dcm",
                     "size_bytes": 1000 + k, "calling_ae_title": "CT1", "received_at": t0 + timedelta(seconds=k)}
                    for k in range(n)])
            conn.execute(events.insert().values(at=t0, study_id=sid, kind="transition",
                                                from_state="RECEIVING", to_state="COMPLETE", detail="quiet-period"))
        conn.execute(quarantine.insert().values(received_at=t0, reason="not DICOM", path="q.dcm", size_bytes=5,
                                                sop_class_uid=None, sop_instance_uid="1.9", calling_ae_title="X",
                                                peer_address="127.0.0.1"))
        conn.execute(pseudonyms.insert().values(pseudonym="2.25.1", kind="uid", ciphertext="gAAAA", created_at=t0))
        conn.execute(outbox.insert().values(
            study_id=2, generation=2, model="lung-ct", kind="dicom", destination="pacs", object_uid="2.25.9",
            label="seg", path="k/g2/lung-ct/seg.dcm", state="DELIVERED", attempts=1, next_attempt_at=t0,
            last_error=None, created_at=t0, updated_at=t0, delivered_at=t0))


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    meta = baseline_tables()
    with engine.connect() as conn:
        return {name: [dict(r._mapping) for r in conn.execute(
            select(*meta.tables[name].c).order_by(*meta.tables[name].primary_key.columns))]
            for name in TABLES}


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), db.metadata))


def test_head_is_the_newest_revision() -> None:
    cfg = migrations._config(None)  # type: ignore[arg-type]
    assert ScriptDirectory.from_config(cfg).get_current_head() == migrations.HEAD


def test_the_baseline_is_todays_schema(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'b.sqlite3'}")
    with engine.begin() as conn:
        baseline_tables().create_all(conn)
        rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").all()
    assert dict(rows) == TODAYS_SQLITE_SCHEMA
    engine.dispose()


def test_a_ledger_from_before_migrations_is_upgraded_without_losing_a_row(empty_engine: Engine) -> None:
    make_todays_ledger(empty_engine)
    fill(empty_engine)
    before = snapshot(empty_engine)
    assert migrations.current(empty_engine) is None

    assert migrations.upgrade(empty_engine) == (migrations.BASELINE, migrations.HEAD)

    assert migrations.current(empty_engine) == migrations.HEAD
    assert snapshot(empty_engine) == before
    assert schema_differences(empty_engine) == []
    ledger = Ledger(empty_engine)
    assert {s.id: s.instances for s in ledger.studies()} == SIZES
    # the kept count goes on from the filled one
    ledger.record_instance(ReceivedInstance("1.2.826.0.1.3.999", "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3",
                                            "1.2.826.0.1.3.0", "1.2.840.10008.1.2.1", "CT", (), 10, "CT1"),
                           "ab/s3/new.dcm", lambda: None)
    assert ledger.study("1.2.826.0.1.3").instances == 41
    # upgrading again changes nothing
    assert migrations.upgrade(empty_engine) == (migrations.HEAD, migrations.HEAD)
    assert ledger.study("1.2.826.0.1.3").instances == 41


def test_a_fresh_ledger_is_the_schema_the_code_uses_and_downgrades(empty_engine: Engine) -> None:
    assert migrations.upgrade(empty_engine) == (None, migrations.HEAD)
    assert schema_differences(empty_engine) == []
    indexes = {i["name"] for i in inspect(empty_engine).get_indexes("studies")}
    assert "ix_studies_state_received" in indexes and "ix_studies_state" not in indexes
    # down to the baseline and up again, with rows in it
    fill(empty_engine)
    before = snapshot(empty_engine)
    with empty_engine.begin() as conn:
        command.downgrade(migrations._config(conn), migrations.BASELINE)
    assert "instances" not in {c["name"] for c in inspect(empty_engine).get_columns("studies")}
    assert snapshot(empty_engine) == before
    migrations.upgrade(empty_engine)
    assert {s.id: s.instances for s in Ledger(empty_engine).studies()} == SIZES


def test_a_ledger_dropped_by_hand_is_built_again(empty_engine: Engine) -> None:
    migrations.upgrade(empty_engine)
    db.metadata.drop_all(empty_engine)  # leaves alembic_version behind
    db.create_schema(empty_engine)
    assert schema_differences(empty_engine) == []


def test_an_older_unversioned_ledger_gains_the_columns_it_lacked(tmp_path: Path) -> None:
    """A ledger from a node older still (before state_reason) is adopted as that node would
    have upgraded itself, then migrated."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    make_todays_ledger(engine)
    fill(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE studies DROP COLUMN state_reason"))
        conn.execute(text("DROP TABLE outbox"))
    migrations.upgrade(engine)
    assert schema_differences(engine) == []
    rows = Ledger(engine).studies()
    assert [(r.id, r.instances, r.state_reason) for r in rows] == [(1, 0, None), (2, 3, None), (3, 40, None)]
    engine.dispose()


def test_a_ledger_from_a_newer_node_is_refused_in_one_line(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    migrations.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'r9999_future'"))
    with pytest.raises(NodeError, match=r"r9999_future.*newer version"):
        migrations.upgrade(engine)
    engine.dispose()


def _cli(config: Path, *args: str) -> Any:
    return run([*DICOM_NODE, "--config", str(config), *args])


def test_status_asks_for_migrate_and_migrate_upgrades(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(var)}})
    engine = db.make_engine(f"sqlite:///{var / 'ledger.sqlite3'}")
    make_todays_ledger(engine)
    fill(engine)
    engine.dispose()

    refused = _cli(config, "status")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"dicom-node: the ledger's schema is at a version from before migrations and this version "
        f"needs {migrations.HEAD}: run `dicom-node migrate` (serve also does it at start)"]
    migrated = _cli(config, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"ledger upgraded from {migrations.BASELINE} to {migrations.HEAD}"
    assert _cli(config, "migrate").stdout.strip() == f"ledger already at {migrations.HEAD}"
    status = _cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert {r["id"]: r["instances"] for r in json.loads(status.stdout)} == SIZES


def test_serve_upgrades_the_ledger_at_start(node_factory: Any) -> None:
    node: NodeProcess = node_factory()
    node.var_dir.mkdir(parents=True)
    engine = db.make_engine(f"sqlite:///{node.var_dir / 'ledger.sqlite3'}")
    make_todays_ledger(engine)
    fill(engine)
    engine.dispose()
    node.start()
    assert f"ledger schema upgraded from {migrations.BASELINE} to {migrations.HEAD}" in node.log()
    assert {r["id"]: r["instances"] for r in node.status()} == SIZES
