"""Delivery with real peers: Orthanc and dcmtk storescp as PACS, a real MLLP listener as the
EMR, a real HTTP server and a real SMTP server for alerts, and the node as a real process.

Faults: a destination that is down and comes back, an EMR that rejects, an EMR that never
answers while the node is SIGKILLed, and a SIGKILL in the middle of a C-STORE batch. Every
result arrives, none is lost, and each object is stored once.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import hl7
import pydicom
import pytest

from node.hl7.listener import MllpListener
from tests.conftest import dcmtk, free_port
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.orthanc import orthanc  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENT_ID, ACCESSION, PATIENT_NAME = "MRN-0042137", "ACC-26-5561", "Testpatient^Delivery"
#: what the lung model builds for the phantom: SEG, SR, 1 SC per key slice, PDF, KOS
MODALITIES = {"SEG", "SR", "OT", "DOC", "KO"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    folder = tmp_path_factory.mktemp("phantom")
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, folder)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName, ds.AccessionNumber = PATIENT_ID, PATIENT_NAME, ACCESSION
        ds.save_as(path, enforce_file_format=True)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


@pytest.fixture(scope="module")
def urgent_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lung model with its triage threshold lowered, so the phantom's result is URGENT."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / "lung-ct", models / "lung-ct")
    manifest = models / "lung-ct" / "manifest.toml"
    text = manifest.read_text()
    text = re.sub(r"priority_above = [0-9.]+", "priority_above = 0.1", text)
    manifest.write_text(re.sub(r"urgent_above = [0-9.]+", "urgent_above = 0.2", text))
    return models


def _settings(models: Path, delivery: dict[str, Any]) -> dict[str, Any]:
    return {
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"},
        "delivery": {"poll_interval_s": 0.2, "timeout_s": 5.0, "retry_base_s": 0.3,
                     "retry_cap_s": 1.0, "max_attempts": 50, **delivery},
    }


def _outbox(node: Any) -> list[dict[str, Any]]:
    result = node.cli("status", "--outbox", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hooks", (_Hooks,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    messages: list[Any] = []

    class Keep(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            messages.append(message)

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, messages
    controller.stop()


def test_results_reach_the_pacs_the_emr_and_the_radiologist(
    node_factory, orthanc, study, urgent_models, webhook, smtp, tmp_path: Path,  # noqa: F811
) -> None:
    study_uid, files = study
    hook_url, hooks = webhook
    smtp_port, mails = smtp
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=tmp_path / "oru.txt") as emr:
        node = node_factory(_settings(urgent_models, {
            "dicom": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
            "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port,
                     "receiving_application": "EMR", "receiving_facility": "HOSP"}],
            "webhooks": [{"name": "reading-room", "url": hook_url}],
            "email": [{"name": "on-call", "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                       "sender": "node@example.org", "recipients": ["oncall@example.org"]}],
        }))
        node.start()
        node.storescu(*files)
        row = node.wait_state(study_uid, "DONE", "FAILED", timeout=120)
        assert row["state"] == "DONE", row
        assert len(emr.received) == 1
        oru = emr.received[0]

    # the PACS: every result object in the patient's own study, nothing de-identified
    (orthanc_study,) = orthanc.get("/studies")
    tags = orthanc.get(f"/studies/{orthanc_study}")
    assert tags["MainDicomTags"]["StudyInstanceUID"] == study_uid
    assert tags["PatientMainDicomTags"]["PatientID"] == PATIENT_ID
    modalities = {orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]
                  for s in tags["Series"]}
    assert modalities == MODALITIES
    assert [p for p in orthanc.get("/patients")] == [tags["ParentPatient"]]
    delivered = [i for i in _outbox(node) if i["kind"] == "dicom"]
    assert len(delivered) == len(orthanc.get("/instances"))
    assert all(i["state"] == "DELIVERED" and i["attempts"] == 1 for i in delivered)

    # the EMR: an ORU with the original identifiers, parsed by an independent parser
    msg = hl7.parse(oru.replace("\n", "\r"))
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert msg["PID.F3.R1.C1"] == PATIENT_ID
    assert ACCESSION in str(msg.segment("OBR"))
    assert str(msg.segment("OBR")[25]) == "P"
    assert any(str(s[8]) == "AA" for s in msg.segments("OBX"))  # urgent: critical flag

    # the radiologist: webhook and e-mail, without patient identifiers
    assert len(hooks) == 1 and hooks[0]["triage"] == "URGENT"
    assert hooks[0]["model"]["name"] == "lung-ct" and "study" not in hooks[0]
    assert len(mails) == 1 and "[URGENT]" in mails[0]["Subject"]
    for text in (json.dumps(hooks), mails[0].as_string(), node.log()):
        assert PATIENT_ID not in text and ACCESSION not in text and "Testpatient" not in text


def _storescp(port: int, out: Path, log: Path) -> subprocess.Popen[bytes]:
    out.mkdir(exist_ok=True)
    return subprocess.Popen(
        [dcmtk("storescp"), "-v", "-aet", "PACS", "-od", str(out), "+B", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"},
    )


def _received_uids(folder: Path) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                  for p in folder.iterdir())


def test_a_destination_down_for_a_while_gets_everything_once(
    node_factory, study, urgent_models, tmp_path: Path,
) -> None:
    study_uid, files = study
    port = free_port()
    node = node_factory(_settings(urgent_models, {
        "dicom": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}]}))
    node.start()
    node.storescu(*files)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for failed attempts against the closed port
        items = _outbox(node)
        if items and min(i["attempts"] for i in items) >= 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no retries seen: {_outbox(node)}")
    assert node.status()[0]["state"] == "BUILT"
    assert "no connection" in items[0]["last_error"]
    pacs = _storescp(port, tmp_path / "pacs", tmp_path / "storescp.log")
    try:
        row = node.wait_state(study_uid, "DONE", "FAILED", timeout=60)
    finally:
        pacs.terminate()
        pacs.wait()
    assert row["state"] == "DONE"
    expected = sorted(i["uid"] for i in _outbox(node))
    assert _received_uids(tmp_path / "pacs") == expected
    assert (tmp_path / "storescp.log").read_text().count("Received Store Request") == len(expected)


def test_an_emr_that_rejects_dead_letters_until_an_operator_retries(
    node_factory, study, urgent_models, tmp_path: Path,
) -> None:
    study_uid, files = study
    port = free_port()
    with MllpListener(host="127.0.0.1", port=port, mode="AR", out=tmp_path / "a.txt") as emr:
        node = node_factory(_settings(urgent_models, {
            "hl7": [{"name": "emr", "host": "127.0.0.1", "port": port, "on_reject": "fail"}]}))
        node.start()
        node.storescu(*files)
        row = node.wait_state(study_uid, "FAILED", "DONE", timeout=120)
        assert row["state"] == "FAILED"
        assert "delivery failed: oru (lung-ct) to emr: emr: ACK AR" in row["state_reason"]
        assert len(emr.received) == 1
        rejected = emr.received[0]
    table = node.cli("status").stdout
    assert "FAILED" in table and "1 failed" in table
    with MllpListener(host="127.0.0.1", port=port, mode="AA", out=tmp_path / "b.txt") as emr:
        result = node.cli("retry", "--all-failed")
        assert result.returncode == 0, result.stderr
        assert "re-queued (FAILED -> BUILT)" in result.stdout
        with sqlite3.connect(node.var_dir / "ledger.sqlite3") as ledger:
            audited = ledger.execute("SELECT user_name, address, outcome FROM audit "
                                     "WHERE action = 'retry'").fetchall()
        assert [(a, o) for _, a, o in audited] == [("cli", "ok")]
        assert audited[0][0].startswith("os:")
        assert node.wait_state(study_uid, "DONE", timeout=30)["state"] == "DONE"
        assert emr.received == [rejected]  # the same message, same control ID
    (item,) = _outbox(node)
    assert (item["state"], item["attempts"]) == ("DELIVERED", 1)


def test_sigkill_while_the_emr_is_silent_resumes_without_loss(
    node_factory, study, urgent_models, tmp_path: Path,
) -> None:
    study_uid, files = study
    port = free_port()
    settings = _settings(urgent_models, {
        "hl7": [{"name": "emr", "host": "127.0.0.1", "port": port}]})
    settings["delivery"]["timeout_s"] = 60.0
    with MllpListener(host="127.0.0.1", port=port, mode="silent", out=tmp_path / "a.txt") as emr:
        node = node_factory(settings)
        node.start()
        node.storescu(*files)
        deadline = time.monotonic() + 120
        while not emr.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emr.received, node.log()
        first = emr.received[0]
        node.kill()  # while the node waits for the ACK
    assert node.status()[0]["state"] == "DELIVERED"
    with MllpListener(host="127.0.0.1", port=port, mode="AA", out=tmp_path / "b.txt") as emr:
        node.start()
        assert node.wait_state(study_uid, "DONE", timeout=60)["state"] == "DONE"
        assert emr.received == [first]


def test_sigkill_in_the_middle_of_a_cstore_batch_loses_and_duplicates_nothing(
    node_factory, study, urgent_models, tmp_path: Path,
) -> None:
    """A slow PACS (a real DICOM peer that takes 0.7 s per object) and a SIGKILL after it
    stored two objects: after the restart every object arrives, and at most the one in flight
    at the kill arrives twice, with the same SOP Instance UID (a PACS stores it once)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received: list[str] = []

    def on_store(event: Any) -> int:
        time.sleep(0.7)
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="SLOWPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    study_uid, files = study
    try:
        node = node_factory(_settings(urgent_models, {
            "dicom": [{"name": "pacs", "ae_title": "SLOWPACS", "host": "127.0.0.1",
                       "port": port}]}))
        node.start()
        node.storescu(*files)
        deadline = time.monotonic() + 120
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        node.kill()
        at_kill = len(received)
        assert 2 <= at_kill < len(_outbox(node))
        node.start()
        assert node.wait_state(study_uid, "DONE", timeout=60)["state"] == "DONE"
    finally:
        server.shutdown()
    expected = sorted(i["uid"] for i in _outbox(node))
    assert sorted(set(received)) == expected
    assert len(received) - len(expected) <= 1


def test_stow_rs_to_orthanc_dicomweb(node_factory, study, urgent_models, tmp_path: Path) -> None:
    """The results by DICOMweb STOW-RS into Orthanc's DICOMweb plug-in; a STOW destination that
    is not there is retried; one that answers 404 (wrong URL) is a dead letter."""
    from tests.orthanc import OrthancProcess

    web = OrthancProcess(tmp_path / "orthanc", config={
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}).start()
    try:
        study_uid, files = study
        base = f"http://127.0.0.1:{web.http_port}"
        node = node_factory(_settings(urgent_models, {"stow": [
            {"name": "archive", "url": f"{base}/dicom-web/studies"},
            {"name": "wrong", "url": f"{base}/no-such-path/studies"}]}))
        node.start()
        node.storescu(*files)
        row = node.wait_state(study_uid, "FAILED", "DONE", timeout=120)
        items = _outbox(node)
        archive = [i for i in items if i["destination"] == "archive"]
        wrong = [i for i in items if i["destination"] == "wrong"]
        assert all(i["state"] == "DELIVERED" for i in archive), archive
        assert all(i["state"] == "FAILED" and "HTTP 404" in i["last_error"] for i in wrong)
        assert row["state"] == "FAILED" and "to wrong" in row["state_reason"]
        (orthanc_study,) = web.get("/studies")
        stored = web.get(f"/studies/{orthanc_study}/instances")
        assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in stored) == sorted(
            i["uid"] for i in archive)
    finally:
        web.stop()
