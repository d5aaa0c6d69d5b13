"""Radiologists' feedback through the API, on a real SQLite ledger: who may give and read it,
CSRF, the checks of verdict, triage and note, the audit record, and the Model quality summary
(agreement and the triage confusion table) against a hand-built set, as JSON and as CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, select, update

from node.core import db, feedback
from node.core.accounts import Role
from node.core.contract import Triage
from node.core.jobstate import JobState
from node.core.ledger import utcnow
from node.web.deps import CSRF_HEADER
from tests.web.conftest import Api, make_job

DONE = (JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED)


def _run(api: Api, job: int, model: str = "lung-ct", triage: str | None = "URGENT",
         generation: int = 1) -> int:
    with api.ledger.engine.begin() as conn:
        return int(conn.execute(insert(db.results).values(
            study_id=job, generation=generation, model=model, model_version="2.1.0",
            triage=triage, finding="nodule", current=True, created_at=utcnow(),
            folder=f"results/{job}/g{generation}/{model}").returning(db.results.c.id))
            .scalar_one())


def _post(api: Api, csrf: str, job: int, run: int, **body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = api.client.post(f"/api/v1/studies/{job}/results/{run}/feedback", json=body,
                        headers={CSRF_HEADER: csrf})
    return r.status_code, r.json()


def test_a_radiologist_rates_a_run_others_read_it_and_it_is_audited(api: Api) -> None:
    job = make_job(api.ledger, "2.25.1", to=DONE)
    run = _run(api, job)
    csrf = api.login(Role.RADIOLOGIST)
    assert api.client.post(f"/api/v1/studies/{job}/results/{run}/feedback",
                           json={"verdict": "correct"}).status_code == 403  # no CSRF token
    status, given = _post(api, csrf, job, run, verdict="incorrect", triage="ROUTINE",
                          note="  calcified granuloma, not a nodule <script>  ")
    assert status == 201, given
    assert (given["verdict"], given["ai_triage"], given["corrected_triage"], given["note"],
            given["user"], given["model"], given["version"]) == (
        "incorrect", "URGENT", "ROUTINE", "calcified granuloma, not a nodule <script>",
        "radiologist", "lung-ct", "2.1.0")
    records = [a for a in api.ctx.accounts.audit_page(limit=50) if a["action"] == "feedback"]
    assert [(a["user"], a["role"], a["job"], a["outcome"]) for a in records] == [
        ("radiologist", "radiologist", job, "ok")]
    assert "incorrect" in records[0]["detail"] and "URGENT -> ROUTINE" in records[0]["detail"]
    assert "granuloma" not in records[0]["detail"]  # the note's words stay out of the trail
    for role in (Role.CLINICIAN, Role.ADMIN, Role.RADIOLOGIST):
        api.login(role)
        items = api.client.get(f"/api/v1/studies/{job}/feedback").json()["items"]
        assert [(i["run_id"], i["verdict"]) for i in items] == [(run, "incorrect")], role
    api.login(Role.OPERATOR)
    assert api.client.get(f"/api/v1/studies/{job}/feedback").status_code == 403
    assert api.client.get("/api/v1/quality").status_code == 403


@pytest.mark.parametrize("role", [Role.ADMIN, Role.CLINICIAN, Role.OPERATOR])
def test_only_radiologists_give_feedback(api: Api, role: Role) -> None:
    job = make_job(api.ledger, "2.25.2", to=DONE)
    run = _run(api, job)
    status, _ = _post(api, api.login(role), job, run, verdict="correct")
    assert status == 403
    with db.reader(api.ledger.engine) as conn:
        assert conn.execute(select(db.feedback)).first() is None


def test_bad_verdicts_triages_notes_and_runs_are_refused(api: Api) -> None:
    job = make_job(api.ledger, "2.25.3", to=DONE)
    other = make_job(api.ledger, "2.25.4", to=DONE)
    run = _run(api, job)
    csrf = api.login(Role.RADIOLOGIST)
    for body in ({"verdict": "maybe"}, {"verdict": "correct", "triage": "STAT"},
                 {"verdict": "correct", "note": "x" * (feedback.NOTE_MAX + 1)},
                 {"verdict": "correct", "extra": 1}, {}):
        assert _post(api, csrf, job, run, **body)[0] == 422, body
    assert _post(api, csrf, other, run, verdict="correct")[0] == 404  # another job's run
    assert _post(api, csrf, job, run + 99, verdict="correct")[0] == 404
    assert _post(api, csrf, 999, run, verdict="correct")[0] == 404
    assert _post(api, csrf, job, run, verdict="correct",
                 note="x" * feedback.NOTE_MAX)[0] == 201


def _give(api: Api, job: int, run: int, user: str, verdict: str, corrected: str | None,
          at: datetime) -> None:
    feedback.record(api.ledger.engine, study_id=job, result_id=run, user=user, role="radiologist",
                    address="", verdict=feedback.Verdict(verdict),
                    corrected_triage=None if corrected is None else Triage(corrected),
                    note="", at=at)


def test_the_summary_counts_per_model_per_week_with_the_confusion_table(api: Api) -> None:
    now = utcnow()
    this_week = datetime.combine(feedback.week_start(now.date()), datetime.min.time())
    last_week = this_week - timedelta(days=5)
    long_ago = this_week - timedelta(weeks=30)
    jobs = [make_job(api.ledger, f"2.25.1{k}", to=DONE) for k in range(6)]
    urgent = [_run(api, j, "lung-ct", "URGENT") for j in jobs[:3]]
    routine = [_run(api, j, "lung-ct", "ROUTINE") for j in jobs[3:5]]
    brain = _run(api, jobs[5], "=brain", "PRIORITY")  # a name a spreadsheet would run
    # this week, lung-ct: 3 runs, 4 verdicts counted (one replaced by the same user's later)
    _give(api, jobs[0], urgent[0], "anna", "correct", None, this_week)  # URGENT>URGENT
    _give(api, jobs[1], urgent[1], "anna", "correct", None, this_week)  # replaced below
    _give(api, jobs[1], urgent[1], "anna", "incorrect", "ROUTINE",
          this_week + timedelta(minutes=5))  # URGENT>ROUTINE
    _give(api, jobs[1], urgent[1], "ben", "partly_correct", "PRIORITY",
          this_week + timedelta(minutes=6))  # URGENT>PRIORITY
    _give(api, jobs[3], routine[0], "ben", "partly_correct", None,
          this_week + timedelta(minutes=7))  # ROUTINE>ROUTINE
    # last week, lung-ct: 1 verdict; the other model: 1
    _give(api, jobs[4], routine[1], "anna", "incorrect", "URGENT", last_week)  # ROUTINE>URGENT
    _give(api, jobs[5], brain, "anna", "correct", None, last_week)
    # outside the window
    _give(api, jobs[2], urgent[2], "anna", "incorrect", "ROUTINE", long_ago)

    api.login(Role.ADMIN)
    found = api.client.get("/api/v1/quality?weeks=4").json()
    weeks = [(i["model"], i["week"], i["results"], i["ratings"], i["correct"],
              i["partly_correct"], i["incorrect"], i["agreement"]) for i in found["items"]]
    label = feedback.week_label
    assert weeks == [
        ("lung-ct", label(this_week.date()), 3, 4, 1, 2, 1, 0.5),  # (1+0+0.5+0.5)/4
        ("=brain", label(feedback.week_start(last_week.date())), 1, 1, 1, 0, 0, 1.0),
        ("lung-ct", label(feedback.week_start(last_week.date())), 1, 1, 0, 0, 1, 0.0),
    ]
    lung = next(m for m in found["models"] if m["model"] == "lung-ct")
    assert {(c["ai_triage"], c["radiologist_triage"]): c["n"] for c in lung["confusion"]} == {
        ("URGENT", "URGENT"): 1, ("URGENT", "ROUTINE"): 1, ("URGENT", "PRIORITY"): 1,
        ("ROUTINE", "ROUTINE"): 1, ("ROUTINE", "URGENT"): 1}
    assert lung["agreement"] == 0.4 and lung["ratings"] == 5  # (1+0+0.5+0.5+0)/5
    assert "partly correct 0.5" in found["rule"]
    assert len(api.client.get("/api/v1/quality?weeks=52").json()["items"]) == 4
    assert api.client.get("/api/v1/quality?weeks=0").status_code == 422

    api.login(Role.RADIOLOGIST)
    r = api.client.get("/api/v1/quality.csv?weeks=4")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["model"] for row in rows] == ["lung-ct", "'=brain", "lung-ct"]
    assert (rows[0]["URGENT>ROUTINE"], rows[0]["URGENT>URGENT"], rows[0]["agreement"],
            rows[0]["ROUTINE>URGENT"]) == ("1", "1", "0.5", "0")
    assert rows[2]["ROUTINE>URGENT"] == "1"


def test_feedback_outlives_a_rerun(api: Api) -> None:
    job = make_job(api.ledger, "2.25.5", to=DONE)
    run = _run(api, job)
    csrf = api.login(Role.RADIOLOGIST)
    assert _post(api, csrf, job, run, verdict="correct")[0] == 201
    with api.ledger.engine.begin() as conn:  # a re-run: the old run is no longer current
        conn.execute(update(db.results).where(db.results.c.id == run).values(current=False))
    _run(api, job, triage="ROUTINE", generation=2)
    items = api.client.get(f"/api/v1/studies/{job}/feedback").json()["items"]
    assert [(i["generation"], i["ai_triage"]) for i in items] == [(1, "URGENT")]
    assert api.client.get("/api/v1/quality").json()["models"][0]["ratings"] == 1
