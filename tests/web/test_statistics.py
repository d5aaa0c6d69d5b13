"""GET /api/v1/statistics: every number checked against a ledger the test builds by hand (its
rollup back-filled from the rows, as the migration does), on SQLite and PostgreSQL; the same
answer from the rollup the ledger kept through a mixed history as from one rebuilt from its
rows; the route for every role, its windows and its bad parameters."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from node.core import db, rollup
from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.ledger import Ledger
from node.web.statistics import summarize
from tests.core.test_rollup import mixed_history
from tests.web.conftest import Api, make_job

NOW = datetime(2026, 12, 9, 12, 0)  # a Wednesday; ISO week 2026-W50 began on Monday 12-07


def _at(text: str) -> datetime:
    return datetime.fromisoformat(f"2026-{text}")


#: name: (received, instances, state, generation, completed, [moves into REPORTED])
STUDIES: dict[str, tuple[str, int, JobState, int, str | None, list[str]]] = {
    "s1": ("12-09 08:00", 10, JobState.DONE, 1, "12-09 08:05", ["12-09 08:06"]),  # 60 s
    "s2": ("12-08 23:59", 5, JobState.REPORTED, 1, "12-09 00:00", ["12-09 00:02"]),  # 120 s
    "s3": ("12-07 10:00", 7, JobState.FAILED, 1, "12-07 10:01", []),
    "s4": ("12-03 09:00", 3, JobState.DONE, 1, "12-03 10:00", ["12-03 10:10"]),  # 600 s
    "s5": ("12-01 09:00", 4, JobState.DONE, 1, "12-01 10:00", ["12-01 10:05"]),  # before window
    "s6": ("11-20 09:00", 100, JobState.DONE, 1, "11-20 10:00", ["11-20 10:01"]),
    # reopened: generation 1 was reported before the last completion, which does not count
    "s7": ("12-08 10:00", 2, JobState.REPORTED, 2, "12-08 12:00",
           ["12-08 11:00", "12-08 12:30"]),  # 600 s (generation 1), 1800 s (generation 2)
}
#: the moves into COMPLETE where a job completed more than once (else its ``completed``)
COMPLETIONS = {"s7": ["12-08 10:50", "12-08 12:00"]}
#: name: [(generation, model, triage, current, created)]
RUNS = {
    "s1": [(1, "lung-ct", "URGENT", True, "12-09 08:03")],
    "s4": [(1, "lung-ct", "ROUTINE", True, "12-03 09:30")],
    "s5": [(1, "lung-ct", "ROUTINE", True, "12-01 09:30")],  # before the day window
    "s7": [(1, "brain-mask", "URGENT", False, "12-08 10:30"),  # superseded
           (2, "brain-mask", "PRIORITY", True, "12-08 11:59")],
}


def _build(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        for n, (name, (received, count, state, generation, completed, reported)) in \
                enumerate(STUDIES.items()):
            study_id = conn.execute(db.studies.insert().values(
                study_instance_uid=f"1.2.826.0.1.77.{n}", state=state.value,
                generation=generation, duplicates=0, received_at=_at(received),
                opened_at=_at(received), last_received_at=_at(received),
                completed_at=_at(completed) if completed else None, calling_ae_title="CT1",
                updated_at=_at(received), instances=count)).inserted_primary_key[0]
            conn.execute(db.events.insert(), [
                {"at": _at(at), "study_id": study_id, "kind": "transition",
                 "from_state": "DELIVERED", "to_state": "REPORTED", "detail": "test"}
                for at in reported] + [  # the moves into COMPLETE, measured from
                {"at": _at(at), "study_id": study_id, "kind": "transition",
                 "from_state": "RECEIVING", "to_state": "COMPLETE", "detail": "test"}
                for at in COMPLETIONS.get(name, [completed] if completed else [])])
            for generation_, model, triage, current, created in RUNS.get(name, []):
                conn.execute(db.results.insert().values(
                    study_id=study_id, generation=generation_, model=model, model_version="1",
                    triage=triage, finding=None, current=current, created_at=_at(created),
                    folder=f"results/x/g{generation_}/{model}"))
        rollup.rebuild(conn)


def test_every_number_matches_the_ledger_built_here(ledger: Ledger) -> None:
    _build(ledger)
    got = summarize(ledger.engine, NOW, days=7, weeks=3)
    assert got["window"] == {"days": 7, "from": "2026-12-03T00:00:00.000Z", "weeks": 3,
                             "weeks_from": "2026-11-23", "until": "2026-12-09T12:00:00.000Z"}
    per_day = {d["date"]: (d["studies"], d["instances"]) for d in got["per_day"]}
    assert per_day == {"2026-12-03": (1, 3), "2026-12-04": (0, 0), "2026-12-05": (0, 0),
                       "2026-12-06": (0, 0), "2026-12-07": (1, 7), "2026-12-08": (2, 7),
                       "2026-12-09": (1, 10)}
    assert [(w["week"], w["from"], w["studies"], w["instances"]) for w in got["per_week"]] == [
        ("2026-W48", "2026-11-23", 0, 0), ("2026-W49", "2026-11-30", 2, 7),
        ("2026-W50", "2026-12-07", 4, 24)]
    states = got["states"]
    assert set(states) == {s.value for s in JobState}
    assert {k: v for k, v in states.items() if v} == {"DONE": 4, "REPORTED": 2, "FAILED": 1}
    assert got["models"] == [
        {"model": "brain-mask", "runs": 1, "triage": {"PRIORITY": 1}},
        {"model": "lung-ct", "runs": 2, "triage": {"URGENT": 1, "ROUTINE": 1}}]
    assert got["triage"] == {"PRIORITY": 1, "ROUTINE": 1, "URGENT": 1}
    # moves into REPORTED in the window: 60, 120, 600, 600 and 1800 s; median 600, p95
    # (nearest rank) 1800, each read from the rollup's histogram within its error
    times = got["completion_to_reported_s"]
    assert times["jobs"] == 5
    assert math.isclose(times["median"], 600, rel_tol=rollup.RELATIVE_ERROR)
    assert math.isclose(times["p95"], 1800, rel_tol=rollup.RELATIVE_ERROR)


def test_the_kept_rollup_answers_as_one_rebuilt_from_the_rows(ledger: Ledger) -> None:
    mixed_history(ledger)  # received, moved, failed, retried, force-completed, reopened, runs
    now = ledger.study("1.2.826.0.1.99.6").received_at
    kept = summarize(ledger.engine, now, days=7, weeks=2)
    with ledger.engine.begin() as conn:
        rollup.rebuild(conn)
    assert summarize(ledger.engine, now, days=7, weeks=2) == kept
    assert sum(d["studies"] for d in kept["per_day"]) == 7
    assert kept["states"]["RECEIVING"] == 3 and kept["completion_to_reported_s"]["jobs"] == 4


def test_an_empty_ledger_has_zeros_and_no_times(ledger: Ledger) -> None:
    got = summarize(ledger.engine, NOW)
    assert len(got["per_day"]) == 30 and len(got["per_week"]) == 12
    assert got["per_week"][-1] == {"week": "2026-W50", "from": "2026-12-07", "studies": 0,
                                   "instances": 0}
    assert set(got["states"].values()) == {0} and got["models"] == [] and got["triage"] == {}
    assert got["completion_to_reported_s"] == {"jobs": 0, "median": None, "p95": None}


def test_every_role_reads_the_statistics_of_today(api: Api) -> None:
    make_job(api.ledger, "1.2.3", series=1, per_series=4)
    for role in Role:
        api.login(role)
        r = api.client.get("/api/v1/statistics")
        assert r.status_code == 200, role
        body: dict[str, Any] = r.json()
        assert body["window"]["days"] == 30 and len(body["per_week"]) == 12
        assert body["per_day"][-1]["studies"] == 1 and body["per_day"][-1]["instances"] == 4
        assert body["states"]["FAILED"] == 1
    assert api.client.get("/api/v1/statistics", params={"days": 0}).status_code == 422
    assert api.client.get("/api/v1/statistics", params={"weeks": 500}).status_code == 422
    r = api.client.get("/api/v1/statistics", params={"days": 366, "weeks": 106})
    assert len(r.json()["per_day"]) == 366
