"""Crash safety with a real SIGKILL: every acknowledged instance survives, timers resume."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, select

from node.core import db
from tests.conftest import NodeProcess
from tests.data import ct_series

#: completed, and maybe already picked up by the pipeline's next stage
DONE_RECEIVING = ("COMPLETE", "DEIDENTIFIED")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def send_until_killed(node: NodeProcess, files: list[Path], kill_after: int) -> list[str]:
    """Send files one by one; SIGKILL the node once ``kill_after`` successes came back."""
    acknowledged: list[str] = []
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    killer = threading.Event()

    def kill_when_told() -> None:
        killer.wait()
        node.kill()

    t = threading.Thread(target=kill_when_told)
    t.start()
    for path in files:
        if not assoc.is_established:
            break
        rsp = assoc.send_c_store(path)
        if rsp and rsp.get("Status") == 0x0000:
            acknowledged.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            if len(acknowledged) == kill_after:
                killer.set()  # kill while the next instances are in flight
    killer.set()
    t.join()
    assoc.abort()
    return acknowledged


def ledger_paths(node: NodeProcess) -> dict[str, Path]:
    engine = create_engine(f"sqlite:///{node.var_dir / 'ledger.sqlite3'}")
    with engine.connect() as conn:
        rows = conn.execute(select(db.instances.c.sop_instance_uid, db.instances.c.path)).all()
    engine.dispose()
    return {uid: node.var_dir / "spool" / path for uid, path in rows}


def test_sigkill_during_a_300_instance_transfer_loses_nothing(node_factory, tmp_path: Path) -> None:
    node = node_factory({"completion": {"quiet_period_s": 2.0}})
    files = ct_series(tmp_path / "ct", 300)
    rng = random.Random(1234)
    acknowledged: set[str] = set()
    for kill_after in sorted(rng.sample(range(20, 280), 3)):
        node.start()
        acknowledged |= set(send_until_killed(node, files, kill_after))
        assert not node.alive()
        stored = ledger_paths(node)
        missing = acknowledged - stored.keys()
        assert not missing, f"{len(missing)} acknowledged instances are not in the ledger"
        for uid in acknowledged:
            assert pydicom.dcmread(stored[uid], stop_before_pixels=True).SOPInstanceUID == uid
    assert len(acknowledged) >= 3 * 20

    # restart: partial receptions are cleared, the quiet-period timer resumes, the study completes
    node.start()
    assert list((node.var_dir / "incoming").iterdir()) == []
    study_uid = node.status()[0]["study_instance_uid"]
    row = node.wait_state(study_uid, *DONE_RECEIVING)
    assert row["instances"] == len(ledger_paths(node))
    # the sender retries everything: the rest is stored, nothing twice, the study re-opens
    node.storescu(*files)
    row = node.wait_state(study_uid, *DONE_RECEIVING)
    assert row["instances"] == 300
    assert len(list((node.var_dir / "spool").rglob("*.dcm"))) == 300


def test_restart_after_lost_commits_restores_them_from_the_spool(node_factory, tmp_path: Path) -> None:
    """Power loss can roll back the last SQLite commits (synchronous=NORMAL); files are fsynced.

    Simulated: the node is SIGKILLed and the newest ledger rows are deleted, as a rollback would.
    """
    from sqlalchemy import delete

    node = node_factory({"completion": {"quiet_period_s": 1.0}})
    node.start()
    files = ct_series(tmp_path / "ct", 20)
    node.storescu(*files)
    node.kill()
    engine = create_engine(f"sqlite:///{node.var_dir / 'ledger.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(delete(db.instances).where(db.instances.c.id > 12))
    engine.dispose()
    assert len(ledger_paths(node)) == 12
    node.start()
    stored = ledger_paths(node)
    assert len(stored) == 20
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in stored.values()} == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert "20 spool files" not in node.log() and "8 spool files were missing" in node.log()
    row = node.wait_state(node.status()[0]["study_instance_uid"], *DONE_RECEIVING)
    assert row["instances"] == 20
    # a clean stop leaves no marker: the next start does not scan the spool
    node.stop()
    node.start()
    assert node.log().count("did not stop cleanly") == 1
