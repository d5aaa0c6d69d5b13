"""The console's review form: a radiologist approves or rejects a job AWAITING_REVIEW from
the Study page (``templates/review_form.html``).

The form calls the API's :func:`node.web.review.decide`: the same checks, the same audit
record. The page shows the outcome through ``?done=``: reviewed-approve, reviewed-reject, or
review-refused (the job was no longer waiting, or the note too long).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from node.core import feedback as core
from node.core.accounts import Session
from node.web import review as api
from node.web.access import page_route
from node.web.console.deps import page_allow, page_session
from node.web.context import WebContext
from node.web.deps import address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)


@page_route(router, "POST", "/studies/{study_id}/review", api.REVIEWERS, page_allow,
            response_model=None)
def review(request: Request, study_id: int, decision: str = Form("", max_length=16),
           note: str = Form("", max_length=2 * core.NOTE_MAX), user: Session = _USER,
           ctx: WebContext = _CTX) -> Response:
    """Approve or reject from the Study page's form, then show the page again."""
    try:  # a browser sends a textarea's line ends as CRLF
        body = api.ReviewIn(decision=decision, note=note.replace("\r\n", "\n"))  # type: ignore[arg-type]
        api.decide(ctx, user, address(request), study_id, body)
    except ValidationError:
        return RedirectResponse(f"/studies/{study_id}?done=review-refused", status_code=303)
    except HTTPException as exc:
        if exc.status_code != 409:
            raise
        return RedirectResponse(f"/studies/{study_id}?done=review-refused", status_code=303)
    return RedirectResponse(f"/studies/{study_id}?done=reviewed-{body.decision}",
                            status_code=303)
