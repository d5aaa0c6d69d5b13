"""The Studies page finds a study by patient ID or accession number for the roles that may see
identity, through the keyed pseudonyms on the study rows (the ledger holds neither in clear);
exact matches only; each search audited without the value; other roles get no such fields."""

from __future__ import annotations

import re

from sqlalchemy import select

from node.core import db, patients
from node.core.accounts import Role
from node.core.keys import key_file_for, load_keys
from tests.web.conftest import Api
from tests.web.study_scene import analysed_job


def _jobs(page: str) -> list[str]:
    return re.findall(r'<a href="/studies/(\d+)">#\d+</a>', page)


def test_a_patient_id_or_accession_number_finds_its_studies_and_is_audited(api: Api) -> None:
    led, settings = api.ledger, api.ctx.settings
    jobs = [analysed_job(led, settings, f"1.2.826.0.1.3680043.8.498.78{n}") for n in (11, 12, 13)]
    keys = load_keys(key_file_for(settings.deid.key_file, settings.var_path))
    with led.engine.begin() as conn:  # as the de-identification stage writes them
        for job, (issuer, pid, acc) in zip(jobs, [("", "MRN-1", "ACC-1"), ("", "MRN-1", "ACC-2"),
                                                  ("HOSP", "MRN-1", "ACC-3")], strict=True):
            patients.record(conn, job, patients.patient_pseudonym(keys, patients.patient_text(issuer, pid)),
                            patients.accession_pseudonym(keys, acc))
    api.login(Role.CLINICIAN)
    everything = api.client.get("/studies").text
    assert 'id="pid"' in everything and 'id="acc"' in everything
    assert sorted(_jobs(api.client.get("/studies?pid=MRN-1").text)) == sorted(map(str, jobs[:2]))
    assert _jobs(api.client.get("/studies?pid=MRN-1&issuer=HOSP").text) == [str(jobs[2])]
    assert _jobs(api.client.get("/studies?acc=ACC-2").text) == [str(jobs[1])]
    assert _jobs(api.client.get("/studies?pid=MRN&acc=").text) == []  # exact only
    assert _jobs(api.client.get("/studies?pid=MRN-1&acc=ACC-3").text) == []  # both must hold
    with db.reader(led.engine) as conn:  # the pseudonyms, never the values, in the ledger
        stored = conn.execute(select(db.studies.c.patient_key, db.studies.c.accession_key)).all()
        audit = conn.execute(select(db.audit.c.action, db.audit.c.detail)
                             .where(db.audit.c.action == "search-identity")).all()
    assert not any("MRN" in str(row) or "ACC" in str(row) for row in stored)
    assert len(audit) == 5 and not any("MRN" in d or "ACC" in d for _, d in audit)
    assert ("search-identity", "patient-id accession") in audit
    api.login(Role.OPERATOR)  # no identity: no fields, and the values are not used
    page = api.client.get("/studies?pid=MRN-1").text
    assert 'id="pid"' not in page and len(_jobs(page)) == 3


def test_without_the_de_identification_key_a_search_says_so(api: Api) -> None:
    api.login(Role.RADIOLOGIST)
    page = api.client.get("/studies?acc=ACC-1").text
    assert "needs the de-identification key" in page and "Traceback" not in page
