"""The C-STORE SCU against real peers: dcmtk's storescp and Orthanc; files and data sets."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset

from node.scp import _store_wire as store_wire
from node.scp._store_wire import StoreResponse, parse_store_response, store_command
from node.scp.file_meta import NotPart10, read_file_meta
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


# a real SEG (pydicom-data's liver.dcm) and a Comprehensive SR (pydicom's test-SR.dcm)
SAMPLES = ("liver.dcm", "test-SR.dcm")
# the same in other transfer syntaxes: JPEG 2000 (Secondary Capture) and Deflated Explicit VR LE
OTHER_SYNTAXES = ("JPEG2000.dcm", "image_dfl.dcm")


def sample_objects() -> list[pydicom.Dataset]:
    return load([sample_file(name) for name in SAMPLES])


def received_by_uid(out: Path) -> dict[str, pydicom.Dataset]:
    found = {}
    for path in out.iterdir():
        ds = pydicom.dcmread(path)
        found[str(ds.SOPInstanceUID)] = ds
    return found


@pytest.mark.parametrize("kind", ["paths", "datasets"])
def test_sends_ct_seg_sr_to_storescp(storescp: tuple[Path, int], tmp_path: Path, kind: str) -> None:
    out, port = storescp
    paths = ct_series(tmp_path / "ct", 20) + [sample_file(name) for name in SAMPLES]
    originals = load(paths)
    items: list[Any] = paths if kind == "paths" else originals
    outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), items)
    assert [o.result for o in outcomes] == ["delivered"] * len(items)
    assert [o.status for o in outcomes] == [0] * len(items)
    assert [o.sop_instance_uid for o in outcomes] == [str(d.SOPInstanceUID) for d in originals]
    received = received_by_uid(out)
    assert set(received) == {str(d.SOPInstanceUID) for d in originals}
    for ds in originals:  # every element arrived as it was, pixel data included
        assert received[str(ds.SOPInstanceUID)] == ds


def test_sends_files_in_their_own_transfer_syntax(storescp: tuple[Path, int]) -> None:
    out, port = storescp
    paths = [sample_file(name) for name in OTHER_SYNTAXES]
    outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), paths)
    assert [o.result for o in outcomes] == ["delivered", "delivered"]
    received = received_by_uid(out)
    for path in paths:
        original = pydicom.dcmread(path)
        got = received[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got == original


@pytest.mark.parametrize("max_pdu", ["4096", "131072"])
def test_framing_follows_the_peers_max_pdu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pdu: str
) -> None:
    # small write blocks: a 526 KB file goes out in several, each framed to storescp's max PDU
    monkeypatch.setattr(store_wire, "WRITE_BLOCK", 50_000)
    out = tmp_path / "received"
    proc, port = start_storescp(out, "--max-pdu", max_pdu)
    try:
        paths = ct_series(tmp_path / "ct", 3) + [sample_file(n) for n in OTHER_SYNTAXES]
        outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), paths)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert {o.result for o in outcomes} == {"delivered"}
    received = received_by_uid(out)
    for path in paths:
        original = pydicom.dcmread(path)
        assert received[str(original.SOPInstanceUID)] == original


def test_converts_a_file_when_its_transfer_syntax_is_not_accepted(tmp_path: Path) -> None:
    # storescp +xi accepts Implicit VR Little Endian only: the Explicit VR files are decoded and
    # sent in the fallback context, converted by pynetdicom
    out = tmp_path / "received"
    proc, port = start_storescp(out, "+xi")
    try:
        paths = [*ct_series(tmp_path / "ct", 3), sample_file("liver.dcm")]
        outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), paths)
        # a JPEG 2000 file cannot be converted: permanent, and the batch goes on
        outcomes += send(Destination("storescp", "STORESCP", "127.0.0.1", port),
                         [sample_file("JPEG2000.dcm"), paths[0]])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [o.result for o in outcomes] == ["delivered"] * 4 + ["permanent", "delivered"]
    assert "no accepted presentation context for Secondary Capture Image Storage in JPEG 2000" \
        in outcomes[4].detail
    received = received_by_uid(out)
    for path in paths:
        original = pydicom.dcmread(path)
        got = received[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert got.PixelData == original.PixelData


def test_unreadable_files_are_permanent_and_the_rest_is_sent(
    storescp: tuple[Path, int], tmp_path: Path
) -> None:
    out, port = storescp
    ct = ct_series(tmp_path / "ct", 2)
    text = tmp_path / "report.txt"
    text.write_text("not DICOM at all\n" * 50)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct[0].read_bytes()[:140])  # preamble, DICM, then the file ends
    missing = tmp_path / "gone.dcm"
    no_uids = pydicom.Dataset()  # a data set without SOP Class / Instance UID
    items: list[Any] = [ct[0], text, empty, truncated, missing, no_uids, ct[1]]
    outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), items)
    assert [o.result for o in outcomes] == \
        ["delivered", "permanent", "permanent", "permanent", "permanent", "permanent", "delivered"]
    assert outcomes[1].detail == "not a readable DICOM file"
    assert outcomes[1].sop_instance_uid == "" and outcomes[1].status is None
    assert outcomes[4].detail.startswith("file not readable: FileNotFoundError")
    assert str(tmp_path) not in " ".join(o.detail for o in outcomes)  # no file names
    assert set(received_by_uid(out)) == {o.sop_instance_uid for o in outcomes
                                         if o.result == "delivered"}


@pytest.mark.parametrize("option", ["--abort-after", "--abort-during"])
def test_peer_abort_ends_the_batch_promptly(tmp_path: Path, option: str) -> None:
    out = tmp_path / "received"
    proc, port = start_storescp(out, option)
    try:
        paths = ct_series(tmp_path / "ct", 3)
        start = time.monotonic()
        outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port), paths)
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [o.result for o in outcomes] == ["transient"] * 3
    assert outcomes[0].detail in ("no response (timeout or association aborted)",
                                  "association failed: BrokenPipeError",
                                  "association failed: ConnectionResetError")
    assert [o.detail for o in outcomes[1:]] == ["not sent: association ended"] * 2
    assert elapsed < 10  # not the 30 s DIMSE timeout


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storescp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_sends_files_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    out = tmp_path / "received"
    proc, port = start_storescp(out, "+tls", str(key), str(cert), "-pw", "-ic")
    try:
        context = ssl.create_default_context(cafile=str(cert))
        paths = ct_series(tmp_path / "ct", 5) + [sample_file(n) for n in OTHER_SYNTAXES]
        outcomes = send(Destination("tls", "STORESCP", "127.0.0.1", port, tls=context), paths)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert {o.result for o in outcomes} == {"delivered"}
    received = received_by_uid(out)
    for path in paths:
        original = pydicom.dcmread(path)
        assert received[str(original.SOPInstanceUID)] == original


def test_each_outcome_is_reported_as_soon_as_known(
    storescp: tuple[Path, int], tmp_path: Path
) -> None:
    out, port = storescp
    ct = ct_series(tmp_path / "ct", 3)
    text = tmp_path / "report.txt"
    text.write_text("not DICOM")
    seen: list[tuple[int, str, int]] = []

    def on_outcome(index: int, outcome: Any) -> None:
        # the instance just answered is at the peer already, the next one is not
        seen.append((index, outcome.result, sum(1 for _ in out.iterdir())))

    outcomes = send(Destination("storescp", "STORESCP", "127.0.0.1", port),
                    [ct[0], text, ct[1], ct[2]], on_outcome=on_outcome)
    assert seen == [(0, "delivered", 1), (1, "permanent", 1), (2, "delivered", 2),
                    (3, "delivered", 3)]
    assert [o.result for o in outcomes] == [r for _, r, _ in seen]


def test_nothing_readable_needs_no_association(tmp_path: Path) -> None:
    text = tmp_path / "report.txt"
    text.write_text("not DICOM")
    port = free_port()  # nobody listens here: no association is attempted
    outcomes = send(Destination("down", "NOBODY", "127.0.0.1", port), [text], timeout_s=5)
    assert [o.result for o in outcomes] == ["permanent"]


@pytest.mark.parametrize("kind", ["paths", "datasets"])
def test_sends_to_orthanc(orthanc: Any, tmp_path: Path, kind: str) -> None:  # noqa: F811
    paths = ct_series(tmp_path / "ct", 10) + [sample_file(name) for name in SAMPLES]
    datasets = load(paths)
    dest = Destination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    outcomes = send(dest, paths if kind == "paths" else datasets)
    assert {o.result for o in outcomes} == {"delivered"}
    stored = set()
    for instance_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
        stored.add(tags["SOPInstanceUID"])
    assert stored == {str(d.SOPInstanceUID) for d in datasets}


def test_file_meta_reader_agrees_with_pydicom() -> None:
    names = ["693_UNCR.dcm", *SAMPLES, *OTHER_SYNTAXES, "CT_small.dcm", "MR_small_bigendian.dcm"]
    for name in names:
        path = sample_file(name)
        meta, offset = split_dataset(path)
        got = read_file_meta(path)
        assert (got.sop_class, got.sop_instance, got.tsyntax, got.offset) == (
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
            meta.TransferSyntaxUID, offset), name


def test_file_meta_reader_rejects_what_is_not_part10(tmp_path: Path) -> None:
    good = sample_file("CT_small.dcm").read_bytes()
    no_group_length = tmp_path / "a.dcm"
    no_group_length.write_bytes(good[:132] + good[144:])
    wrong_group_length = tmp_path / "b.dcm"
    wrong_group_length.write_bytes(good[:140] + (4).to_bytes(4, "little") + good[144:])
    for path in (no_group_length, wrong_group_length):
        with pytest.raises(NotPart10):
            read_file_meta(path)


def test_store_command_is_what_pynetdicom_encodes() -> None:
    sop_class, sop_instance = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.55"  # odd length: padded
    req = C_STORE()
    req.MessageID, req.Priority = 7, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, sop_instance
    req.DataSet = BytesIO(b"x")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    assert store_command(7, sop_class, sop_instance) == encode(message.command_set, True, True)


def test_parse_store_response() -> None:
    rsp = pydicom.Dataset()
    rsp.CommandGroupLength = 0
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.CommandField = 0x8001
    rsp.MessageIDBeingRespondedTo = 7
    rsp.CommandDataSetType = 0x0101
    rsp.Status = 0xB000
    rsp.AffectedSOPInstanceUID = "1.2.3.4.55"
    data = encode(rsp, True, True)
    assert data is not None
    assert parse_store_response(data) == StoreResponse(7, 0xB000)
    assert parse_store_response(data[:-3]) is None  # truncated
    rsp.CommandField = 0x8020  # a C-FIND-RSP
    other = encode(rsp, True, True)
    assert other is not None and parse_store_response(other) is None


def test_destination_down_is_unavailable(tmp_path: Path) -> None:
    datasets = load(ct_series(tmp_path / "ct", 1))
    port = free_port()  # nobody listens here
    with pytest.raises(DestinationUnavailable) as info:
        send(Destination("down", "NOBODY", "127.0.0.1", port), datasets, timeout_s=5)
    assert str(port) in str(info.value)
    assert "no connection (refused, unreachable or timed out)" in str(info.value)


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
