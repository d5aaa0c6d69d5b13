"""The lean C-STORE receive path: its bytes equal pynetdicom's, its header scan equals pydicom's."""

from __future__ import annotations

import glob
import io
import os
import time
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.scp import identify as ident
from node.scp._dimse_wire import file_meta, parse_command, store_response_pdu
from tests.conftest import NodeProcess
from tests.data import UID_PREFIX, ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_store_response_is_the_pdu_pynetdicom_would_send() -> None:
    sop_instance = generate_uid(UID_PREFIX)
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = 0xA900
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (p_data,) = msg.encode_msg(3, 16384)
    expected = P_DATA_TF()
    expected.from_primitive(p_data)
    mine = store_response_pdu(3, 7, CT, sop_instance, 0xA900)
    assert mine == expected.encode()
    command = parse_command(mine[12:])
    assert command[0x0900] == (0xA900).to_bytes(2, "little")


def test_file_meta_is_what_pynetdicom_writes() -> None:
    sop_instance = generate_uid(UID_PREFIX)
    theirs = io.BytesIO(b"\x00" * 128 + b"DICM")
    theirs.seek(0, 2)
    write_file_meta_info(theirs, create_file_meta(  # type: ignore[arg-type]
        sop_class_uid=UID(CT), sop_instance_uid=UID(sop_instance),
        transfer_syntax=ExplicitVRLittleEndian,
    ))
    assert file_meta(CT, sop_instance, ExplicitVRLittleEndian) == theirs.getvalue()


def _as_received(src: Path, dest: Path) -> tuple[str, str, str] | None:
    """Write ``src``'s data set behind the File Meta the node writes; its request's UIDs."""
    try:
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        start = 144 + int(ds.file_meta.FileMetaInformationGroupLength)
    except Exception:  # not a Part 10 file: nothing to compare
        return None
    sop_class, sop_instance = str(ds.get("SOPClassUID", CT)), str(ds.get("SOPInstanceUID", "1.2"))
    dest.write_bytes(file_meta(sop_class, sop_instance, syntax) + src.read_bytes()[start:])
    return sop_class, sop_instance, syntax


def _outcome(path: Path, request: tuple[str, str, str]) -> object:
    try:
        return ident.identify(path, *request)
    except ident.Unidentifiable as exc:
        return (str(exc), exc.status)


def test_hand_scan_identifies_as_pydicom_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = ct_series(tmp_path / "ct", 2) + sorted(
        Path(p) for p in glob.glob(os.path.join(os.path.dirname(pydicom.data.__file__),
                                                "test_files", "**", "*.dcm"), recursive=True)
    )
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's complaints about odd test files
        for i, src in enumerate(sources):
            request = _as_received(src, tmp_path / f"{i}.dcm")
            if request is not None:
                cases.append((tmp_path / f"{i}.dcm", request))
        with cases[0][0].open("rb") as fp:  # the CT series does take the hand scan
            assert ident._scan_header(fp, UID(cases[0][1][2])) is not None
        scanned = [_outcome(path, request) for path, request in cases]
        monkeypatch.setattr(ident, "_scan_header", lambda _fp, _ts: None)
        read = [_outcome(path, request) for path, request in cases]
    assert len(cases) > 50
    assert scanned == read


@pytest.mark.integration
def test_a_data_set_cut_off_by_an_abort_leaves_nothing_behind(node: NodeProcess) -> None:
    ae = AE(ae_title="CUTOFF")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = generate_uid(UID_PREFIX)
    req.Priority = 2
    req.DataSet = io.BytesIO(b"\x00" * 20000)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    context_id = assoc.accepted_contexts[0].context_id
    pdus = []
    for p_data in msg.encode_msg(context_id, 4096):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus.append(pdu.encode())
    raw = assoc.dul.socket.socket
    raw.sendall(b"".join(pdus[:3]))  # the command and two data fragments of five
    deadline = time.monotonic() + 10
    while not list((node.var_dir / "incoming").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((node.var_dir / "incoming").iterdir())  # the data set was being received
    assoc.abort()
    while list((node.var_dir / "incoming").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((node.var_dir / "incoming").iterdir()) == []
    assert node.status() == []
    assert node.echo().returncode == 0


@pytest.mark.integration
def test_a_pdu_announcing_gigabytes_is_aborted_not_allocated(node: NodeProcess) -> None:
    ae = AE(ae_title="HUGE")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(b"\x04\x00\xff\xff\xff\xf0" + b"\x00" * 64)
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert "P-DATA-TF PDU of 4294967280 bytes" in node.log()
    assert node.echo().returncode == 0
