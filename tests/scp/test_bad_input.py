"""Bad input costs neither data nor availability: clear DIMSE failures, quarantine, node stays up."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import NodeProcess
from tests.data import UID_PREFIX, sample_file

pytestmark = pytest.mark.integration


@pytest.fixture
def raw_sender(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make pynetdicom send files' data set bytes as they are, even when they are garbage."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


def crafted(path: Path, body: bytes, *, sop_class: str = CTImageStorage, sop_uid: str | None = None) -> Path:
    """A file whose File Meta is fine and whose data set is ``body``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid(UID_PREFIX)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as f:
        f.write(body)
    return path


def encoded(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return bytes(buf.getvalue())


def associate(node: NodeProcess):
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)  # MR
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    return assoc


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unparseable_and_unidentifiable_data_are_quarantined(node: NodeProcess, tmp_path: Path, raw_sender: None) -> None:
    good = pydicom.dcmread(sample_file("CT_small.dcm"))
    no_study = copy.deepcopy(good)
    no_study.SOPInstanceUID = generate_uid(UID_PREFIX)
    del no_study.StudyInstanceUID
    wrong_class = copy.deepcopy(good)
    wrong_class.SOPInstanceUID = generate_uid(UID_PREFIX)
    wrong_class.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # says MR, request says CT
    bad_uid = copy.deepcopy(good)
    bad_uid.SOPInstanceUID = generate_uid(UID_PREFIX)
    bad_uid.StudyInstanceUID = "1.2.3.abc"

    cases = [
        ("garbage", crafted(tmp_path / "g.dcm", os.urandom(4000)), 0xC000),
        ("truncated", crafted(tmp_path / "t.dcm", encoded(good)[:333]), 0xC000),
        ("no study", crafted(tmp_path / "n.dcm", encoded(no_study), sop_uid=no_study.SOPInstanceUID), 0xC000),
        ("wrong class", crafted(tmp_path / "w.dcm", encoded(wrong_class), sop_uid=wrong_class.SOPInstanceUID), 0xA900),
        ("bad uid", crafted(tmp_path / "b.dcm", encoded(bad_uid), sop_uid=bad_uid.SOPInstanceUID), 0xC000),
    ]
    assoc = associate(node)
    statuses = {}
    for name, path, _ in cases:
        statuses[name] = assoc.send_c_store(path).Status
    # the same association carries on and stores a good instance
    assert assoc.send_c_store(good).Status == 0x0000
    assoc.release()
    assert statuses == {name: status for name, _, status in cases}

    rows = node.quarantine()
    assert len(rows) == len(cases)
    reasons = [r["reason"] for r in rows]
    assert "StudyInstanceUID is missing or empty" in reasons
    assert "StudyInstanceUID is not a valid UID" in reasons
    assert any("SOPClassUID in the data set differs" in r for r in reasons)
    # every quarantined object is kept byte for byte
    for (name, path, _), row in zip(cases, rows, strict=True):
        kept = node.var_dir / "quarantine" / row["file"]
        assert kept.read_bytes()[-200:] == path.read_bytes()[-200:], name
        assert row["calling_ae_title"] == "HOSTILE"
    (study,) = node.status()
    assert study["instances"] == 1
    assert "5 quarantined objects" in node.cli("status").stdout
    assert node.alive()


def test_out_of_disk_answers_a700_and_writes_nothing(node_factory, tmp_path: Path) -> None:
    node = node_factory({"scp": {"min_free_disk_mb": 1024 * 1024 * 1024}}).start()  # 1 PiB
    assoc = associate(node)
    status = assoc.send_c_store(pydicom.dcmread(sample_file("CT_small.dcm"))).Status
    assoc.release()
    assert status == 0xA700
    assert node.status() == []
    assert list((node.var_dir / "spool").rglob("*.dcm")) == []
    assert list((node.var_dir / "incoming").iterdir()) == []
    assert "below the configured minimum" in node.log()
    assert node.alive()


def test_hostile_peers_do_not_take_the_node_down(node: NodeProcess) -> None:
    # 1. bytes that are not a DICOM PDU at all
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        s.settimeout(5)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            s.recv(100)
    # 2. an association that dies in the middle of a data set
    assoc = associate(node)
    raw = assoc.dul.socket.socket
    pdv = b"\x02" + b"\x00" * 1000  # data set fragment, not last
    pdu = struct.pack(">BBL", 0x04, 0, 4 + 2 + len(pdv) - 0) + struct.pack(">LB", len(pdv) + 1, 1) + pdv
    raw.sendall(pdu[: len(pdu) // 2])
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    assoc.abort()
    # 3. a connection that opens and says nothing is closed by the node's timeouts (not waited for)
    idle = socket.create_connection(("127.0.0.1", node.port))
    time.sleep(0.5)
    assert node.alive()
    assert node.echo().returncode == 0
    node.storescu(sample_file("CT_small.dcm"))
    (study,) = node.status()
    assert study["instances"] == 1
    idle.close()
