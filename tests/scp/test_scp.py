"""The SCP against real senders: dcmtk storescu/echoscu and pynetdicom, several at once."""

from __future__ import annotations

import concurrent.futures
import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.conftest import NodeProcess
from tests.data import UID_PREFIX, ct_series, sample_file

pytestmark = pytest.mark.integration

# pydicom / pydicom-data test files, one per transfer syntax, with dcmtk storescu's option that
# proposes it (storescu proposes only uncompressed syntaxes unless told otherwise).
TRANSFER_SYNTAXES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1", ()),
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", ("-xi",)),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", ("-xd",)),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", ("-xy",)),
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", ("-xx",)),
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", ("-xs",)),
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", ("-xt",)),
    ("emri_small_jpeg_2k_lossless.dcm", "1.2.840.10008.1.2.4.90", ("-xv",)),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", ("-xw",)),
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5", ("-xr",)),
]


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta group: what went over the wire."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_end:]


def spooled(node: NodeProcess) -> list[Path]:
    return sorted((node.var_dir / "spool").rglob("*.dcm"))


def test_echo_answers(node: NodeProcess) -> None:
    assert node.echo().returncode == 0
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def fresh_copies(tmp_path: Path) -> list[tuple[Path, str, tuple[str, ...]]]:
    """Copies of the test files with their own SOP Instance UIDs (some share one), same syntax."""
    out = []
    for name, ts_uid, options in TRANSFER_SYNTAXES:
        ds = pydicom.dcmread(sample_file(name))
        assert str(ds.file_meta.TransferSyntaxUID) == ts_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_PREFIX)
        path = tmp_path / f"{name}"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, ts_uid, options))
    return out


def same_content(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    """Equal but for what a sender may drop: trailing padding and group lengths."""
    def strip(ds: pydicom.Dataset) -> dict[int, object]:
        return {e.tag: e.value for e in ds if e.tag != 0xFFFCFFFC and e.tag.element != 0}
    return strip(a) == strip(b)


def test_every_common_transfer_syntax_from_dcmtk(node: NodeProcess, tmp_path: Path) -> None:
    files = fresh_copies(tmp_path)
    for path, _ts, options in files:
        node.storescu(path, options=options)
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in spooled(node)}
    assert len(stored) == len(files)
    for path, ts_uid, _options in files:
        original = pydicom.dcmread(path)
        copy = pydicom.dcmread(stored[original.SOPInstanceUID])
        assert str(copy.file_meta.TransferSyntaxUID) == ts_uid
        assert same_content(copy, original)
        assert original.SOPInstanceUID not in stored[original.SOPInstanceUID].name  # no UIDs in names
    assert sum(s["instances"] for s in node.status()) == len(files)


def test_stored_bytes_are_exactly_the_bytes_received(node: NodeProcess, tmp_path: Path) -> None:
    """pynetdicom sends a file's data set bytes as they are: the spool must hold the same."""
    files = fresh_copies(tmp_path)
    ae = AE(ae_title="PYNETDICOM")
    for path, ts_uid, _ in files:
        ae.add_requested_context(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID, ts_uid)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    for path, _ts, _ in files:
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in spooled(node)}
    for path, _ts, _ in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert hashlib.sha256(dataset_bytes(stored[uid])).digest() == hashlib.sha256(dataset_bytes(path)).digest()


def test_same_instance_twice_is_stored_once(node: NodeProcess) -> None:
    path = sample_file("CT_small.dcm")
    node.storescu(path)
    node.storescu(path)
    (study,) = node.status()
    assert (study["instances"], study["duplicates"]) == (1, 1)
    assert len(spooled(node)) == 1


def test_several_associations_at_once_across_receivers(node_factory, tmp_path: Path) -> None:
    node = node_factory({"scp": {"receivers": 2}}).start()
    files = ct_series(tmp_path / "ct", 60)
    chunks = [files[i::4] for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: node.storescu(*c, check=False), chunks))
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    (study,) = node.status()
    assert study["instances"] == 60
    assert len(spooled(node)) == 60
    node.stop()  # SIGTERM: a clean, quick stop of the main process and its receivers
    assert node.proc is not None and node.proc.returncode == 0
    assert node.log().rstrip().endswith("stopped")


def test_pynetdicom_sender_gets_success_and_the_data_is_on_disk(node: NodeProcess) -> None:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (path,) = spooled(node)
    assert pydicom.dcmread(path).PixelData == ds.PixelData
    (study,) = node.status()
    assert study["study_instance_uid"] == ds.StudyInstanceUID
    assert study["calling_ae_title"] == "PYNETDICOM"


def test_status_json_and_table(node: NodeProcess) -> None:
    node.storescu(sample_file("CT_small.dcm"))
    (row,) = node.status()
    for key in ("study_instance_uid", "state", "instances", "received_at", "completed_at"):
        assert key in row
    assert row["state"] == "RECEIVING" and row["completed_at"] is None
    assert row["received_at"].endswith("Z")
    table = node.cli("status")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STUDY", "INSTANCE", "UID"]
    assert row["study_instance_uid"] in lines[1] and "RECEIVING" in lines[1]
    assert "1 studies; 0 quarantined objects" in table.stdout
