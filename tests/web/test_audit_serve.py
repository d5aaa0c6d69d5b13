"""The audit trail of a real ``dicom-node serve``: a login, a failed login, a storescu association
and an association the node rejects each arrive on a real UDP syslog socket as RFC 5424 carrying
a DICOM audit message that jing validates against the PS3.15 A.5.1 schema; the admin exports the
trail as CSV (others get 403), formula-like cells neutralised; no password, patient identity or
Study Instance UID reaches the node's log."""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from node.web.deps import CSRF_HEADER
from tests.conftest import DICOM_NODE, NodeProcess, free_port, run
from tests.core.test_audit import parse_syslog, validate
from tests.models.chest_phantom import chest_phantom, write_ct_series

PATIENT_ID, PATIENT_NAME = "MRN-5550123", "Audittest^Patient"
PASSWORDS = {"root": "admin password 12", "op": "operator password 1",
             "=SUM(1+1)": "formula password 1"}


def _user(node: NodeProcess, name: str, role: str) -> None:
    result = run([*DICOM_NODE, "--config", str(node.config), "user", "add", name, "--role", role],
                 cwd=node.workdir, input=PASSWORDS[name] + "\n")
    assert result.returncode == 0, result.stderr


def _receive(sock: socket.socket, until: Any, timeout: float = 30.0) -> list[bytes]:
    """Syslog messages off the socket until ``until(messages)`` holds (or the time is up)."""
    messages: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(messages):
        try:
            messages.append(sock.recv(65535))
        except TimeoutError:
            continue
    return messages


def _events(messages: list[bytes]) -> list[tuple[str, str, bytes]]:
    """(EventID, outcome, XML) of each message."""
    out = []
    for data in messages:
        _, xml = parse_syslog(data)
        event = re.search(rb'<EventID csd-code="(\d+)"', xml)
        outcome = re.search(rb'EventOutcomeIndicator="(\d+)"', xml)
        assert event and outcome, xml
        out.append((event.group(1).decode(), outcome.group(1).decode(), xml))
    return out


@pytest.mark.integration
def test_serve_sends_audit_messages_and_exports_csv(
        node_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "ct").mkdir()
    files = write_ct_series(chest_phantom(slices=3, size=64).volume, tmp_path / "ct")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = PATIENT_ID, PATIENT_NAME
        ds.save_as(path, enforce_file_format=True)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as repo:
        repo.bind(("127.0.0.1", 0))
        repo.settimeout(0.5)
        web_port = free_port()
        node = node_factory({
            "web": {"enabled": True, "port": web_port},
            "audit": {"enabled": True, "repository": f"127.0.0.1:{repo.getsockname()[1]}",
                      "interval_s": 0.2},
        })
        node.write_config()
        for name, role in (("root", "admin"), ("op", "operator"), ("=SUM(1+1)", "clinician")):
            _user(node, name, role)
        node.start()
        node.storescu(*files)
        assert node.echo(called="NOT_THE_NODE").returncode != 0  # rejected: called AE title
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
            bad = client.post("/api/v1/session", json={"name": "=SUM(1+1)", "password": "nope"})
            assert bad.status_code == 401
            r = client.post("/api/v1/session", json={"name": "root",
                                                      "password": PASSWORDS["root"]})
            assert r.status_code == 200, r.text
            csrf = r.json()["csrf_token"]
            wanted = {("110114", "0"), ("110114", "4"), ("110104", "0"), ("110113", "4")}
            messages = _receive(repo, lambda m: wanted <= {e[:2] for e in _events(m)})
            events = _events(messages)
            assert wanted <= {e[:2] for e in events}, [e[:2] for e in events]
            audit = client.get("/api/v1/audit", params={"action": "received"}).json()["items"]
            table = client.get("/api/v1/audit.csv")
            assert client.delete("/api/v1/session", headers={CSRF_HEADER: csrf}).status_code == 200
            assert _receive(repo, lambda m: any(b'csd-code="110123"' in x for x in m))
            client.cookies.clear()
            r = client.post("/api/v1/session", json={"name": "op", "password": PASSWORDS["op"]})
            assert r.status_code == 200
            assert client.get("/api/v1/audit.csv").status_code == 403
            assert client.get("/api/v1/audit").status_code == 403
            client.cookies.clear()
            assert client.get("/api/v1/audit.csv").status_code == 401
        node.stop()
    for _, _, xml in events:
        validate(xml, tmp_path)
    (received,) = [x for e, _, x in events if e == "110104"]
    assert study_uid.encode() in received  # the repository may hold it ...
    assert f'NumberOfInstances="{len(files)}"'.encode() in received
    assert b'AlternativeUserID="AETITLES=STORESCU"' in received
    (alert,) = [x for e, _, x in events if e == "110113"]
    assert b'csd-code="110126"' in alert and b"called ae not recognised" in alert
    logins = [x for e, _, x in events if e == "110114"]
    assert any(b'UserID="root"' in x and b'EventOutcomeIndicator="0"' in x for x in logins)
    for _, _, xml in events:
        assert PATIENT_ID.encode() not in xml and b"Audittest" not in xml
    # the API and the CSV name the job, never the study's UID
    (row,) = audit
    assert (row["instances"], row["calling_ae_title"], row["outcome"]) == (len(files),
                                                                           "STORESCU", "ok")
    assert isinstance(row["job"], int)
    assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert any(r["user"] == "'=SUM(1+1)" and r["outcome"] == "refused" for r in rows)
    assert {"login", "association", "received"} <= {r["action"] for r in rows}
    assert study_uid not in table.text
    log = node.log()
    for secret in [*PASSWORDS.values(), PATIENT_ID, "Audittest", study_uid, csrf]:
        assert secret not in log
