"""Radiologists' feedback through the API, and the Model quality summary (JSON and CSV).

Only radiologists give feedback (their verdict on a model run, a corrected triage, a note);
the roles that read results with the patient's identity (radiologists, clinicians, admins)
read it. The summary per model per ISO week is for the people who answer for the models'
quality: admins and radiologists. The rules of the summary are in :mod:`node.core.feedback`.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from node.core import db, feedback
from node.core.accounts import Role, Session
from node.core.contract import Triage
from node.core.errors import UnknownStudy
from node.core.ledger import utcnow
from node.web.access import route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")
_CTX, _SESSION = Depends(context), Depends(session)

#: who gives feedback
GIVERS = frozenset({Role.RADIOLOGIST})
#: who reads the feedback given on a job (the roles that read results and reports)
READERS = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.CLINICIAN})
#: who reads the Model quality summary
QUALITY = frozenset({Role.ADMIN, Role.RADIOLOGIST})
#: weeks the summary covers unless asked otherwise
DEFAULT_WEEKS = 8


class FeedbackIn(BaseModel):
    """One verdict on a model run; anything else, or a longer note, is a 422."""

    model_config = ConfigDict(extra="forbid")

    verdict: feedback.Verdict
    triage: Triage | None = Field(None, description="the corrected triage; null: the AI's "
                                  "triage stands")
    note: str = Field("", max_length=feedback.NOTE_MAX, description="plain text")


def give(ctx: WebContext, user: Session, where: str, study_id: int, run_id: int,
         body: FeedbackIn) -> feedback.Given:
    """Store one feedback (404 for an unknown job or run): the API's and the console's."""
    try:
        ctx.ledger.study_by_id(study_id)
        return feedback.record(ctx.ledger.engine, study_id=study_id, result_id=run_id,
                               user=user.name, role=user.role.value, address=where,
                               verdict=body.verdict, corrected_triage=body.triage,
                               note=body.note)
    except (UnknownStudy, feedback.UnknownRun) as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def study_panel(ctx: WebContext, user: Session, study_id: int) -> dict[str, Any]:
    """The console Study page's feedback panel for this user: each model run of the job (by
    its results id) with the feedback given on it; not shown to a role that does not read it."""
    if user.role not in READERS:
        return {"shown": False, "can_give": False, "runs": []}
    r = db.results.c
    query = (select(r.id, r.model, r.model_version, r.generation, r.triage, r.current)
             .where(r.study_id == study_id).order_by(r.generation.desc(), r.model))
    with db.reader(ctx.ledger.engine) as conn:
        rows = list(conn.execute(query))
    given = feedback.for_study(ctx.ledger.engine, study_id)
    runs = [{"id": row.id, "model": row.model, "version": row.model_version,
             "generation": row.generation, "triage": row.triage, "current": bool(row.current),
             "given": [g for g in given if g.result_id == row.id]} for row in rows]
    return {"shown": True, "can_give": user.role in GIVERS, "runs": runs,
            "note_max": feedback.NOTE_MAX}


@route(router, "POST", "/studies/{study_id}/results/{run_id}/feedback", GIVERS,
       status_code=201)
def post_feedback(study_id: int, run_id: int, body: FeedbackIn, request: Request,
                  user: Session = _SESSION, ctx: WebContext = _CTX) -> dict[str, Any]:
    """A radiologist's verdict on one model run (``run_id`` is the run's ``id`` in the
    results): correct, partly_correct or incorrect, a corrected triage, a note. Audited."""
    return give(ctx, user, address(request), study_id, run_id, body).as_dict()


@route(router, "GET", "/studies/{study_id}/feedback", READERS)
def study_feedback(study_id: int, ctx: WebContext = _CTX) -> dict[str, Any]:
    """The feedback given on the job's model runs, oldest first."""
    try:
        ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return {"id": study_id,
            "items": [g.as_dict() for g in feedback.for_study(ctx.ledger.engine, study_id)]}


_WEEKS = Query(DEFAULT_WEEKS, ge=1, le=feedback.WEEKS_MAX)


@route(router, "GET", "/quality", QUALITY)
def quality(weeks: int = _WEEKS, ctx: WebContext = _CTX) -> dict[str, Any]:
    """Per model per ISO week (UTC) of the last ``weeks``: results rated, verdicts, the
    agreement rate (correct 1, partly correct 0.5, incorrect 0; each radiologist's newest
    verdict on a run counts) and the triage confusion table (AI against radiologist)."""
    return feedback.summary(ctx.ledger.engine, utcnow(), weeks)


@route(router, "GET", "/quality.csv", QUALITY, response_class=Response)
def quality_csv(weeks: int = _WEEKS, ctx: WebContext = _CTX) -> Response:
    """The summary's weeks as CSV, one line per model and week, a column per confusion cell
    (``AI>radiologist``); cells a spreadsheet would run as a formula start with '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(feedback.CSV_COLUMNS)
    writer.writerows(feedback.csv_rows(feedback.summary(ctx.ledger.engine, utcnow(), weeks)))
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="model-quality.csv"'})
