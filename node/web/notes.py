"""Doctors' notes on a report (each a new PDF version, sent to the PACS) and "E-mail this
report", through the API; the Study page's panel of both (``node.web.console.notes``).

Radiologists and clinicians write notes and e-mail reports: the doctors who read results.
The roles that may download the identified files (``results.IDENTIFIED_FILES``) read the
notes and download every version; each download is audited as the report's is. The actions
are ``node.pipeline.build.report_version.add_note`` and
``node.pipeline.deliver.report_mail.queue_report_mail``: their refusals (an empty or too long
note, a job whose report is not built, report e-mail not configured, not one address) are a
409 or 422 with the node's reason; each success is an audit record.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, true

from node.core import db, report_notes
from node.core.accounts import Role, Session
from node.core.errors import UnknownStudy
from node.core.ledger import StudyRow, utcnow
from node.core.report_notes import NOTE_MAX, Note, Run
from node.pipeline.build.report_version import (
    REPORT_PDF,
    Author,
    NoteRefused,
    add_note,
    outputs_folder,
)
from node.pipeline.deliver.report_mail import (
    ADDRESS_MAX,
    MAIL_STATES,
    MailRefused,
    Queued,
    configured,
    queue_report_mail,
)
from node.web.access import route
from node.web.context import WebContext
from node.web.deps import address, context, session
from node.web.results import IDENTIFIED_FILES, download_response, open_audited

router = APIRouter(prefix="/api/v1")
_CTX, _SESSION = Depends(context), Depends(session)

#: who writes notes on a report and e-mails it: the doctors who read results
WRITERS = frozenset({Role.RADIOLOGIST, Role.CLINICIAN})
MAILERS = WRITERS


class NoteIn(BaseModel):
    """One note; a longer one, or anything else, is a 422."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=NOTE_MAX, description="plain text")


class MailIn(BaseModel):
    """One address; a list, a name with it, or anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3, max_length=ADDRESS_MAX, description="name@domain")


def _study_and_run(ctx: WebContext, study_id: int, run_id: int) -> tuple[StudyRow, Run]:
    try:
        study = ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    run = report_notes.run(ctx.ledger.engine, study_id, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"job #{study_id} has no model run "
                            f"#{run_id}")
    return study, run


def write(ctx: WebContext, user: Session, where: str, study_id: int, run_id: int,
          text: str) -> tuple[Note, bool]:
    """A note on run ``run_id``, its version queued; the API's and the console's."""
    study, run = _study_and_run(ctx, study_id, run_id)
    try:
        return add_note(ctx.ledger.engine, ctx.outbox, ctx.settings, study, run,
                        Author(user.name, user.role.value, where), text,
                        utcnow().replace(microsecond=0))
    except NoteRefused as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=where,
                            action="report-note", study_id=study.id, outcome="refused",
                            detail=str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None


def mail(ctx: WebContext, user: Session, where: str, study_id: int, run_id: int,
         to: str) -> Queued:
    """The run's latest report version e-mailed to ``to``; the API's and the console's."""
    study, run = _study_and_run(ctx, study_id, run_id)
    try:
        return queue_report_mail(ctx.ledger.engine, ctx.outbox, ctx.settings, study, run,
                                 Author(user.name, user.role.value, where), to, utcnow())
    except MailRefused as exc:
        # the refusal's words are the node's own: never the address typed
        ctx.accounts.record(name=user.name, role=user.role, address=where,
                            action="report-mail", study_id=study.id, outcome="refused",
                            detail=str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None


def study_panel(ctx: WebContext, user: Session, study: StudyRow) -> dict[str, Any]:
    """The Study page's report versions panel for this user: each current run whose report
    is built, with its versions (the original first) and notes; what this user may do."""
    if user.role not in IDENTIFIED_FILES:
        return {"shown": False, "runs": []}
    notes = report_notes.for_study(ctx.ledger.engine, study.id)
    runs = []
    for run_id, model, generation, folder in _current_runs(ctx, study):
        if not (outputs_folder(ctx.settings.var_path, folder) / REPORT_PDF).exists():
            continue  # no report built (yet): nothing to add a note to
        mine = [n for n in notes if n.result_id == run_id]
        runs.append({"id": run_id, "model": model, "generation": generation, "notes": mine,
                     "original": f"/api/v1/studies/{study.id}/report.pdf?model={model}"
                                 f"&generation={generation}",
                     "latest": mine[-1].version if mine else report_notes.FIRST_VERSION})
    return {"shown": True, "runs": runs, "note_max": NOTE_MAX, "address_max": ADDRESS_MAX,
            "can_write": user.role in WRITERS,
            "can_mail": user.role in MAILERS and configured(ctx.settings)
            and study.state in MAIL_STATES}


def _current_runs(ctx: WebContext, study: StudyRow) -> list[tuple[int, str, int, str]]:
    """(id, model, generation, result folder) of the job's current runs, by model."""
    r = db.results.c
    query = (select(r.id, r.model, r.generation, r.folder)
             .where(r.study_id == study.id, r.current == true()).order_by(r.model))
    with db.reader(ctx.ledger.engine) as conn:
        return [(int(x.id), str(x.model), int(x.generation), str(x.folder))
                for x in conn.execute(query)]


@route(router, "POST", "/studies/{study_id}/results/{run_id}/notes", WRITERS,
       status_code=201)
def post_note(study_id: int, run_id: int, body: NoteIn, request: Request,
              user: Session = _SESSION, ctx: WebContext = _CTX) -> dict[str, Any]:
    """A doctor's note on one model run's report: it makes the next version of the PDF (the
    original report and every note so far), queued to the PACS as a new instance in the
    report's series. The same note again from the same user makes no new version
    (``"new": false``). Audited."""
    note, new = write(ctx, user, address(request), study_id, run_id, body.note)
    return {**note.as_dict(), "new": new,
            "href": f"/api/v1/studies/{study_id}/report-versions/{note.id}.pdf"}


@route(router, "GET", "/studies/{study_id}/notes", IDENTIFIED_FILES)
def study_notes(study_id: int, ctx: WebContext = _CTX) -> dict[str, Any]:
    """The notes on the job's reports, oldest first, each with its version's download."""
    try:
        ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return {"id": study_id, "items": [
        {**n.as_dict(), "href": f"/api/v1/studies/{study_id}/report-versions/{n.id}.pdf"}
        for n in report_notes.for_study(ctx.ledger.engine, study_id)]}


@route(router, "GET", "/studies/{study_id}/report-versions/{note_id}.pdf", IDENTIFIED_FILES,
       response_class=StreamingResponse)
def version_pdf(study_id: int, note_id: int, request: Request, user: Session = _SESSION,
                ctx: WebContext = _CTX) -> StreamingResponse:
    """The PDF of the report version a note made: it names the patient; each download is
    audited."""
    try:
        row = ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    note = next((n for n in report_notes.for_study(ctx.ledger.engine, row.id)
                 if n.id == note_id), None)
    if note is None:
        raise HTTPException(status_code=404, detail=f"job #{row.id} has no note #{note_id}")
    path = ctx.settings.var_path / "outbox" / note.pdf_path
    what = f"report version {note.version} {note.model} g{note.generation}"
    stream = open_audited(ctx, user, request, row, path, what,
                          f"version {note.version} of the report of job #{row.id}")
    return download_response(stream, "application/pdf",
                             f"job{row.id}-g{note.generation}-{note.model}-report-"
                             f"v{note.version}.pdf")


@route(router, "POST", "/studies/{study_id}/results/{run_id}/email", MAILERS,
       status_code=202)
def post_mail(study_id: int, run_id: int, body: MailIn, request: Request,
              user: Session = _SESSION, ctx: WebContext = _CTX) -> dict[str, Any]:
    """E-mail the latest version of one model run's report to one address, through the
    outbox and the SMTP server of ``delivery.report_mail`` (409 while that is not
    configured). The subject and body name no patient unless the settings say so. Audited
    with the address's domain only."""
    done = mail(ctx, user, address(request), study_id, run_id, body.to)
    return {"version": done.version, "domain": done.domain, "sending": done.sending}

