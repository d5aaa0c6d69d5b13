"""Hostile text from a peer is harmless in the API: a study whose Patient Name, Series and Study
Description (and the caller's AE title) hold ``<script>`` and SQL fragments, received by a real
``dicom-node serve`` through storescu, comes back as the same values in JSON with ``<``, ``>``,
``&`` escaped, under the security headers; the SQL fragments as filter values give 422 or an
empty page, never a 500, and the tables are intact afterwards."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from tests.conftest import DICOM_NODE, free_port, run
from tests.web.spool_fixtures import patient_ct

SCRIPT = "<script>alert(1)</script>"
DROP = "'; DROP TABLE studies; --"
ALWAYS = "%' OR '1'='1"
#: a calling AE title (16 characters at most) with each character that must be escaped
CALLER = "<B>&X'--"
PASSWORD = "radiologist password 7"
ESCAPED = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


@pytest.fixture
def hostile_study(tmp_path: Path) -> pydicom.Dataset:
    ds = patient_ct(name=f"{SCRIPT}^{DROP}", study_description=ALWAYS)
    ds.SeriesDescription = f"{SCRIPT} {DROP} {ALWAYS}"
    ds.save_as(tmp_path / "hostile.dcm", enforce_file_format=True)
    return ds


def _raw_is_escaped(text: str) -> None:
    for char in ESCAPED:
        assert char not in text
    assert ESCAPED["<"] + "script" + ESCAPED[">"] in text


def _security_headers(r: httpx.Response) -> None:
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.integration
def test_hostile_values_come_back_escaped_and_harmless(
        node_factory: Any, hostile_study: pydicom.Dataset, tmp_path: Path) -> None:
    web_port = free_port()
    node = node_factory({"web": {"enabled": True, "port": web_port}})
    node.write_config()
    added = run([*DICOM_NODE, "--config", str(node.config), "user", "add", "rad", "--role",
                 "radiologist"], cwd=node.workdir, input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    node.start()
    node.storescu(tmp_path / "hostile.dcm", calling=CALLER)
    (row,) = node.status()
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
        login = client.post("/api/v1/session", json={"name": "rad", "password": PASSWORD})
        assert login.status_code == 200, login.text
        one = client.get(f"/api/v1/studies/{row['id']}")
        assert one.status_code == 200, one.text
        _security_headers(one)
        _raw_is_escaped(one.text)
        body = json.loads(one.text)  # still JSON, and the same values
        assert body["patient"]["name"] == f"{SCRIPT}^{DROP}"
        assert body["patient"]["study_description"] == ALWAYS
        assert body["calling_ae_title"] == CALLER
        listed = client.get("/api/v1/studies")
        _security_headers(listed)
        assert ESCAPED["<"] + "B" + ESCAPED[">"] + ESCAPED["&"] in listed.text
        assert [s["calling_ae_title"] for s in listed.json()["items"]] == [CALLER]

        answers = {}
        for name in ("calling_ae", "state", "since", "until", "before", "model", "triage"):
            for value in (DROP, ALWAYS, SCRIPT):
                r = client.get("/api/v1/studies", params={name: value})
                answers[(name, value)] = r.status_code
                assert r.status_code in (200, 422), (name, value, r.text)
                if r.status_code == 200:
                    assert r.json()["items"] == [], (name, value)
                assert "<script>" not in r.text  # a 422 that quotes the value escapes it
                assert r.headers["x-content-type-options"] == "nosniff"
        assert answers[("state", DROP)] == answers[("before", DROP)] == 422
        quoted = client.get("/api/v1/studies", params={"before": SCRIPT})  # 422 quoting it
        assert quoted.headers["content-type"] == "application/json"
        assert json.loads(quoted.text)["detail"][0]["input"] == SCRIPT
    # the tables are intact: the study, its instance and the users are all still there
    assert [r["study_instance_uid"] for r in node.status()] == [hostile_study.StudyInstanceUID]
    node.stop()
    with sqlite3.connect(node.var_dir / "ledger.sqlite3") as db:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("studies", "instances", "users", "audit")}
    assert counts["studies"] == counts["instances"] == counts["users"] == 1
    assert counts["audit"] >= 2  # the login and the identity view
