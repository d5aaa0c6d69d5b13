"""The C-STORE SCU against real peers: dcmtk's storescp and Orthanc."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.scp.sender import (
    Destination,
    DestinationRejected,
    DestinationUnavailable,
    classify_status,
    send,
)
from tests.conftest import _env, dcmtk, free_port
from tests.data import ct_series, sample_file
from tests.orthanc import orthanc  # noqa: F401

pytestmark = pytest.mark.integration


def start_storescp(out: Path, *options: str, aet: str = "STORESCP") -> tuple[subprocess.Popen[bytes], int]:
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", aet, "-od", str(out), "+xa", *options, str(port)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("storescp did not start")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    out = tmp_path / "received"
    proc, port = start_storescp(out)
    yield out, port
    proc.terminate()
    proc.wait(timeout=10)


def load(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def sample_objects() -> list[pydicom.Dataset]:
    # a real SEG (pydicom-data's liver.dcm) and a Comprehensive SR (pydicom's test-SR.dcm)
    return [pydicom.dcmread(sample_file("liver.dcm")), pydicom.dcmread(sample_file("test-SR.dcm"))]


def test_sends_ct_seg_sr_to_storescp(storescp: tuple[Path, int], tmp_path: Path) -> None:
    out, port = storescp
    datasets = load(ct_series(tmp_path / "ct", 20)) + sample_objects()
    outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), datasets)
    assert [o.result for o in outcomes] == ["delivered"] * len(datasets)
    assert [o.status for o in outcomes] == [0] * len(datasets)
    assert [o.sop_instance_uid for o in outcomes] == [str(d.SOPInstanceUID) for d in datasets]
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in out.iterdir()}
    assert received == {str(d.SOPInstanceUID) for d in datasets}


def test_sends_to_orthanc(orthanc: Any, tmp_path: Path) -> None:  # noqa: F811
    datasets = load(ct_series(tmp_path / "ct", 10)) + sample_objects()
    dest = Destination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    outcomes = send(dest, datasets)
    assert {o.result for o in outcomes} == {"delivered"}
    stored = set()
    for instance_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
        stored.add(tags["SOPInstanceUID"])
    assert stored == {str(d.SOPInstanceUID) for d in datasets}


def test_destination_down_is_unavailable(tmp_path: Path) -> None:
    datasets = load(ct_series(tmp_path / "ct", 1))
    port = free_port()  # nobody listens here
    with pytest.raises(DestinationUnavailable) as info:
        send(Destination("down", "NOBODY", "127.0.0.1", port), datasets, timeout_s=5)
    assert str(port) in str(info.value)


def test_wrong_called_ae_is_rejected(node: Any, tmp_path: Path) -> None:
    # The node itself (a real `dicom-node serve` process) rejects a called AE title that is not
    # its own with a permanent A-ASSOCIATE-RJ, reason 7. (storescp --refuse closes the connection
    # right after its A-ASSOCIATE-RJ, so pynetdicom sometimes sees an abort instead.)
    datasets = load(ct_series(tmp_path / "ct", 1))
    with pytest.raises(DestinationRejected) as info:
        send(Destination("node", "WRONG_AE", "127.0.0.1", node.port), datasets, timeout_s=10)
    message = str(info.value)
    assert "rejected permanently: called AE title not recognised" in message
    assert "WRONG_AE" in message and str(node.port) in message
    assert str(datasets[0].PatientID) not in message


@pytest.mark.parametrize(
    ("status", "result"),
    [(0x0000, "delivered"), (0xB000, "warning"), (0xB006, "warning"), (0xB007, "warning"),
     (0xA700, "transient"), (0xA7FF, "transient"), (0xA900, "permanent"),
     (0xC000, "permanent"), (0xCFFF, "permanent"), (0x0122, "permanent")],
)
def test_status_classification(status: int, result: str) -> None:
    assert classify_status(status)[0] == result
