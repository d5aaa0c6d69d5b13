"""The console's Upload page: files and patient details in, the job they joined out.

The form posts multipart data to ``/upload``; the files go through what ``POST
/api/v1/upload`` runs (``node.web.upload``: the same bounds, ingest, quarantine and audit
record). The page's own guard reads the multipart form once (Starlette keeps it on the
request) to find the CSRF token, after refusing a body over ``web.max_upload_mb``; the
shared page guard reads forms without files.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from node.core.accounts import Role, Session
from node.web import upload as api
from node.web.access import page_route
from node.web.console.deps import PageForbidden, page_session
from node.web.console.pages import _page
from node.web.context import WebContext
from node.web.deps import CSRF_HEADER, address, context

router = APIRouter()
_CTX = Depends(context)
_FIELD = "csrf_token"


def _upload_allow(roles: frozenset[Role]) -> Callable[..., Awaitable[Session]]:
    """Role check; for the POST, the CSRF token from the header, or (within the size bound)
    from the multipart form; a body over the bound is refused by the page itself (413)."""
    async def check(request: Request, user: Session = Depends(page_session),  # noqa: B008
                    ctx: WebContext = Depends(context)) -> Session:  # noqa: B008
        if user.role not in roles:
            raise PageForbidden(user, "role")
        if request.method == "POST":
            sent = request.headers.get(CSRF_HEADER, "")
            length = request.headers.get("content-length", "")
            if not sent and not (length.isdigit() and int(length) <= api.limit_bytes(ctx)):
                return user  # the page refuses it (411, 413) before anything is read or done
            if not sent:
                form = await request.form(max_files=api.MAX_FILES, max_fields=50)
                value = form.get(_FIELD)
                sent = value if isinstance(value, str) else ""
            if not secrets.compare_digest(sent.encode(), user.csrf_token.encode()):
                raise PageForbidden(user, "csrf")
        return user

    return check



@page_route(router, "GET", "/upload", api.UPLOADERS, _upload_allow, response_model=None)
def form(request: Request, user: Session = Depends(page_session),  # noqa: B008
         ctx: WebContext = _CTX) -> Response:
    """The upload form."""
    return _page(request, "upload.html", user, active="upload", values={}, done=None,
                 error=None, max_mb=ctx.settings.web.max_upload_mb)


@page_route(router, "POST", "/upload", api.UPLOADERS, _upload_allow, response_model=None)
async def submit(request: Request, user: Session = Depends(page_session),  # noqa: B008
                 ctx: WebContext = _CTX) -> Response:
    """Take the files in; show the jobs they joined, or why they were refused."""
    values: dict[str, str] = {}
    try:
        uploads, details = await api.read_upload(request, api.limit_bytes(ctx))
        values = {k: str(v) for k, v in vars(details).items()}
        done = await run_in_threadpool(api.take, ctx, user, address(request), uploads, details)
    except HTTPException as exc:
        return _page(request, "upload.html", user, active="upload", values=values, done=None,
                     error=str(exc.detail), status=exc.status_code,
                     max_mb=ctx.settings.web.max_upload_mb)
    return _page(request, "upload.html", user, active="upload", values=values, done=done,
                 error=None, max_mb=ctx.settings.web.max_upload_mb)
