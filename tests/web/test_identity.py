"""Patient identity only for the roles allowed: radiologists and clinicians see the patient of
one study (read from the original instance, plain or encrypted at rest, or from the encrypted
pseudonym map when the spool no longer has it), each view audited; operators and admins, and
every list, see none of it. Also force-complete through the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.core import at_rest
from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.keys import load_keys
from node.core.pseudonyms import PseudonymStore
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.profile import load_profile
from node.web.deps import CSRF_HEADER
from tests.web.conftest import make_job
from tests.web.spool_fixtures import PATIENT, SpoolApi, patient_ct, receive, spool_api

#: what identifies the fixture patient (study date and description identify no one alone)
IDENTIFYING = [PATIENT[k] for k in ("name", "patient_id", "birth_date", "accession_number")]


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def sapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpoolApi]:
    with spool_api(tmp_path, encrypt=request.param) as api:
        yield api


def _views(api: SpoolApi) -> list[dict[str, object]]:
    api.client.cookies.clear()
    api.login(Role.ADMIN)
    return [a for a in api.client.get("/api/v1/audit").json()["items"]
            if a["action"] == "view-identity"]


@pytest.mark.parametrize("role", [Role.RADIOLOGIST, Role.CLINICIAN])
def test_radiologists_and_clinicians_see_the_patient_and_each_view_is_audited(
        sapi: SpoolApi, role: Role) -> None:
    job = receive(sapi, patient_ct())
    sapi.login(role)
    body = sapi.client.get(f"/api/v1/studies/{job}").json()
    assert body["patient"] == {**PATIENT, "source": "instance"}
    (view,) = _views(sapi)
    assert (view["user"], view["role"], view["job"], view["outcome"]) == \
        (role.value, role.value, job, "ok")


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
def test_operators_and_admins_see_no_identity_anywhere(sapi: SpoolApi, role: Role) -> None:
    job = receive(sapi, patient_ct())
    sapi.login(role)
    one = sapi.client.get(f"/api/v1/studies/{job}")
    listed = sapi.client.get("/api/v1/studies")
    assert one.status_code == listed.status_code == 200
    assert "patient" not in one.json()
    for text in (one.text, listed.text):
        for value in IDENTIFYING:
            assert value not in text
    assert _views(sapi) == []


def test_lists_show_no_identity_even_to_radiologists(sapi: SpoolApi) -> None:
    receive(sapi, patient_ct())
    sapi.login(Role.RADIOLOGIST)
    listed = sapi.client.get("/api/v1/studies")
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1
    for value in IDENTIFYING:
        assert value not in listed.text


def test_without_the_spool_copy_the_pseudonym_map_names_the_patient(tmp_path: Path) -> None:
    with spool_api(tmp_path) as api:
        ds = patient_ct()
        job = receive(api, ds)
        # what the de-identification stage leaves: the copy under deid/, the map in the ledger
        settings = api.ctx.settings
        keys = load_keys(str(tmp_path / "deid.key"))
        done = deidentify(patient_ct(), load_profile(settings.deid), keys)
        folder = api.spool.root / "deid" / api.spool.key(ds.StudyInstanceUID)
        folder.mkdir(parents=True)
        at_rest.save_dataset(done.dataset, folder / "000001.dcm")
        PseudonymStore(api.ledger.engine, keys).save(done.pseudonyms)
        for relative in api.ledger.instance_paths(job):
            api.spool.absolute(relative).unlink()  # the spool no longer has the original
        api.login(Role.RADIOLOGIST)
        patient = api.client.get(f"/api/v1/studies/{job}").json()["patient"]
    assert patient == {"name": PATIENT["name"], "patient_id": PATIENT["patient_id"],
                       "birth_date": None, "accession_number": PATIENT["accession_number"],
                       "study_date": None, "study_description": None,
                       "source": "pseudonym map"}


def test_no_copy_and_no_map_is_no_identity_and_still_audited(tmp_path: Path) -> None:
    with spool_api(tmp_path) as api:
        job = make_job(api.ledger, "1.2.3.4", to=())  # rows whose files are not in the spool
        api.login(Role.CLINICIAN)
        r = api.client.get(f"/api/v1/studies/{job}")
        assert (r.status_code, r.json()["patient"]) == (200, None)
        (view,) = _views(api)
    assert (view["job"], view["outcome"]) == (job, "unavailable")


def test_force_complete_through_the_api(tmp_path: Path) -> None:
    with spool_api(tmp_path) as api:
        receiving = receive(api, patient_ct())
        csrf = api.login(Role.RADIOLOGIST)
        url = f"/api/v1/studies/{receiving}/force-complete"
        assert api.client.post(url, headers={CSRF_HEADER: csrf}).status_code == 403
        api.client.cookies.clear()
        csrf = api.login(Role.OPERATOR)
        assert api.client.post(url).status_code == 403  # no CSRF token
        r = api.client.post(url, headers={CSRF_HEADER: csrf})
        assert (r.status_code, r.json()) == \
            (200, {"id": receiving, "result": "moved from RECEIVING to COMPLETE"})
        job = api.ledger.study_by_id(receiving)
        assert (job.state, job.completion_reason) == (JobState.COMPLETE, "forced")
        again = api.client.post(url, headers={CSRF_HEADER: csrf})
        assert again.status_code == 409 and "COMPLETE" in again.json()["detail"]
        assert api.client.post("/api/v1/studies/999/force-complete",
                               headers={CSRF_HEADER: csrf}).status_code == 404
        api.client.cookies.clear()
        api.login(Role.ADMIN)
        audit = [a for a in api.client.get("/api/v1/audit").json()["items"]
                 if a["action"] == "force-complete"]
    assert [(a["job"], a["outcome"]) for a in audit] == [(receiving, "refused"),
                                                         (receiving, "ok")]
