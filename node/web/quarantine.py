"""The quarantine through the API: list it, release an object, delete one (operations roles).

The list shows what an operator needs to decide (when, why, how large, which SOP Class, from
which AE title) and nothing of the patient: the quarantine row holds none, and the file is not
read. Release and delete call what ``dicom-node quarantine release|delete ID`` calls
(``node.pipeline.quarantine``); both are audit records, refused attempts included.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from node.core.accounts import Session
from node.core.errors import ConfigError, TransientError
from node.core.ledger import QuarantineRow, iso_z
from node.core.spool import Spool, open_spool
from node.pipeline import quarantine as actions
from node.web.access import OPERATIONS, route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")

_CTX, _SESSION = Depends(context), Depends(session)


def _item(row: QuarantineRow) -> dict[str, Any]:
    return {"id": row.id, "received_at": iso_z(row.received_at), "reason": row.reason,
            "size_bytes": row.size_bytes, "sop_class_uid": row.sop_class_uid,
            "calling_ae_title": row.calling_ae_title}


@route(router, "GET", "/quarantine", OPERATIONS)
def listing(limit: int = Query(50, ge=1, le=500), before: int | None = Query(None, ge=1),
            ctx: WebContext = _CTX) -> dict[str, Any]:
    """Quarantined objects, newest first; ``next_before`` continues with older ones."""
    rows = ctx.ledger.quarantine_page(limit=limit, before=before)
    return {"items": [_item(r) for r in rows],
            "next_before": rows[-1].id if len(rows) == limit else None}


def _spool(ctx: WebContext, quarantine_id: int) -> Spool:
    """The spool, once the object is known (a clear 404 for an unknown id comes first)."""
    try:
        actions.entry(ctx.ledger, quarantine_id)
    except actions.NotQuarantined as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    try:
        return open_spool(ctx.settings)
    except ConfigError as exc:
        raise HTTPException(status_code=503, detail="; ".join(exc.problems)) from None


def _audit(ctx: WebContext, user: Session, request: Request, action: str, outcome: str,
           detail: str, job: int | None = None) -> None:
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action=action, outcome=outcome, study_id=job, detail=detail)


@route(router, "POST", "/quarantine/{quarantine_id}/release", OPERATIONS)
def release(quarantine_id: int, request: Request, user: Session = _SESSION,
            ctx: WebContext = _CTX) -> dict[str, Any]:
    """Take the object in again as a received instance; 409 (and the new reason) when it is
    still refused."""
    what = f"quarantined object #{quarantine_id}"
    try:
        done = actions.release(ctx.ledger, _spool(ctx, quarantine_id), ctx.settings,
                               quarantine_id)
    except actions.NotQuarantined as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except actions.StillRefused as exc:
        _audit(ctx, user, request, "quarantine-release", "refused", str(exc))
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except TransientError as exc:
        _audit(ctx, user, request, "quarantine-release", "failed", f"{what}: {exc}")
        raise HTTPException(status_code=503, detail=str(exc)) from None
    _audit(ctx, user, request, "quarantine-release", "ok",
           f"{what}: {done.outcome.value}", job=done.job)
    return done.as_json()


@route(router, "DELETE", "/quarantine/{quarantine_id}", OPERATIONS)
def delete(quarantine_id: int, request: Request, user: Session = _SESSION,
           ctx: WebContext = _CTX) -> dict[str, Any]:
    """Delete the object's file and its row."""
    try:
        actions.delete(ctx.ledger, _spool(ctx, quarantine_id), quarantine_id)
    except actions.NotQuarantined as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    _audit(ctx, user, request, "quarantine-delete", "ok",
           f"quarantined object #{quarantine_id} deleted")
    return {"id": quarantine_id, "deleted": True}
