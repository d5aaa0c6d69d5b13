"""The console's feedback: the form on the Study page and the Model quality page.

A radiologist gives a verdict on each model run of a job from the Study page (the API's
``node.web.feedback.give``: the same checks, the same audit record); the roles that read
results see what was given (``node.web.feedback.study_panel``, which the Study page reads,
so this module and ``pages`` do not import each other). The Model quality page shows the
API's summary per model per ISO week, the triage confusion table, and links to its CSV.
Verdict names are in the templates (feedback_form.html, quality.html).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from node.core import feedback as core
from node.core.accounts import Session
from node.core.ledger import utcnow
from node.web import feedback as api
from node.web.access import page_route
from node.web.console.deps import page_allow, page_session
from node.web.console.pages import _page
from node.web.console.words import TRIAGE
from node.web.context import WebContext
from node.web.deps import address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)

#: the weeks the Model quality page offers
WEEK_CHOICES = (4, 8, 13, 26, 52)


@page_route(router, "POST", "/studies/{study_id}/results/{run_id}/feedback", api.GIVERS,
            page_allow, response_model=None)
def give(request: Request, study_id: int, run_id: int, verdict: str = Form("", max_length=32),
         triage: str = Form("", max_length=16),
         note: str = Form("", max_length=2 * core.NOTE_MAX),
         user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """Save a radiologist's verdict from the Study page's form, then show the page again."""
    try:  # a browser sends a textarea's line ends as CRLF, and counts them as one
        body = api.FeedbackIn(verdict=verdict, triage=triage or None,  # type: ignore[arg-type]
                              note=note.replace("\r\n", "\n"))
    except ValidationError:
        return RedirectResponse(f"/studies/{study_id}?done=feedback-bad#run-{run_id}",
                                status_code=303)
    api.give(ctx, user, address(request), study_id, run_id, body)
    return RedirectResponse(f"/studies/{study_id}?done=feedback#run-{run_id}", status_code=303)


@page_route(router, "GET", "/quality", api.QUALITY, page_allow, response_model=None)
def quality(request: Request, weeks: int = Query(api.DEFAULT_WEEKS, ge=1, le=core.WEEKS_MAX),
            user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """Agreement and triage confusion per model per ISO week, from the API's summary."""
    found = core.summary(ctx.ledger.engine, utcnow(), weeks)
    return _page(request, "quality.html", user, active="quality", found=found, weeks=weeks,
                 week_choices=sorted({*WEEK_CHOICES, weeks}),
                 triages=TRIAGE, triages_order=found["triages"], confusion={
                     m["model"]: {(c["ai_triage"], c["radiologist_triage"]): c["n"]
                                  for c in m["confusion"]} for m in found["models"]})
