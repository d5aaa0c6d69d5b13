"""Radiologists' feedback on model results, and its summary per model per ISO week.

A radiologist marks one model run (a ``results`` row) correct, partly correct or incorrect,
may correct its triage, and may add a note. The run's model, version, generation and triage
are copied into the feedback row, so the feedback and the summary outlive a re-run (which
keeps the old run but marks it not current). Each verdict is an audit record (action
``feedback``): who, which job, which run, the verdict and triage, never the note's words.

The summary reads one window of ISO weeks (UTC) through ``ix_feedback_created``. A radiologist
who rates the same run again replaces their earlier verdict: only each user's newest verdict
on a run counts. Per model and week it gives:

- ``results``: the runs rated, ``ratings``: the verdicts counted (several radiologists may
  rate one run), and the count of each verdict;
- ``agreement``: the mean of the verdicts' scores, correct = 1, partly correct = 0.5,
  incorrect = 0 (None without a rating);
- the triage confusion table: the AI's triage against the radiologist's (the corrected triage,
  or the AI's own where none was given: leaving it means agreeing). Runs without an AI triage
  are left out of the table, not out of the agreement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, insert, select

from node.core import audit, db
from node.core.contract import Triage
from node.core.errors import NodeError
from node.core.ledger import iso_z, utcnow

#: the longest note kept (characters): a few sentences, not a report
NOTE_MAX = 2000
#: the most weeks one summary reads
WEEKS_MAX = 104


class Verdict(StrEnum):
    CORRECT = "correct"
    PARTLY_CORRECT = "partly_correct"
    INCORRECT = "incorrect"


#: each verdict's score in the agreement rate
SCORE: dict[Verdict, float] = {Verdict.CORRECT: 1.0, Verdict.PARTLY_CORRECT: 0.5,
                               Verdict.INCORRECT: 0.0}
#: the triage levels in their order of urgency (the confusion table's rows and columns)
TRIAGES: tuple[str, ...] = (Triage.ROUTINE.value, Triage.PRIORITY.value, Triage.URGENT.value)


class UnknownRun(NodeError):
    """The job has no model run of that id."""


@dataclass(frozen=True)
class Given:
    """One feedback: what was given on which run, by whom, when."""

    id: int
    result_id: int
    study_id: int
    model: str
    model_version: str
    generation: int
    ai_triage: str | None
    user: str
    verdict: str
    corrected_triage: str | None
    note: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run_id": self.result_id, "job": self.study_id,
                "model": self.model, "version": self.model_version,
                "generation": self.generation, "ai_triage": self.ai_triage, "user": self.user,
                "verdict": self.verdict, "corrected_triage": self.corrected_triage,
                "note": self.note, "created_at": iso_z(self.created_at)}


def record(engine: Engine, *, study_id: int, result_id: int, user: str, role: str | None,
           address: str, verdict: Verdict, corrected_triage: Triage | None, note: str,
           at: datetime | None = None) -> Given:
    """Store one feedback on run ``result_id`` of job ``study_id`` (UnknownRun if the job has
    no such run) and write its audit record. ``note`` is cut to NOTE_MAX characters."""
    r, f = db.results.c, db.feedback.c
    when = at or utcnow()
    text = note.strip()[:NOTE_MAX]
    with engine.begin() as conn:
        run = conn.execute(select(r.model, r.model_version, r.generation, r.triage)
                           .where(r.id == result_id, r.study_id == study_id)).first()
        if run is None:
            raise UnknownRun(f"job #{study_id} has no model run #{result_id}")
        values = {"result_id": result_id, "study_id": study_id, "model": run.model,
                  "model_version": run.model_version, "generation": run.generation,
                  "ai_triage": run.triage, "user_name": user, "verdict": verdict.value,
                  "corrected_triage": None if corrected_triage is None else corrected_triage.value,
                  "note": text or None, "created_at": when}
        new_id = conn.execute(insert(db.feedback).values(**values).returning(f.id)).scalar_one()
    triage = "" if corrected_triage is None else f", triage {run.triage} -> {corrected_triage}"
    audit.record(engine, audit.Entry(
        action="feedback", outcome="ok", user=user, role=role, address=address,
        study_id=study_id, at=when,
        detail=f"run #{result_id} ({run.model} {run.model_version} g{run.generation}): "
               f"{verdict.value}{triage}{', with a note' if text else ''}"))
    return Given(int(new_id), result_id, study_id, run.model, run.model_version,
                 run.generation, run.triage, user, verdict.value, values["corrected_triage"],
                 text, when)


def for_study(engine: Engine, study_id: int) -> list[Given]:
    """The job's feedback, oldest first (through ix_feedback_study)."""
    f = db.feedback.c
    query = select(db.feedback).where(f.study_id == study_id).order_by(f.id)
    with db.reader(engine) as conn:
        return [Given(row.id, row.result_id, row.study_id, row.model, row.model_version,
                      row.generation, row.ai_triage, row.user_name, row.verdict,
                      row.corrected_triage, row.note or "", row.created_at)
                for row in conn.execute(query)]


# ------------------------------------------------------------------ summary


def week_start(day: date) -> date:
    """The Monday that starts ``day``'s ISO week."""
    return day - timedelta(days=day.weekday())


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass
class Tally:
    """The verdicts of one model in one week (or the whole window)."""

    model: str
    week: date | None
    verdicts: Counter[str] = field(default_factory=Counter)
    runs: set[int] = field(default_factory=set)
    #: (AI triage, radiologist's triage) -> ratings
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, run: int, verdict: str, ai: str | None, corrected: str | None) -> None:
        self.verdicts[verdict] += 1
        self.runs.add(run)
        if ai in TRIAGES:
            assert ai is not None
            self.confusion[(ai, corrected if corrected in TRIAGES else ai)] += 1

    @property
    def ratings(self) -> int:
        return sum(self.verdicts.values())

    @property
    def agreement(self) -> float | None:
        if not self.ratings:
            return None
        score = sum(SCORE[Verdict(v)] * n for v, n in self.verdicts.items())
        return round(score / self.ratings, 4)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.week is not None:
            out |= {"week": week_label(self.week), "week_start": self.week.isoformat()}
        return out | {
            "results": len(self.runs), "ratings": self.ratings,
            **{v.value: self.verdicts[v.value] for v in Verdict},
            "agreement": self.agreement,
            "confusion": [{"ai_triage": a, "radiologist_triage": b, "n": self.confusion[(a, b)]}
                          for a in TRIAGES for b in TRIAGES if self.confusion[(a, b)]]}


def summary(engine: Engine, now: datetime, weeks: int) -> dict[str, Any]:
    """Per model per ISO week of the last ``weeks`` weeks (this one included), newest week
    first, and per model over the whole window: the counts, the agreement, the confusion."""
    weeks = max(1, min(weeks, WEEKS_MAX))
    first = week_start(now.date()) - timedelta(weeks=weeks - 1)
    f = db.feedback.c
    query = (select(f.id, f.created_at, f.model, f.result_id, f.user_name, f.verdict,
                    f.ai_triage, f.corrected_triage)
             .where(f.created_at >= datetime(first.year, first.month, first.day))
             .order_by(f.created_at, f.id))
    with db.reader(engine) as conn:
        rows = list(conn.execute(query))
    newest = {(row.result_id, row.user_name): row for row in rows}  # a later verdict replaces
    per_week: dict[tuple[str, date], Tally] = {}
    per_model: dict[str, Tally] = {}
    for row in sorted(newest.values(), key=lambda r: (r.created_at, r.id)):
        monday = week_start(row.created_at.date())
        for tally in (per_week.setdefault((row.model, monday), Tally(row.model, monday)),
                      per_model.setdefault(row.model, Tally(row.model, None))):
            tally.add(row.result_id, row.verdict, row.ai_triage, row.corrected_triage)
    return {
        "weeks": weeks, "since": first.isoformat(), "triages": list(TRIAGES),
        "rule": "agreement = mean score of the newest verdict of each radiologist on each run: "
                "correct 1, partly correct 0.5, incorrect 0",
        "items": [t.as_dict() for _, t in sorted(per_week.items(),
                                                 key=lambda kv: (-kv[0][1].toordinal(),
                                                                 kv[0][0]))],
        "models": [per_model[m].as_dict() for m in sorted(per_model)]}


#: the CSV export's columns: the week's figures, then one per confusion cell
CSV_COLUMNS = ("model", "week", "week_start", "results", "ratings", *[v.value for v in Verdict],
               "agreement", *[f"{a}>{b}" for a in TRIAGES for b in TRIAGES])


def csv_rows(found: dict[str, Any]) -> list[list[str]]:
    """The summary's per-week rows as CSV cells (neutralised against formula injection)."""
    out = []
    for item in found["items"]:
        cells = {f"{c['ai_triage']}>{c['radiologist_triage']}": c["n"]
                 for c in item["confusion"]}
        row = {**item, **{k: cells.get(k, 0) for k in CSV_COLUMNS if ">" in k}}
        out.append([audit.safe_cell(row.get(c)) for c in CSV_COLUMNS])
    return out
