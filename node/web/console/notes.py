"""The console's report notes and "E-mail this report": two forms on the Study page
(``templates/notes_panel.html``) for each current model run.

Both call the API's functions (``node.web.notes.write`` and ``mail``): the same checks, the
same audit records. The page shows the outcome through ``?done=``: note-saved, note-same (the
same note again: no new version), note-refused, mail-queued, mail-sent-before (that version
already went to that address: nothing is sent twice), mail-refused (not one address, the job
not released, or report e-mail not configured).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from node.core.accounts import Session
from node.core.report_notes import NOTE_MAX
from node.pipeline.deliver.report_mail import ADDRESS_MAX
from node.web import notes as api
from node.web.access import page_route
from node.web.console.deps import page_allow, page_session
from node.web.context import WebContext
from node.web.deps import address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)


def _back(study_id: int, run_id: int, done: str) -> RedirectResponse:
    return RedirectResponse(f"/studies/{study_id}?done={done}#versions-{run_id}",
                            status_code=303)


def _refused(exc: HTTPException) -> None:
    if exc.status_code != 409:
        raise exc


@page_route(router, "POST", "/studies/{study_id}/results/{run_id}/notes", api.WRITERS,
            page_allow, response_model=None)
def note(request: Request, study_id: int, run_id: int,
         text: str = Form("", alias="note", max_length=2 * NOTE_MAX), user: Session = _USER,
         ctx: WebContext = _CTX) -> Response:
    """Save a note from the Study page's form (a new report version), then show the page."""
    try:
        _, new = api.write(ctx, user, address(request), study_id, run_id, text)
    except HTTPException as exc:
        _refused(exc)
        return _back(study_id, run_id, "note-refused")
    return _back(study_id, run_id, "note-saved" if new else "note-same")


@page_route(router, "POST", "/studies/{study_id}/results/{run_id}/email", api.MAILERS,
            page_allow, response_model=None)
def email(request: Request, study_id: int, run_id: int,
          to: str = Form("", max_length=2 * ADDRESS_MAX), user: Session = _USER,
          ctx: WebContext = _CTX) -> Response:
    """Queue the report's e-mail from the Study page's form, then show the page again."""
    try:
        done = api.mail(ctx, user, address(request), study_id, run_id, to)
    except HTTPException as exc:
        _refused(exc)
        return _back(study_id, run_id, "mail-refused")
    return _back(study_id, run_id, "mail-queued" if done.sending else "mail-sent-before")
