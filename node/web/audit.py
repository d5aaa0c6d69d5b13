"""The audit trail through the API (admin only): a page of records, and the CSV export.

Both take the same filters (action, user, since, until) and read through
:mod:`node.core.audit`: keyset pages, newest first. The CSV export streams the records a page
at a time, its cells neutralised against formula injection. Neither carries a Study Instance
UID or patient identity: a record names its job by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import StreamingResponse

from node.core import audit
from node.web import queries
from node.web.access import ADMIN, route
from node.web.context import WebContext
from node.web.deps import context

router = APIRouter(prefix="/api/v1")

_CTX = Depends(context)


def _time(name: str, text: str | None) -> datetime | None:
    try:
        return queries.parse_time(name, text)
    except queries.BadFilter as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _filters(action: str | None, user: str | None, since: str | None,
             until: str | None) -> audit.Filters:
    return audit.Filters(action=action or None, user=user or None,
                         since=_time("since", since), until=_time("until", until))


@route(router, "GET", "/audit", ADMIN)
def audit_page(action: str | None = None, user: str | None = None, since: str | None = None,
               until: str | None = None, limit: int = Query(100, ge=1, le=1000),
               before: int | None = None, ctx: WebContext = _CTX) -> dict[str, Any]:
    """Who did what, newest first, filtered by action, user and time (since <= at < until);
    ``next_before`` continues with older records."""
    items = audit.page(ctx.ledger.engine, limit=limit, before=before,
                       filters=_filters(action, user, since, until))
    return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}


@route(router, "GET", "/audit.csv", ADMIN, response_class=StreamingResponse)
def audit_csv(action: str | None = None, user: str | None = None, since: str | None = None,
              until: str | None = None, ctx: WebContext = _CTX) -> StreamingResponse:
    """Every record that passes the filters, as CSV (newest first); cells a spreadsheet would
    run as a formula start with '."""
    filters = _filters(action, user, since, until)
    lines: Iterator[str] = audit.csv_lines(audit.every(ctx.ledger.engine, filters))
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="audit.csv"'})
