"""The quarantine through the API and through ``dicom-node quarantine``: listed page by page
without patient data, released as a received instance (or kept, with the new reason, when
still refused), deleted with its file; every action in the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from node.core.accounts import Role
from node.web.deps import CSRF_HEADER
from tests.conftest import DICOM_NODE, free_port, run, write_config
from tests.web.spool_fixtures import (
    PATIENT,
    SpoolApi,
    encoded,
    garbage_after_meta,
    patient_ct,
    quarantine,
    spool_api,
)


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def sapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpoolApi]:
    with spool_api(tmp_path, encrypt=request.param) as api:
        yield api


def _audit(api: SpoolApi) -> list[dict[str, object]]:
    api.client.cookies.clear()
    api.login(Role.ADMIN)
    items: list[dict[str, object]] = api.client.get("/api/v1/audit").json()["items"]
    return items


def test_the_list_is_paged_newest_first_and_holds_no_patient_data(sapi: SpoolApi) -> None:
    ds = patient_ct()
    ids = [quarantine(sapi, encoded(ds), f"internal error ({n})", ds) for n in range(3)]
    sapi.login(Role.OPERATOR)
    first = sapi.client.get("/api/v1/quarantine", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [i["id"] for i in page["items"]] == [ids[2], ids[1]]
    item = page["items"][0]
    assert set(item) == {"id", "received_at", "reason", "size_bytes", "sop_class_uid",
                         "calling_ae_title"}
    assert (item["reason"], item["sop_class_uid"], item["calling_ae_title"]) == \
        ("internal error (2)", ds.SOPClassUID, "CT1")
    assert item["size_bytes"] == len(encoded(ds)) and item["received_at"].endswith("Z")
    rest = sapi.client.get("/api/v1/quarantine",
                           params={"limit": 2, "before": page["next_before"]}).json()
    assert ([i["id"] for i in rest["items"]], rest["next_before"]) == ([ids[0]], None)
    for value in PATIENT.values():
        assert value not in first.text


def test_a_release_takes_the_object_in_as_a_received_instance(sapi: SpoolApi) -> None:
    ds = patient_ct()
    qid = quarantine(sapi, encoded(ds), "internal error (OSError)", ds)
    kept = sapi.spool.quarantined(sapi.ledger.quarantine_entry(qid).path)  # type: ignore[union-attr]
    assert kept.exists()
    csrf = sapi.login(Role.OPERATOR)
    r = sapi.client.post(f"/api/v1/quarantine/{qid}/release", headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.text
    job = sapi.ledger.study(ds.StudyInstanceUID)
    assert r.json() == {"id": qid, "outcome": "stored", "job": job.id}
    assert (job.state, job.instances, job.calling_ae_title) == ("RECEIVING", 1, "CT1")
    (relative,) = sapi.ledger.instance_paths(job.id)
    placed = sapi.spool.open_dataset(relative)
    assert placed.SOPInstanceUID == ds.SOPInstanceUID  # the same object, now in the spool
    assert sapi.ledger.quarantine_entry(qid) is None and not kept.exists()
    assert sapi.client.post(f"/api/v1/quarantine/{qid}/release",
                            headers={CSRF_HEADER: csrf}).status_code == 404
    (record,) = [a for a in _audit(sapi) if a["action"] == "quarantine-release"]
    assert (record["user"], record["outcome"], record["job"]) == ("operator", "ok", job.id)


def test_an_object_still_refused_stays_quarantined_with_the_new_reason(
        sapi: SpoolApi) -> None:
    ds = patient_ct()
    qid = quarantine(sapi, garbage_after_meta(ds), "internal error (KeyError)", ds)
    csrf = sapi.login(Role.ADMIN)
    r = sapi.client.post(f"/api/v1/quarantine/{qid}/release", headers={CSRF_HEADER: csrf})
    assert r.status_code == 409, r.text
    assert "still refused" in r.json()["detail"]
    row = sapi.ledger.quarantine_entry(qid)
    assert row is not None and row.reason != "internal error (KeyError)"
    assert row.reason in r.json()["detail"]
    assert sapi.spool.quarantined(row.path).exists()
    assert sapi.ledger.studies() == []
    assert list(sapi.spool.incoming.iterdir()) == []  # the attempt left nothing behind
    (record,) = [a for a in _audit(sapi) if a["action"] == "quarantine-release"]
    assert record["outcome"] == "refused"


def test_delete_removes_the_file_and_the_row(sapi: SpoolApi) -> None:
    ds = patient_ct()
    qid = quarantine(sapi, garbage_after_meta(ds), "not a DICOM data set", ds)
    kept = sapi.spool.quarantined(sapi.ledger.quarantine_entry(qid).path)  # type: ignore[union-attr]
    csrf = sapi.login(Role.RADIOLOGIST)
    assert sapi.client.delete(f"/api/v1/quarantine/{qid}",
                              headers={CSRF_HEADER: csrf}).status_code == 403
    sapi.client.cookies.clear()
    csrf = sapi.login(Role.OPERATOR)
    assert sapi.client.delete(f"/api/v1/quarantine/{qid}").status_code == 403  # no CSRF token
    r = sapi.client.delete(f"/api/v1/quarantine/{qid}", headers={CSRF_HEADER: csrf})
    assert (r.status_code, r.json()) == (200, {"id": qid, "deleted": True})
    assert not kept.exists() and sapi.ledger.quarantine_count() == 0
    gone = sapi.client.delete(f"/api/v1/quarantine/{qid}", headers={CSRF_HEADER: csrf})
    assert (gone.status_code, gone.json()["detail"]) == \
        (404, f"no quarantined object #{qid}")
    (record,) = [a for a in _audit(sapi) if a["action"] == "quarantine-delete"]
    assert (record["user"], record["role"], record["outcome"]) == ("operator", "operator", "ok")


def test_the_command_line_does_what_the_api_does(tmp_path: Path) -> None:
    with spool_api(tmp_path) as api:
        good, bad = patient_ct(), patient_ct()
        good_id = quarantine(api, encoded(good), "internal error (OSError)", good)
        bad_id = quarantine(api, garbage_after_meta(bad), "internal error (KeyError)", bad)
        config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path)},
                                                        "scp": {"min_free_disk_mb": 0}})

        def cli(*args: str) -> tuple[int, str, str]:
            done = run([*DICOM_NODE, "--config", str(config), "quarantine", *args],
                       cwd=tmp_path)
            return done.returncode, done.stdout, done.stderr

        code, out, _ = cli("release", str(good_id))
        job = api.ledger.study(good.StudyInstanceUID).id
        assert (code, out) == (0, f"quarantined object #{good_id} released (stored), "
                                  f"job {job}\n")
        code, _, err = cli("release", str(bad_id))
        assert code == 1 and err.startswith(f"dicom-node: quarantined object #{bad_id} is "
                                            "still refused: ")
        assert len(err.strip().splitlines()) == 1
        listed = run([*DICOM_NODE, "--config", str(config), "status", "--quarantine", "--json"],
                     cwd=tmp_path)
        assert [r["id"] for r in json.loads(listed.stdout)] == [bad_id]
        assert cli("delete", str(bad_id))[:2] == (0, f"quarantined object #{bad_id} deleted\n")
        assert cli("delete", str(bad_id)) == (1, "", f"dicom-node: no quarantined object "
                                                     f"#{bad_id}\n")
        assert list((tmp_path / "quarantine").iterdir()) == []
        done = [(a["action"], a["address"], a["outcome"], a["user"].startswith("os:"))
                for a in api.ctx.accounts.audit_page(limit=10)]
        assert ("quarantine-release", "cli", "ok", True) in done
        assert ("quarantine-delete", "cli", "ok", True) in done


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_malformed_object_sent_to_serve_is_listed_released_and_deleted_through_the_api(
        node_factory: Any, tmp_path: Path) -> None:
    web_port = free_port()
    node = node_factory({"web": {"enabled": True, "port": web_port}})
    node.write_config()
    for name, role in (("op", "operator"), ("root", "admin")):
        added = run([*DICOM_NODE, "--config", str(node.config), "user", "add", name,
                     "--role", role], cwd=node.workdir, input=f"{name} password 123\n")
        assert added.returncode == 0, added.stderr
    node.start()
    files = []
    for n in range(2):
        ds = patient_ct()
        ds.StudyInstanceUID = "1.2.3.abc"  # storescu sends it; the node must refuse it
        ds.save_as(tmp_path / f"bad{n}.dcm", enforce_file_format=True)
        files.append(tmp_path / f"bad{n}.dcm")
    node.storescu(*files, options=("--no-halt",), check=False)
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
        login = client.post("/api/v1/session", json={"name": "op", "password": "op password 123"})
        csrf = {CSRF_HEADER: login.json()["csrf_token"]}
        listed = client.get("/api/v1/quarantine")
        assert listed.status_code == 200, listed.text
        newer, older = listed.json()["items"]
        assert {newer["reason"], older["reason"]} == {"StudyInstanceUID is not a valid UID"}
        assert (newer["calling_ae_title"], newer["sop_class_uid"]) == \
            ("STORESCU", "1.2.840.10008.5.1.4.1.1.2")
        for value in PATIENT.values():
            assert value not in listed.text
        r = client.post(f"/api/v1/quarantine/{newer['id']}/release", headers=csrf)
        assert r.status_code == 409 and "StudyInstanceUID is not a valid UID" in r.text
        r = client.delete(f"/api/v1/quarantine/{older['id']}", headers=csrf)
        assert r.status_code == 200, r.text
        assert [i["id"] for i in client.get("/api/v1/quarantine").json()["items"]] == \
            [newer["id"]]
        client.cookies.clear()
        client.post("/api/v1/session", json={"name": "root", "password": "root password 123"})
        audit = client.get("/api/v1/audit").json()["items"]
    assert [(a["action"], a["user"], a["outcome"]) for a in audit
            if a["action"].startswith("quarantine")] == \
        [("quarantine-delete", "op", "ok"), ("quarantine-release", "op", "refused")]
    assert len(list((node.var_dir / "quarantine").iterdir())) == 1
    assert node.status() == []
    node.stop()
    for value in PATIENT.values():
        assert value not in node.log()
