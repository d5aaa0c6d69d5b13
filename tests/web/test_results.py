"""A job's results through the API: the results rows, the filters of the studies list, the
runs with their summaries and outputs, the PDF and the DICOM objects, over real files on disk
(a plain and an encrypted store) built by the node's own writers; who may download them, and
that each download is in the audit trail. At the end, a real ``dicom-node serve`` processes a
study and its results row and PDF come out of the API."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from node.core import db
from node.core.accounts import Role
from node.core.contract import Finding, ModelResult, Triage, classification
from node.core.jobstate import JobState
from node.core.ledger import ResultRecord, record_results, utcnow
from node.core.manifest import load_manifest
from node.core.outbox import ItemState
from node.core.settings import DeliverySettings, DicomDestination, Hl7Destination, Settings
from node.pipeline.build.outputs import Job, build_outputs
from node.pipeline.infer.registry import LoadedModel
from node.pipeline.infer.stored import save_result
from node.web import queries
from tests.conftest import DICOM_NODE, REPO, NodeProcess, free_port, run
from tests.web.conftest import Api, make_job
from tests.web.spool_fixtures import PATIENT, SpoolApi, patient_ct, receive, spool_api

MODEL = "brain-tumor-demo"
MANIFEST = load_manifest(REPO / "models" / MODEL)


@pytest.fixture(params=["plain", "encrypted"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpoolApi]:
    with spool_api(tmp_path, encrypt=request.param == "encrypted") as api:
        yield api


def _result(triage: Triage = Triage.URGENT) -> ModelResult:
    probabilities = (0.81, 0.09, 0.06, 0.04)  # glioma found, as the manifest orders its classes
    return ModelResult(
        model_name=MODEL, model_version=MANIFEST.version,
        findings=tuple(Finding(f.concept, p) for f, p in zip(MANIFEST.findings, probabilities,
                                                                 strict=True)),
        triage=triage, key_slices=(0,))


def processed(api: SpoolApi, triage: Triage = Triage.URGENT) -> tuple[int, pydicom.Dataset]:
    """A job taken as the flow takes it: its result saved (save_result) and its results row
    written with the move to INFERRED, its outputs built (build_outputs, the build stage's
    writers, against the original instance) and queued with the move to BUILT."""
    ds = patient_ct()
    job = receive(api, ds)
    led, spool = api.ledger, api.spool
    for state in (JobState.COMPLETE, JobState.DEIDENTIFIED):
        led.transition(job, state, reason="test")
    result = _result(triage)
    key = spool.key(ds.StudyInstanceUID)
    folder = spool.root / "results" / key / "g1" / MODEL
    pseudonymous = "2.25.1234"  # the de-identified slice's UID: the summary's only reference
    save_result(folder, LoadedModel(MANIFEST, None, "cpu", 0.0),  # type: ignore[arg-type]
                result, "2.25.99", (pseudonymous,))
    predicted = classification(result)
    assert predicted is not None
    record = ResultRecord(MODEL, MANIFEST.version, triage.value,
                          predicted.finding.concept.meaning,
                          folder.relative_to(spool.root).as_posix())
    led.transition(job, JobState.INFERRED, reason="test",
                   also=lambda conn: record_results(conn, job, 1, [record]))
    settings = Settings(delivery=DeliverySettings(
        dicom=(DicomDestination("pacs", "PACS", "127.0.0.1"),),
        hl7=(Hl7Destination("emr", "127.0.0.1", 2575),)))
    outbox_root = spool.root / "outbox"
    items = build_outputs(Job(job, ds.StudyInstanceUID, 1), folder.parent,
                          outbox_root / key / "g1", outbox_root, {MODEL: MANIFEST},
                          lambda _uids: (ds,), settings, utcnow().replace(microsecond=0))
    led.transition(job, JobState.BUILT, reason="test",
                   also=lambda conn: api.ctx.outbox.add(conn, job, 1, items))
    return job, ds


def _downloads(api: Api) -> list[tuple[Any, ...]]:
    return [(a["user"], a["job"], a["outcome"], a["detail"])
            for a in api.ctx.accounts.audit_page(limit=100) if a["action"] == "download"]


def test_the_runs_come_with_summary_and_outputs_and_no_identity(store: SpoolApi) -> None:
    job, ds = processed(store)
    store.login(Role.OPERATOR)  # the runs carry no identity: every role sees them
    body = store.client.get(f"/api/v1/studies/{job}/results").json()
    (run_,) = body["items"]
    assert (run_["model"], run_["version"], run_["generation"], run_["current"]) == \
        (MODEL, MANIFEST.version, 1, True)
    assert (run_["triage"], run_["finding"]) == ("URGENT", MANIFEST.findings[0].concept.meaning)
    assert run_["summary"]["predicted_finding"]["probability"] == 0.81
    assert run_["summary"]["series_instance_uid"] == "2.25.99"  # pseudonymous
    objects = {o["label"]: o for o in run_["objects"]}
    assert set(objects) == {"sr", "sc-1", "report-pdf", "kos", "oru"}
    assert objects["sr"]["sop_class_uid"] == str(pydicom.uid.ComprehensiveSRStorage) or \
        objects["sr"]["sop_class_uid"].startswith("1.2.840.10008.5.1.4.1.1.88.")
    assert objects["report-pdf"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.104.1"
    assert objects["kos"]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.59"
    assert objects["oru"]["sop_class_uid"] is None and objects["oru"]["href"] is None
    assert {o["state"] for o in objects.values()} == {"PENDING"}
    text = str(body)
    for value in (*PATIENT.values(), str(ds.StudyInstanceUID)):
        assert value not in text
    # the study page carries the same runs, without the outputs (its outbox list has them)
    page = store.client.get(f"/api/v1/studies/{job}").json()
    assert [(r["model"], r["triage"]) for r in page["results"]] == [(MODEL, "URGENT")]
    assert "objects" not in page["results"][0]


def test_the_pdf_and_the_objects_for_clinicians_each_download_audited(store: SpoolApi) -> None:
    job, ds = processed(store)
    store.login(Role.CLINICIAN)
    run_ = store.client.get(f"/api/v1/studies/{job}/results").json()["items"][0]
    pdf = store.client.get(run_["report"])
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    disposition = pdf.headers["content-disposition"]
    assert disposition == f'attachment; filename="job{job}-g1-{MODEL}-report.pdf"'
    assert pdf.headers["cache-control"] == "no-store"
    kos = next(o for o in run_["objects"] if o["label"] == "kos")
    got = store.client.get(kos["href"])
    assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
    read = pydicom.dcmread(io.BytesIO(got.content))
    # built against the original study: the patient's identity is in it, and in no file name
    assert read.PatientID == PATIENT["patient_id"] and read.StudyInstanceUID == ds.StudyInstanceUID
    assert PATIENT["patient_id"] not in got.headers["content-disposition"]
    if store.ctx.settings.storage.encrypt:  # the stored file is sealed; the API decrypts it
        stored = store.spool.root / "outbox" / store.ctx.outbox.items(job)[0].path
        assert stored.read_bytes()[:8] == b"DNAESGCM"
    assert _downloads(store) == [
        ("clinician", job, "ok", f"object kos (outbox item #{kos['id']}, {MODEL} g1)"),
        ("clinician", job, "ok", f"report.pdf {MODEL} g1")]
    assert store.client.get(f"/api/v1/studies/{job}/report.pdf").status_code == 200  # default


def test_operators_may_not_download_and_radiologists_and_admins_may(store: SpoolApi) -> None:
    job, _ = processed(store)
    item = next(i for i in store.ctx.outbox.items(job) if i.label == "sr")
    urls = [f"/api/v1/studies/{job}/report.pdf", f"/api/v1/studies/{job}/objects/{item.id}"]
    store.login(Role.OPERATOR)
    assert [store.client.get(u).status_code for u in urls] == [403, 403]
    for role in (Role.RADIOLOGIST, Role.ADMIN):
        store.login(role)
        assert [store.client.get(u).status_code for u in urls] == [200, 200]
    assert [(u, o) for u, _, o, _ in _downloads(store)] == \
        [("admin", "ok"), ("admin", "ok"), ("radiologist", "ok"), ("radiologist", "ok")]


def test_missing_files_and_wrong_items_are_404_with_a_reason(store: SpoolApi) -> None:
    job, _ = processed(store)
    items = store.ctx.outbox.items(job)
    oru = next(i for i in items if i.label == "oru")
    sr = next(i for i in items if i.label == "sr")
    other = make_job(store.ledger, "1.2.3.4", to=(JobState.COMPLETE,))
    store.login(Role.RADIOLOGIST)
    r = store.client.get(f"/api/v1/studies/{job}/objects/{oru.id}")
    assert r.status_code == 404 and "not a DICOM object" in r.json()["detail"]
    r = store.client.get(f"/api/v1/studies/{other}/objects/{sr.id}")  # another job's item
    assert r.status_code == 404 and f"no outbox item #{sr.id}" in r.json()["detail"]
    r = store.client.get(f"/api/v1/studies/{other}/report.pdf")
    assert r.status_code == 404 and "has no model run" in r.json()["detail"]
    (store.spool.root / "outbox" / sr.path).unlink()
    pdf = next((store.spool.root / "outbox").rglob("report.pdf"))
    pdf.unlink()
    r = store.client.get(f"/api/v1/studies/{job}/objects/{sr.id}")
    assert r.status_code == 404 and "is not on disk" in r.json()["detail"]
    r = store.client.get(f"/api/v1/studies/{job}/report.pdf")
    assert r.status_code == 404 and "PDF report of job" in r.json()["detail"]
    assert [o for _, _, o, _ in _downloads(store)] == ["missing", "missing"]
    assert store.client.get("/api/v1/studies/999/results").status_code == 404


def test_a_new_generation_makes_the_older_runs_not_current(store: SpoolApi) -> None:
    job, _ = processed(store, Triage.URGENT)
    runs = [ResultRecord(MODEL, "2", "ROUTINE", None, "results/x/g2/" + MODEL)]
    with store.ledger.engine.begin() as conn:
        conn.execute(db.studies.update().where(db.studies.c.id == job).values(generation=2))
        record_results(conn, job, 2, runs)
        record_results(conn, job, 2, runs)  # a retry's re-run replaces its generation's rows
    store.login(Role.CLINICIAN)
    items = store.client.get(f"/api/v1/studies/{job}/results").json()["items"]
    assert [(r["generation"], r["current"], r["triage"]) for r in items] == \
        [(2, True, "ROUTINE"), (1, False, "URGENT")]
    assert items[0]["summary"] is None  # its folder is not on disk
    ids = _ids(store, triage="urgent")
    assert ids == []  # generation 1 is no longer what the job says


# ------------------------------------------------------------------ the studies list's filters


def _ids(api: Api, **params: Any) -> list[int]:
    """Every page of the filtered list, two at a time, oldest first."""
    seen: list[int] = []
    before = None
    while True:
        page = api.client.get("/api/v1/studies", params={
            **params, "limit": 2, **({"before": before} if before else {})})
        assert page.status_code == 200, page.text
        seen = [s["id"] for s in page.json()["items"]] + seen
        before = page.json()["next_before"]
        if before is None:
            return seen


def _jobs_with_runs(api: Api) -> dict[str, int]:
    """Eight jobs: two calling AE titles, two models, three triage levels, two states."""
    plan = [("a", "CT1", "lung-ct", "URGENT", JobState.DONE),
            ("b", "CT1", "lung-ct", "ROUTINE", JobState.DONE),
            ("c", "MR7", "brain-mask", "URGENT", JobState.FAILED),
            ("d", "CT1", "lung-ct", "URGENT", JobState.FAILED),
            ("e", "MR7", "lung-ct", "URGENT", JobState.DONE),
            ("f", "MR7", "brain-mask", "PRIORITY", JobState.DONE),
            ("g", "CT1", None, None, JobState.DONE),
            ("h", "CT1", "lung-ct", "URGENT", JobState.DONE)]
    jobs = {}
    for name, caller, model, triage, state in plan:
        job = make_job(api.ledger, f"1.2.826.0.1.{ord(name)}", to=())
        with api.ledger.engine.begin() as conn:
            conn.execute(db.studies.update().where(db.studies.c.id == job)
                         .values(calling_ae_title=caller, state=state.value))
            if model:
                record_results(conn, job, 1, [ResultRecord(model, "1", triage, None, "x")])
        jobs[name] = job
    return jobs


def test_filters_combine_and_page(api: Api) -> None:
    j = _jobs_with_runs(api)
    api.login(Role.OPERATOR)
    assert _ids(api, model="lung-ct") == [j[x] for x in "abdeh"]
    assert _ids(api, triage="URGENT") == [j[x] for x in "acdeh"]
    assert _ids(api, model="lung-ct", triage="urgent") == [j[x] for x in "adeh"]
    assert _ids(api, model="lung-ct", triage="URGENT", calling_ae="CT1") == [j[x] for x in "adh"]
    assert _ids(api, model="lung-ct", triage="URGENT", calling_ae="CT1", state="DONE") == \
        [j[x] for x in "ah"]
    assert _ids(api, calling_ae="MR7") == [j[x] for x in "cef"]
    assert _ids(api, calling_ae="MR7", state="FAILED,DONE", triage="URGENT") == \
        [j[x] for x in "ce"]
    assert _ids(api, model="no-such-model") == []
    now = datetime.utcnow()  # the ledger's naive UTC
    hour_ago = (now - timedelta(hours=1)).isoformat()
    assert _ids(api, since=(now - timedelta(hours=2)).isoformat(), until=hour_ago) == []
    assert _ids(api, since=hour_ago, triage="PRIORITY") == [j["f"]]
    later = (now + timedelta(hours=1)).isoformat()
    assert _ids(api, until=later, model="brain-mask") == [j["c"], j["f"]]


def test_a_common_filter_takes_the_other_path_with_the_same_answer(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    j = _jobs_with_runs(api)
    api.login(Role.OPERATOR)
    monkeypatch.setattr(queries, "RESULT_IDS_CAP", 1)  # every filter is "common" now
    assert _ids(api, model="lung-ct", triage="URGENT", calling_ae="CT1") == [j[x] for x in "adh"]
    assert _ids(api, triage="PRIORITY") == [j["f"]]


@pytest.mark.parametrize(("params", "says"), [
    ({"triage": "CRITICAL"}, "triage: expected one of ROUTINE, PRIORITY, URGENT"),
    ({"model": "lung ct; drop table"}, "model: expected a model name"),
    ({"calling_ae": "A" * 17}, "calling_ae: expected an AE title"),
    ({"calling_ae": "CT\\1"}, "calling_ae: expected an AE title"),
    ({"until": "tomorrow"}, "until: expected an ISO 8601 UTC time"),
    ({"since": "2026-12-02", "until": "2026-12-01"}, "until: must be later than since"),
    ({"state": "DONE,NOPE"}, "state: expected job states"),
])
def test_bad_filters_are_422_with_what_was_expected(api: Api, params: dict[str, str],
                                                     says: str) -> None:
    api.login(Role.OPERATOR)
    r = api.client.get("/api/v1/studies", params=params)
    assert r.status_code == 422 and r.json()["detail"].startswith(says)


# ------------------------------------------------------------------ a real serve


@pytest.mark.integration
def test_a_study_processed_by_serve_has_its_results_row_and_pdf(
        node_factory: Any, tmp_path: Path) -> None:
    from tests.models.chest_phantom import chest_phantom, write_ct_series

    models = tmp_path / "models"
    models.mkdir()
    (models / "lung-ct").symlink_to(REPO / "models" / "lung-ct")
    (tmp_path / "ct").mkdir()
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, tmp_path / "ct")
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    web_port = free_port()
    node: NodeProcess = node_factory({
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"},
        "storage": {"encrypt": True},
        "web": {"enabled": True, "port": web_port}})
    node.write_config()
    password = "clinician password 1"
    added = run([*DICOM_NODE, "--config", str(node.config), "user", "add", "doc", "--role",
                 "clinician"], cwd=node.workdir, input=password + "\n")
    assert added.returncode == 0, added.stderr
    node.start()
    node.storescu(*files)
    node.wait_state(study_uid, "DONE", timeout=180)
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
        r = client.post("/api/v1/session", json={"name": "doc", "password": password})
        assert r.status_code == 200
        (job,) = client.get("/api/v1/studies", params={"model": "lung-ct"}).json()["items"]
        assert job["study_instance_uid"] == study_uid
        (run_,) = client.get(f"/api/v1/studies/{job['id']}/results").json()["items"]
        assert run_["model"] == "lung-ct" and run_["triage"] in {t.value for t in Triage}
        assert run_["summary"]["model"]["name"] == "lung-ct"
        assert client.get("/api/v1/studies", params={
            "model": "lung-ct", "triage": run_["triage"]}).json()["items"][0]["id"] == job["id"]
        pdf = client.get(f"/api/v1/studies/{job['id']}/report.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    node.stop()
    with db.make_engine(f"sqlite:///{node.var_dir / 'ledger.sqlite3'}").connect() as conn:
        rows = list(conn.execute(db.results.select()))
    assert [(r.model, r.generation, r.current) for r in rows] == [("lung-ct", 1, True)]
    assert any(p.read_bytes()[:8] == b"DNAESGCM"
               for p in (node.var_dir / "outbox").rglob("report.pdf"))


def test_the_item_states_are_the_outboxes(store: SpoolApi) -> None:
    job, _ = processed(store)
    sr = next(i for i in store.ctx.outbox.items(job) if i.label == "sr")
    store.ctx.outbox.record(sr, "delivered", "", _policy())
    store.login(Role.CLINICIAN)
    run_ = store.client.get(f"/api/v1/studies/{job}/results").json()["items"][0]
    got = next(o for o in run_["objects"] if o["id"] == sr.id)
    assert got["state"] == ItemState.DELIVERED.value and got["delivered_at"].endswith("Z")


def _policy() -> Any:
    from node.core.outbox import RetryPolicy

    return RetryPolicy(base_s=1.0, cap_s=1.0, max_attempts=3)

