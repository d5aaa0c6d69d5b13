"""A whole-study sender's release completes its study at once; nothing else does.

One node for the module, with ``completion.whole_study_senders = ["WHOLE"]``, a quiet period
and a sweep interval of 60 s (its first sweep runs at start): every sweep after that is one the
doorbell rang, so a study that completes within seconds completed on the release, and a study
that is still receiving after such a sweep was not completed by it. dcmtk's storescu sends
(it releases its association when done); pynetdicom aborts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from tests.conftest import NodeProcess
from tests.data import ct_series

pytestmark = pytest.mark.integration

WHOLE, OTHER = "WHOLE", "OTHER"
#: well under the sweep interval and the quiet period (60 s)
AT_ONCE_S = 5.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("release"), {"completion": {
        "whole_study_senders": [WHOLE], "quiet_period_s": 60.0, "sweep_interval_s": 60.0}})
    node.start()
    yield node
    node.stop()


def study(node: NodeProcess, uid: str) -> dict[str, Any]:
    """The study's row, read from the ledger here (``status`` is a process of its own)."""
    with sqlite3.connect(f"file:{node.var_dir / 'ledger.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT state, completion_reason, generation, instances, "
                         "last_received_at, completed_at FROM studies "
                         "WHERE study_instance_uid = ?", (uid,)).fetchone()
    assert row is not None, "study not in the ledger"
    return dict(row)


def completed(node: NodeProcess, uid: str, generation: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + AT_ONCE_S
    while time.monotonic() < deadline:
        row = study(node, uid)
        if row["generation"] == generation and row["state"] != "RECEIVING":
            return row
        time.sleep(0.05)
    pytest.fail(f"not completed within {AT_ONCE_S} s: {study(node, uid)}\n{node.log()}")


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def whole_study(node: NodeProcess, folder: Path, count: int = 2) -> str:
    """A new study sent by the whole-study sender; completed (on its release) when this returns."""
    files = ct_series(folder, count)
    node.storescu(*files, calling=WHOLE)
    uid = uid_of(files[0])
    row = completed(node, uid)
    assert (row["completion_reason"], row["instances"]) == ("released", count)
    return uid


def test_release_by_a_whole_study_sender_completes_at_once(node: NodeProcess,
                                                           tmp_path: Path) -> None:
    started = time.monotonic()
    whole_study(node, tmp_path / "a", 3)
    assert time.monotonic() - started < AT_ONCE_S


def test_a_peer_not_marked_waits_for_its_quiet_period(node: NodeProcess, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "b", 2)
    node.storescu(*files, calling=OTHER)
    whole_study(node, tmp_path / "c")  # its release rang a sweep that looked at both
    assert study(node, uid_of(files[0]))["state"] == "RECEIVING"


def test_an_abort_does_not_complete_the_study(node: NodeProcess, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "d", 2)
    ae = AE(ae_title=WHOLE)
    ae.add_requested_context(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    for path in files:
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.abort()
    whole_study(node, tmp_path / "e")  # a sweep after the abort
    row = study(node, uid_of(files[0]))
    assert (row["state"], row["instances"]) == ("RECEIVING", 2)


def test_a_late_arrival_reopens_the_study_until_its_own_release(node: NodeProcess,
                                                                tmp_path: Path) -> None:
    uid = whole_study(node, tmp_path / "f")
    late, later = ct_series(tmp_path / "g", 2, study_uid=uid)
    node.storescu(late, calling=OTHER)  # re-opened: a new generation, and the quiet period
    whole_study(node, tmp_path / "h")
    row = study(node, uid)
    assert (row["state"], row["generation"], row["instances"]) == ("RECEIVING", 2, 3)
    node.storescu(later, calling=WHOLE)  # the whole-study sender's release completes it again
    row = completed(node, uid, generation=2)
    assert (row["completion_reason"], row["instances"]) == ("released", 4)
