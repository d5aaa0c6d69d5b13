"""POST /api/v1/upload in-process over a real spool and ledger: a PNG becomes a Secondary
Capture that dciodvfy accepts with zero errors and joins a new job with the calling AE title
UPLOAD; a zip of DICOM files imports; a zip reaching outside itself (``../evil``) and a text
file named .png are refused (422, 415) and quarantined; missing patient details 422; over
``web.max_upload_mb`` 413; roles and CSRF; every upload audited."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from pydicom.uid import generate_uid

from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.keys import load_keys
from node.core.pseudonyms import PseudonymStore
from node.core.settings import DeidSettings, WebSettings
from node.core.spool import open_spool
from node.pipeline import ingest
from node.pipeline.context import StageContext, Step
from node.pipeline.deid.profile import load_profile
from node.pipeline.deid.stage import deidentify_job
from node.pipeline.ingest import picture
from node.pipeline.quarantine import take_in
from node.web.deps import CSRF_HEADER
from tests.conftest import DICOM_NODE, free_port, run
from tests.web.console.conftest import (  # noqa: F401 - the fixtures
    Console,
    console,
    log_in,
    page,
    shoot,
)
from tests.web.spool_fixtures import SpoolApi, encoded, patient_ct, spool_api

DETAILS = {"patient_id": "UP-1", "patient_name": "Upload^Patient", "birth_date": "19700101",
           "sex": "F", "accession": "ACC-UP1", "study_description": "Upload test",
           "identifying_text": "no"}


@pytest.fixture
def sapi(tmp_path: Path) -> Iterator[SpoolApi]:
    with spool_api(tmp_path) as api:
        yield api


def png(size: tuple[int, int] = (96, 64), mode: str = "L") -> bytes:
    rng = np.random.default_rng(7)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True,
                         timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")]


def post(api: SpoolApi, files: list[tuple[str, bytes]], data: dict[str, str] | None = None,
         role: Role = Role.CLINICIAN) -> object:
    csrf = api.login(role)
    return api.client.post("/api/v1/upload", headers={CSRF_HEADER: csrf},
                           files=[("file", (name, content)) for name, content in files],
                           data=data or {})


def _audit(api: SpoolApi) -> list[dict[str, object]]:
    api.client.cookies.clear()
    api.login(Role.ADMIN)
    return [a for a in api.client.get("/api/v1/audit").json()["items"]
            if a["action"] == "upload"]


def test_a_png_becomes_a_valid_secondary_capture_in_a_new_job(sapi: SpoolApi,
                                                               tmp_path: Path) -> None:
    r = post(sapi, [("photo.png", png(mode="RGB")), ("scan.png", png())], DETAILS)
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["stored"] == 2 and body["quarantined"] == [] and len(body["jobs"]) == 1
    paths = sapi.ledger.instance_paths(body["jobs"][0])
    assert len(paths) == 2
    for n, relative in enumerate(paths):
        ds = sapi.spool.open_dataset(relative)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image
        assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == \
            ("UP-1", "Upload^Patient", "ACC-UP1")
        out = tmp_path / f"sc{n}.dcm"
        out.write_bytes(sapi.spool.read_bytes(relative))
        assert dciodvfy_errors(out) == []
    study = sapi.ledger.study(ds.StudyInstanceUID)
    assert (study.id, study.instances, study.calling_ae_title) == (body["jobs"][0], 2, "UPLOAD")
    assert ds.BurnedInAnnotation == "NO" and body["attested"] == 2
    assert sapi.ledger.attested_paths(study.id, "UPLOAD") == set(paths)
    (record,) = _audit(sapi)
    assert (record["outcome"], record["user"]) == ("ok", "clinician"), record
    assert "2 picture(s) stated by the uploader to show no identifying text" in \
        str(record["detail"])


@pytest.mark.parametrize("answer", ["", "unsure", "yes"])
def test_a_picture_without_the_uploaders_statement_is_refused(sapi: SpoolApi,
                                                              answer: str) -> None:
    r = post(sapi, [("scan.png", png())], {**DETAILS, "identifying_text": answer})
    assert r.status_code == 422, r.text  # type: ignore[attr-defined]
    assert "shows no identifying text" in r.json()["detail"]  # type: ignore[attr-defined]
    assert sapi.ledger.studies() == [] and sapi.ledger.quarantined() == []
    assert _audit(sapi)[0]["outcome"] == "refused"


def _deidentify(api: SpoolApi, job: int, tmp_path: Path) -> Step:
    keys = load_keys(str(tmp_path / "deid.key"))
    ctx = StageContext(api.ledger, api.spool, load_profile(DeidSettings()), keys,
                       PseudonymStore(api.ledger.engine, keys))
    api.ledger.transition(job, JobState.COMPLETE, reason="test")
    return deidentify_job(ctx, api.ledger.study_by_id(job))


def test_only_the_upload_paths_stated_picture_passes_the_burned_in_text_rule(
        sapi: SpoolApi, tmp_path: Path) -> None:
    r = post(sapi, [("brain.png", png())], {**DETAILS, "modality": "MR", "body_part": "HEAD"})
    (uploaded,) = r.json()["jobs"]  # type: ignore[attr-defined]
    (relative,) = sapi.ledger.instance_paths(uploaded)
    built = sapi.spool.open_dataset(relative)
    assert (built.Modality, built.BodyPartExamined) == ("MR", "HEAD")
    assert "Laterality" not in built  # 2C: absent for an unpaired body part
    (tmp_path / "brain.dcm").write_bytes(sapi.spool.read_bytes(relative))
    assert dciodvfy_errors(tmp_path / "brain.dcm") == []
    step = _deidentify(sapi, uploaded, tmp_path)
    assert (step.target, step.reason) == (
        JobState.DEIDENTIFIED, "1 instances de-identified, 0 quarantined (burned-in text)")
    # the same kind of object from a peer (Burned In Annotation NO in its header, even under
    # the calling AE title UPLOAD) follows the rule: no pixel rule matches, quarantined
    for calling in ("CT1", "UPLOAD"):
        peer = picture.secondary_capture(png(), ingest.Details(
            patient_id="P-9", patient_name="Peer^Picture", modality="MR"),
            study_uid=generate_uid(), series_uid=generate_uid(), attested=True)
        assert peer.BurnedInAnnotation == "NO"
        received = sapi.spool.incoming / f"{calling}.dcm"
        received.write_bytes(encoded(peer))
        take_in(sapi.ledger, sapi.spool, sapi.ctx.settings, received, calling_ae_title=calling)
        job = sapi.ledger.study(peer.StudyInstanceUID).id
        step = _deidentify(sapi, job, tmp_path)
        assert step.target is JobState.QUARANTINED and "1 quarantined" in step.reason


def test_a_zip_of_dicom_files_imports(sapi: SpoolApi) -> None:
    one, two = patient_ct(), patient_ct()
    two.StudyInstanceUID = one.StudyInstanceUID
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("DICOM/IM1", encoded(one))
        z.writestr("DICOM/IM2", encoded(two))
    r = post(sapi, [("export.zip", buffer.getvalue())])  # DICOM needs no patient details
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    study = sapi.ledger.study(one.StudyInstanceUID)
    assert r.json() == {"jobs": [study.id], "stored": 2, "duplicates": 0,  # type: ignore[attr-defined]
                        "quarantined": [], "attested": 0}
    assert (study.instances, study.calling_ae_title) == (2, "UPLOAD")
    r = post(sapi, [("again.dcm", encoded(one))])
    assert r.json()["duplicates"] == 1  # type: ignore[attr-defined]


def test_a_zip_reaching_outside_itself_is_refused_and_quarantined(sapi: SpoolApi) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ok/IM1", encoded(patient_ct()))
        z.writestr("../evil", b"#!/bin/sh\n")
    r = post(sapi, [("evil.zip", buffer.getvalue())])
    assert r.status_code == 422, r.text  # type: ignore[attr-defined]
    assert "outside itself" in r.json()["detail"]  # type: ignore[attr-defined]
    (row,) = sapi.ledger.quarantined()
    assert "outside itself" in row.reason and row.calling_ae_title == "UPLOAD"
    assert row.size_bytes == len(buffer.getvalue())
    assert _audit(sapi)[0]["outcome"] == "refused"


def test_a_zip_bomb_is_refused(sapi: SpoolApi) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("IM1", bytes(50 * 1024 * 1024))  # 50 MiB of zeros, about 50 kB zipped
    r = post(sapi, [("bomb.zip", buffer.getvalue())])
    assert r.status_code == 422 and "bomb" in r.json()["detail"]  # type: ignore[attr-defined]


def test_a_text_file_named_png_is_415_and_quarantined(sapi: SpoolApi) -> None:
    r = post(sapi, [("photo.png", b"just some text, not a picture\n" * 10)], DETAILS)
    assert r.status_code == 415, r.text  # type: ignore[attr-defined]
    (row,) = sapi.ledger.quarantined()
    assert "judged by its content" in row.reason and row.calling_ae_title == "UPLOAD"
    assert sapi.spool.quarantined(row.path).exists()


def test_a_picture_without_patient_details_is_422_and_nothing_is_taken_in(
        sapi: SpoolApi) -> None:
    r = post(sapi, [("photo.png", png())], {"patient_id": "UP-1"})
    assert r.status_code == 422 and "patient name is required" in r.text  # type: ignore[attr-defined]
    assert sapi.ledger.quarantined() == [] and sapi.ledger.instance_paths(1) == []


def test_roles_csrf_and_size_limit(sapi: SpoolApi) -> None:
    assert post(sapi, [("a.dcm", encoded(patient_ct()))], role=Role.OPERATOR).status_code == 403  # type: ignore[attr-defined]
    for role in (Role.RADIOLOGIST, Role.ADMIN):
        assert post(sapi, [("a.dcm", encoded(patient_ct()))], role=role).status_code == 200  # type: ignore[attr-defined]
    sapi.client.cookies.clear()
    sapi.login(Role.CLINICIAN)
    assert sapi.client.post("/api/v1/upload", files=[("file", ("a.dcm", b"x"))]).status_code \
        == 403  # no CSRF header
    small = dataclasses.replace(sapi.ctx.settings,
                                web=dataclasses.replace(sapi.ctx.settings.web,
                                                        max_upload_mb=1))
    assert isinstance(small.web, WebSettings)
    object.__setattr__(sapi.ctx, "settings", small)
    r = post(sapi, [("big.dcm", bytes(2 * 1024 * 1024))])
    assert r.status_code == 413  # type: ignore[attr-defined]
    assert sapi.ledger.quarantined() == []


def test_a_dicom_file_keeps_its_own_uids(sapi: SpoolApi) -> None:
    ds = patient_ct()
    r = post(sapi, [("x.bin", encoded(ds))])
    assert r.status_code == 200  # type: ignore[attr-defined]
    (relative,) = sapi.ledger.instance_paths(r.json()["jobs"][0])  # type: ignore[attr-defined]
    assert sapi.spool.open_dataset(relative).SOPInstanceUID == ds.SOPInstanceUID
    assert isinstance(pydicom.dcmread(io.BytesIO(encoded(ds))), pydicom.Dataset)


@pytest.mark.integration
def test_an_upload_through_a_running_serve_joins_a_job_that_completes(
        node_factory: Any, tmp_path: Path) -> None:
    web_port = free_port()
    node = node_factory({"web": {"enabled": True, "port": web_port},
                         "completion": {"quiet_period_s": 0.5}})
    node.write_config()
    added = run([*DICOM_NODE, "--config", str(node.config), "user", "add", "doc", "--role",
                 "clinician"], cwd=node.workdir, input="doc password 123\n")
    assert added.returncode == 0, added.stderr
    node.start()
    ds = patient_ct()
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=60) as client:
        login = client.post("/api/v1/session",
                            json={"name": "doc", "password": "doc password 123"})
        csrf = {CSRF_HEADER: login.json()["csrf_token"]}
        r = client.post("/api/v1/upload", headers=csrf,
                        files=[("file", ("ct.dcm", encoded(ds))),
                               ("file", ("photo.png", png()))], data=DETAILS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stored"] == 2 and len(body["jobs"]) == 2  # its own study, and a new one
        refused = client.post("/api/v1/upload", headers=csrf,
                              files=[("file", ("x.png", b"text\n" * 50))], data=DETAILS)
        assert refused.status_code == 415
    row = node.wait_state(ds.StudyInstanceUID, "DEIDENTIFIED", "INFERRED", "BUILT", "DONE",
                          timeout=60)
    assert (row["id"], row["calling_ae_title"]) == (body["jobs"][0], "UPLOAD")
    assert row["state_reason"].startswith("1 instances de-identified") or \
        row["state"] != "DEIDENTIFIED"
    node.stop()


def test_the_upload_page_takes_a_png_and_links_the_job(sapi: SpoolApi) -> None:
    sapi.client.cookies.clear()
    csrf = sapi.login(Role.CLINICIAN)
    shown = sapi.client.get("/upload")
    assert shown.status_code == 200 and 'enctype="multipart/form-data"' in shown.text
    assert '<script src="/static/upload.js"></script>' in shown.text
    r = sapi.client.post("/upload", files=[("file", ("photo.png", png()))],
                         data={**DETAILS, "csrf_token": csrf})
    assert r.status_code == 200, r.text
    (job,) = {j.id for j in [sapi.ledger.study(
        sapi.spool.open_dataset(p).StudyInstanceUID) for p in sapi.ledger.instance_paths(1)]}
    assert f'href="/studies/{job}"' in r.text
    statement = r.text.split('<fieldset id="identifying_text">')[1].split("</fieldset>")[0]
    assert "checked" not in statement  # the next upload's pictures are answered for anew
    forged = sapi.client.post("/upload", files=[("file", ("photo.png", png()))],
                              data={**DETAILS, "csrf_token": "wrong"})
    assert forged.status_code == 403
    text = sapi.client.post("/upload", files=[("file", ("t.png", b"text\n" * 40))],
                            data={**DETAILS, "csrf_token": csrf})
    assert text.status_code == 415 and "judged by its content" in text.text
    sapi.client.cookies.clear()
    sapi.login(Role.OPERATOR)
    assert sapi.client.get("/upload").status_code == 403


def test_the_upload_page_refuses_an_upload_over_the_limit_with_413(sapi: SpoolApi) -> None:
    small = dataclasses.replace(sapi.ctx.settings,
                                web=dataclasses.replace(sapi.ctx.settings.web,
                                                        max_upload_mb=1))
    object.__setattr__(sapi.ctx, "settings", small)
    sapi.client.cookies.clear()
    csrf = sapi.login(Role.RADIOLOGIST)
    r = sapi.client.post("/upload", files=[("file", ("big.dcm", bytes(2 * 1024 * 1024)))],
                         data={"csrf_token": csrf})
    assert r.status_code == 413 and "larger than 1 MiB" in r.text
    assert sapi.ledger.quarantined() == []


@pytest.mark.integration
def test_chromium_uploads_a_png_on_the_upload_page(
        console: Console, page: Page, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    open_spool(console.ctx.settings).prepare()
    errors: list[str] = []  # what the page failed to load (the browser's favicon aside)
    page.on("response", lambda r: errors.append(r.url)
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    log_in(page, console.url, "clinician")
    page.goto(f"{console.url}/upload")
    expect(page.locator("#drop-zone")).to_be_visible()  # the static script ran under the CSP
    picture = tmp_path / "photo.png"
    picture.write_bytes(png(mode="RGB"))
    page.set_input_files("#file", str(picture))
    for field, value in DETAILS.items():
        if field not in ("sex", "identifying_text"):
            page.fill(f"#{field}", value)
    page.select_option("#sex", "F")
    page.check("#identifying_text_no")
    with page.expect_navigation():
        page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result .message.ok")).to_contain_text("1 object(s) stored")
    link = page.locator("#upload-result a")
    job = int(link.inner_text().split()[-1])
    assert link.get_attribute("href") == f"/studies/{job}"
    shoot(page, "upload")
    assert len(console.ledger.instance_paths(job)) == 1 and errors == []
