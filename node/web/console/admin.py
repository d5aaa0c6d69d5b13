"""The console's pages for running the node: Quarantine, Models and Audit (issue 14).

Each reads and acts through what the API calls: the ledger's keyset page of quarantined
objects and ``node.pipeline.quarantine``'s release and delete (the functions behind
``/api/v1/quarantine`` and ``dicom-node quarantine``), the API's ``/api/v1/models`` data, and
``node.core.audit``'s page of records. Every action writes the audit record the API writes.
Deleting asks first on a page of its own (a two-step form: the pages run no inline script).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from node.core import at_rest, audit
from node.core.accounts import Session
from node.core.errors import ConfigError, PermanentError, TransientError
from node.core.ledger import QuarantineRow
from node.core.spool import Spool, open_spool
from node.pipeline import quarantine as quarantined
from node.web import api
from node.web.access import ADMIN, EVERYONE, OPERATIONS, page_route
from node.web.console.deps import page_allow, page_session
from node.web.console.pages import _page
from node.web.context import WebContext
from node.web.deps import address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)

#: rows on one page of the Quarantine and Audit lists
PAGE_SIZE = 50
#: the actions the Audit page offers as a filter (others can still be typed into the URL)
AUDIT_ACTIONS = ("login", "logout", "retry", "quarantine-release",
                 "quarantine-delete", "download", "view-identity", "user-add", "user-role",
                 "user-passwd", "user-disable", "token-add", "token-revoke")
_CHUNK = 1 << 16


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _audit(ctx: WebContext, user: Session, request: Request, action: str, outcome: str,
           detail: str, job: int | None = None) -> None:
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action=action, outcome=outcome, study_id=job, detail=detail)


# ------------------------------------------------------------------ quarantine


@page_route(router, "GET", "/quarantine", OPERATIONS, page_allow, response_model=None)
def quarantine(request: Request, before: int | None = Query(None, ge=1), done: str = "",
               item: int = 0, user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """Quarantined objects, newest first, a keyset page at a time (as the API lists them)."""
    rows = ctx.ledger.quarantine_page(limit=PAGE_SIZE, before=before)
    older = rows[-1].id if len(rows) == PAGE_SIZE else None
    return _page(request, "quarantine.html", user, active="quarantine", rows=rows, done=done,
                 item=item, paged=before is not None,
                 older_url=f"/quarantine?before={older}" if older else None,
                 can_download=user.role in ADMIN)


def _entry(ctx: WebContext, quarantine_id: int) -> QuarantineRow | None:
    try:
        return quarantined.entry(ctx.ledger, quarantine_id)
    except quarantined.NotQuarantined:
        return None


def _spool(ctx: WebContext) -> Spool | None:
    try:
        return open_spool(ctx.settings)
    except ConfigError:
        return None


@page_route(router, "POST", "/quarantine/{quarantine_id}/release", OPERATIONS, page_allow,
            response_model=None)
def release(request: Request, quarantine_id: int, user: Session = _USER,
            ctx: WebContext = _CTX) -> Response:
    """Take the object in again, as ``POST /api/v1/quarantine/{id}/release`` does."""
    what = f"quarantined object #{quarantine_id}"
    spool = _spool(ctx) if _entry(ctx, quarantine_id) else None
    if spool is None:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    try:
        done = quarantined.release(ctx.ledger, spool, ctx.settings, quarantine_id)
    except quarantined.NotQuarantined:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    except quarantined.StillRefused as exc:
        _audit(ctx, user, request, "quarantine-release", "refused", str(exc))
        return _see_other(f"/quarantine?done=refused&item={quarantine_id}")
    except TransientError as exc:
        _audit(ctx, user, request, "quarantine-release", "failed", f"{what}: {exc}")
        return _see_other(f"/quarantine?done=failed&item={quarantine_id}")
    _audit(ctx, user, request, "quarantine-release", "ok", f"{what}: {done.outcome.value}",
           job=done.job)
    return _see_other(f"/quarantine?done=released&item={quarantine_id}")


@page_route(router, "GET", "/quarantine/{quarantine_id}/delete", OPERATIONS, page_allow,
            response_model=None)
def confirm_delete(request: Request, quarantine_id: int, user: Session = _USER,
                   ctx: WebContext = _CTX) -> Response:
    """The first step of a delete: the object once more, and the button that deletes it."""
    row = _entry(ctx, quarantine_id)
    if row is None:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    return _page(request, "quarantine_delete.html", user, active="quarantine", row=row)


@page_route(router, "POST", "/quarantine/{quarantine_id}/delete", OPERATIONS, page_allow,
            response_model=None)
def delete(request: Request, quarantine_id: int, user: Session = _USER,
           ctx: WebContext = _CTX) -> Response:
    """Delete the object's file and its row, as ``DELETE /api/v1/quarantine/{id}`` does."""
    spool = _spool(ctx) if _entry(ctx, quarantine_id) else None
    if spool is None:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    try:
        quarantined.delete(ctx.ledger, spool, quarantine_id)
    except quarantined.NotQuarantined:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    _audit(ctx, user, request, "quarantine-delete", "ok",
           f"quarantined object #{quarantine_id} deleted")
    return _see_other(f"/quarantine?done=deleted&item={quarantine_id}")


@page_route(router, "GET", "/quarantine/{quarantine_id}/file", ADMIN, page_allow,
            response_model=None)
def download(request: Request, quarantine_id: int, user: Session = _USER,
             ctx: WebContext = _CTX) -> Response:
    """The quarantined file as it arrived (decrypted when kept encrypted), for an admin to
    inspect; audited as the API's downloads are. Its name holds the object's id only."""
    what = f"quarantined object #{quarantine_id}"
    row = _entry(ctx, quarantine_id)
    spool = _spool(ctx) if row else None
    if row is None or spool is None:
        return _see_other(f"/quarantine?done=gone&item={quarantine_id}")
    try:
        stream = at_rest.open_plain(spool.quarantined(row.path))
    except (OSError, ValueError, PermanentError):
        _audit(ctx, user, request, "download", "missing", what)
        return _see_other(f"/quarantine?done=missing&item={quarantine_id}")
    _audit(ctx, user, request, "download", "ok", what)

    def chunks() -> Any:
        with stream:
            while block := stream.read(_CHUNK):
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="quarantine-{quarantine_id}.dcm"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------ models


@page_route(router, "GET", "/models", EVERYONE, page_allow, response_model=None)
def models(request: Request, user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """The API's model list, and the enabled models this process did not load."""
    items: list[dict[str, Any]] = [{**m, "loaded": True} for m in api.models(ctx)["items"]]
    missing = sorted(set(ctx.expected_models) - {m["name"] for m in items})
    items += [{"name": name, "version": "", "checksum": "", "licence": "", "intended_use": "",
               "enabled": True, "loaded": False} for name in missing]
    return _page(request, "models.html", user, active="models",
                 models=sorted(items, key=lambda m: (not m["loaded"], m["name"])))


# ------------------------------------------------------------------ audit


def _moment(text: str) -> datetime | None:
    """A filter's time as the form sends it (``2026-12-01T08:00``, UTC); None when unreadable."""
    try:
        return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=None)
    except ValueError:
        return None


@page_route(router, "GET", "/audit", ADMIN, page_allow, response_model=None)
def audit_trail(request: Request, action: str = Query("", max_length=64),
                who: str = Query("", alias="user", max_length=80),
                since: str = Query("", max_length=32), until: str = Query("", max_length=32),
                before: int | None = Query(None, ge=1), user: Session = _USER,
                ctx: WebContext = _CTX) -> Response:
    """The audit trail through ``node.core.audit``'s keyset pages, with the API's filters."""
    first, last = _moment(since) if since else None, _moment(until) if until else None
    bad = bool((since and first is None) or (until and last is None))
    filters = audit.Filters(action=action or None, user=who or None, since=first, until=last)
    items = [{**i, "at": _moment(i["at"])}
             for i in audit.page(ctx.ledger.engine, limit=PAGE_SIZE, before=before,
                                 filters=filters)]
    shown = {"action": action, "user": who,
             "since": first.isoformat(timespec="minutes") if first else "",
             "until": last.isoformat(timespec="minutes") if last else ""}
    query = {k: v for k, v in shown.items() if v}
    older = items[-1]["id"] if len(items) == PAGE_SIZE else None
    return _page(request, "audit.html", user, active="audit", items=items, filters=shown,
                 actions=AUDIT_ACTIONS, bad_filter=bad, paged=before is not None,
                 first_url="/audit?" + urlencode(query),
                 older_url="/audit?" + urlencode({**query, "before": older}) if older else None,
                 csv_url="/api/v1/audit.csv" + ("?" + urlencode(query) if query else ""))
