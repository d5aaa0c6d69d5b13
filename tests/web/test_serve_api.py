"""The API of a real ``dicom-node serve``: a user made with ``dicom-node user add`` logs in,
sees the job whose result the EMR rejected (FAILED), retries it through the API, and the retry
is in the audit trail and reaches the audit repository (a real syslog socket) as a DICOM audit
message that the PS3.15 A.5.1 schema accepts; no password, token or patient identity reaches
the node's log."""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from node.hl7.listener import MllpListener
from node.web.deps import CSRF_HEADER
from tests.conftest import DICOM_NODE, REPO, NodeProcess, free_port, run
from tests.core.test_audit import validate
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.web.test_audit_serve import _events, _receive

PATIENT_ID, PATIENT_NAME = "MRN-7781235", "Apitest^Patient"
PASSWORDS = {"op": "operator password 1", "root": "admin password 12"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    folder = tmp_path_factory.mktemp("phantom")
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, folder)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = PATIENT_ID, PATIENT_NAME
        ds.save_as(path, enforce_file_format=True)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / "lung-ct", folder / "lung-ct")
    return folder


def _user(node: NodeProcess, name: str, role: str) -> None:
    result = run([*DICOM_NODE, "--config", str(node.config), "user", "add", name, "--role", role],
                 cwd=node.workdir, input=PASSWORDS[name] + "\n")
    assert result.returncode == 0, result.stderr
    assert PASSWORDS[name] not in result.stdout + result.stderr


def _login(client: httpx.Client, name: str) -> str:
    r = client.post("/api/v1/session", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def _wait(client: httpx.Client, job: int, state: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/v1/studies/{job}").json()
        if body["state"] == state:
            return body
        time.sleep(0.3)
    pytest.fail(f"job {job} not {state}: {body['state']}")


@pytest.mark.integration
def test_a_user_retries_a_failed_delivery_through_the_api_of_serve(
        node_factory: Any, study: tuple[str, list[Path]], models: Path, tmp_path: Path) -> None:
    study_uid, files = study
    emr_port, web_port = free_port(), free_port()
    repo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the audit repository
    repo.bind(("127.0.0.1", 0))
    repo.settimeout(0.5)
    node = node_factory({
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"},
        "delivery": {"poll_interval_s": 0.2, "timeout_s": 5.0, "retry_base_s": 0.3,
                     "retry_cap_s": 1.0, "max_attempts": 50,
                     "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr_port,
                              "on_reject": "fail"}]},
        "web": {"enabled": True, "port": web_port},
        "audit": {"enabled": True, "repository": f"127.0.0.1:{repo.getsockname()[1]}",
                  "interval_s": 0.2},
    })
    node.write_config()
    _user(node, "op", "operator")
    _user(node, "root", "admin")
    with MllpListener(host="127.0.0.1", port=emr_port, mode="AR", out=tmp_path / "a.hl7"):
        node.start()
        node.storescu(*files)
        node.wait_state(study_uid, "FAILED", "DONE", timeout=120)
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
        assert client.get("/readyz").json()["ready"] is True
        assert client.get("/api/v1/studies").status_code == 401
        csrf = _login(client, "op")
        (job,) = client.get("/api/v1/studies", params={"state": "FAILED"}).json()["items"]
        assert job["study_instance_uid"] == study_uid
        detail = client.get(f"/api/v1/studies/{job['id']}").json()
        assert [(s["modality"], s["instances"]) for s in detail["series"]] == [("CT", 48)]
        (oru,) = [i for i in detail["outbox"] if i["kind"] == "hl7"]
        assert (oru["state"], oru["attempts"]) == ("FAILED", 1) and "AR" in oru["last_error"]
        assert detail["timeline"][-1]["to"] == "FAILED"
        (model,) = client.get("/api/v1/models").json()["items"]
        manifest = (models / "lung-ct" / "manifest.toml").read_text()
        assert model["name"] == "lung-ct" and model["checksum"] in manifest
        assert client.get("/api/v1/audit").status_code == 403  # operators see no audit
        with MllpListener(host="127.0.0.1", port=emr_port, mode="AA", out=tmp_path / "b.hl7"):
            r = client.post(f"/api/v1/studies/{job['id']}/retry", headers={CSRF_HEADER: csrf})
            assert r.status_code == 200, r.text
            assert "re-queued (FAILED -> BUILT)" in r.json()["result"]
            done = _wait(client, job["id"], "DONE")
        (oru,) = [i for i in done["outbox"] if i["kind"] == "hl7"]
        assert (oru["state"], oru["attempts"]) == ("DELIVERED", 1)  # a retry starts anew
        client.cookies.clear()
        _login(client, "root")
        audit = client.get("/api/v1/audit").json()["items"]
    (retry,) = [a for a in audit if a["action"] == "retry"]
    assert (retry["user"], retry["role"], retry["job"], retry["outcome"], retry["address"]) == \
        ("op", "operator", job["id"], "ok", "127.0.0.1")
    assert [a["user"] for a in audit if a["action"] == "login"] == ["root", "op"]
    with repo:
        messages = _receive(repo, lambda m: any(e[0] == "110103" for e in _events(m)))
    (accessed,) = [x for e, _, x in _events(messages) if e == "110103"]
    validate(accessed, tmp_path)
    for said in (b'UserID="op"', b'UserIsRequestor="true"', b'EventActionCode="U"',
                 b"re-queued (FAILED -&gt; BUILT)", study_uid.encode()):
        assert said in accessed, (said, accessed)
    assert PATIENT_ID.encode() not in accessed and b"Apitest" not in accessed
    node.stop()
    log = node.log()
    assert "web API on http://127.0.0.1:" in log
    for secret in [*PASSWORDS.values(), csrf, PATIENT_ID, "Apitest"]:
        assert secret not in log
    assert not re.search(r"dicom_node_session=\S+", log)
