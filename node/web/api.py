"""The API under /api/v1: login sessions, studies, retry, models, the audit trail.

Routes are thin: they read through the ledger and call the functions the CLI calls
(``retry_job`` is what ``dicom-node retry`` runs). Patient identity appears in one place only:
one study, for radiologists and clinicians (``node.web.identity`` says why and how it is read).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel

from node.core.accounts import LoginRefused, Session
from node.core.directory import DirectoryUnreachable
from node.core.errors import IllegalTransition, UnknownStudy
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow, iso_z
from node.pipeline.deliver.stage import retry_job
from node.web import identity, queries, results
from node.web.access import EVERYONE, OPERATIONS, PUBLIC, route
from node.web.context import WebContext
from node.web.deps import COOKIE, address, context, ledger, session

router = APIRouter(prefix="/api/v1")

# FastAPI's idiom is Depends(...) in defaults; bound once here
_CTX, _LEDGER, _SESSION = Depends(context), Depends(ledger), Depends(session)


class Login(BaseModel):
    name: str
    password: str


def _me(user: Session) -> dict[str, Any]:
    return {"name": user.name, "role": user.role.value, "csrf_token": user.csrf_token,
            "expires_at": iso_z(user.expires_at)}


@route(router, "POST", "/session", PUBLIC)
def login(body: Login, request: Request, response: Response,
          ctx: WebContext = _CTX) -> dict[str, Any]:
    """Log in: a session cookie, and the CSRF token to send as X-CSRF-Token."""
    try:
        opened = ctx.accounts.login(body.name, body.password, address(request))
    except LoginRefused as exc:
        raise HTTPException(status_code=429 if exc.locked else 401, detail=str(exc)) from None
    except DirectoryUnreachable as exc:  # the node serves on; directory users wait
        raise HTTPException(status_code=503, detail=str(exc)) from None
    response.set_cookie(COOKIE, opened.token, httponly=True, samesite="strict",
                        secure=ctx.settings.web.tls, path="/",
                        max_age=int(ctx.settings.web.session_ttl_s))
    return _me(opened.session)


@route(router, "GET", "/session", EVERYONE)
def whoami(user: Session = _SESSION) -> dict[str, Any]:
    return _me(user)


@route(router, "DELETE", "/session", EVERYONE)
def logout(request: Request, response: Response, user: Session = _SESSION,
           ctx: WebContext = _CTX) -> dict[str, str]:
    ctx.accounts.logout(request.cookies.get(COOKIE, ""))
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action="logout", outcome="ok")
    response.delete_cookie(COOKIE, path="/")
    return {"status": "logged out"}


def _study(row: StudyRow) -> dict[str, Any]:
    return {"id": row.id, **row.as_json()}


@route(router, "GET", "/studies", EVERYONE)
def studies(state: str | None = None, since: str | None = None, until: str | None = None,
            model: str | None = None, triage: str | None = None,
            calling_ae: str | None = None, limit: int = Query(50, ge=1, le=500),
            before: int | None = None, led: Ledger = _LEDGER) -> dict[str, Any]:
    """One page of jobs, newest last; ``next_before`` continues with older ones. The filters
    combine: states, received since/until, a current run of a model, a triage level, the
    calling AE title (``node.web.queries``)."""
    try:
        found = queries.StudyFilter.parse(state=state, since=since, until=until, model=model,
                                          triage=triage, calling_ae=calling_ae)
        rows = queries.studies_page(led, found, limit=limit, before=before)
    except queries.BadFilter as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return {"items": [_study(r) for r in rows],
            "next_before": rows[0].id if len(rows) == limit else None}


def _job(led: Ledger, study_id: int) -> StudyRow:
    try:
        return led.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@route(router, "GET", "/studies/{study_id}", EVERYONE)
def study(study_id: int, request: Request, user: Session = _SESSION,
          ctx: WebContext = _CTX) -> dict[str, Any]:
    """One job: instances per series, outbox items (attempts, last error), its timeline; and
    for radiologists and clinicians its patient (node.web.identity), each view audited."""
    row = _job(ctx.ledger, study_id)
    body = {**_study(row),
            "series": queries.series_counts(ctx.ledger.engine, row.id),
            "outbox": [i.as_json() for i in ctx.outbox.items(row.id)],
            "timeline": queries.timeline(ctx.ledger.engine, row.id),
            "results": results.runs(ctx, row.id, objects=False)}
    if user.role in identity.IDENTITY_ROLES:
        body["patient"] = identity.patient(ctx, row)
        ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                            action="view-identity", study_id=row.id,
                            outcome="ok" if body["patient"] else "unavailable")
    return body


@route(router, "POST", "/studies/{study_id}/force-complete", OPERATIONS)
def force_complete(study_id: int, request: Request, user: Session = _SESSION,
                   ctx: WebContext = _CTX) -> dict[str, Any]:
    """Mark a job complete now: what ``dicom-node force-complete`` does (409 from a state that
    cannot be forced, e.g. a job already past COMPLETE)."""
    row = _job(ctx.ledger, study_id)
    try:
        previous = ctx.ledger.force_complete(row.study_instance_uid)
    except IllegalTransition as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                            action="force-complete", study_id=row.id, outcome="refused",
                            detail=str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action="force-complete", study_id=row.id, outcome="ok",
                        detail=f"{previous} -> COMPLETE")
    return {"id": row.id, "result": f"moved from {previous} to COMPLETE"}


def _retry(ctx: WebContext, row: StudyRow, user: Session, where: str) -> dict[str, Any]:
    try:
        done = retry_job(ctx.ledger, ctx.outbox, row)
    except IllegalTransition as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=where, action="retry",
                            study_id=row.id, outcome="refused", detail=str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None
    ctx.accounts.record(name=user.name, role=user.role, address=where, action="retry",
                        study_id=row.id, outcome="ok", detail=done)
    return {"id": row.id, "result": done}


@route(router, "POST", "/studies/{study_id}/retry", OPERATIONS)
def retry(study_id: int, request: Request, user: Session = _SESSION,
          ctx: WebContext = _CTX) -> dict[str, Any]:
    """Re-queue a FAILED job: what ``dicom-node retry JOB_ID`` does."""
    return _retry(ctx, _job(ctx.ledger, study_id), user, address(request))


@route(router, "POST", "/retry-failed", OPERATIONS)
def retry_failed(request: Request, user: Session = _SESSION,
                 ctx: WebContext = _CTX) -> dict[str, Any]:
    """Re-queue every FAILED job: what ``dicom-node retry --all-failed`` does."""
    where = address(request)
    return {"items": [_retry(ctx, row, user, where)
                      for row in ctx.ledger.studies(JobState.FAILED)]}


@route(router, "GET", "/models", EVERYONE)
def models(ctx: WebContext = _CTX) -> dict[str, Any]:
    """The models ``serve`` loaded and runs."""
    return {"items": [{
        "name": m.manifest.name, "version": m.manifest.version,
        "checksum": m.manifest.weights_sha256, "licence": m.manifest.licence,
        "intended_use": m.manifest.intended_use, "enabled": True,
    } for m in ctx.models.values()]}
