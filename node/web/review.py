"""A radiologist's review of a job held at the review gate, through the API.

``POST /api/v1/studies/{id}/review`` with ``{"decision": "approve"|"reject", "note": ...}``:
radiologists only (they answer for the result that reaches the EMR), CSRF-checked as every
change, 409 unless the job is AWAITING_REVIEW. Every decision, and every refused one, is in
the audit trail as action "review". The rules are in :mod:`node.pipeline.review`; the console's
form calls :func:`decide` too.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from node.core import feedback
from node.core.accounts import Role, Session
from node.core.errors import IllegalTransition, NodeError, UnknownStudy
from node.pipeline import review
from node.web.access import route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")
_CTX, _SESSION = Depends(context), Depends(session)

#: who decides at the review gate
REVIEWERS = frozenset({Role.RADIOLOGIST})


class ReviewIn(BaseModel):
    """One decision; anything else, or a longer note, is a 422."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    note: str = Field("", max_length=feedback.NOTE_MAX, description="plain text")


def decide(ctx: WebContext, user: Session, where: str, study_id: int,
           body: ReviewIn) -> dict[str, Any]:
    """Approve or reject job ``study_id`` (404 unknown, 409 not AWAITING_REVIEW); audited."""
    try:
        study = ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    who = review.Reviewer(user.name, "", user.role.value, where)
    try:
        if body.decision == "approve":
            done = review.approve(ctx.ledger, ctx.outbox, ctx.settings.var_path / "outbox",
                                  study, who, body.note)
        else:
            done = review.reject(ctx.ledger, study, who, body.note)
    except IllegalTransition as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=where, action="review",
                            study_id=study.id, outcome="refused", detail=str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except NodeError as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=where, action="review",
                            study_id=study.id, outcome="failed", detail=str(exc))
        raise HTTPException(status_code=500, detail=str(exc)) from None
    ctx.accounts.record(name=user.name, role=user.role, address=where, action="review",
                        study_id=study.id, outcome="ok", detail=done)
    return {"id": study.id, "decision": body.decision, "result": done}


@route(router, "POST", "/studies/{study_id}/review", REVIEWERS)
def post_review(study_id: int, body: ReviewIn, request: Request, user: Session = _SESSION,
                ctx: WebContext = _CTX) -> dict[str, Any]:
    """A radiologist's decision on a job AWAITING_REVIEW: approve (its results go out, the
    ORU final and naming the reviewer) or reject (nothing is sent). Audited."""
    return decide(ctx, user, address(request), study_id, body)
