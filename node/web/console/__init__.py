"""The web console (issue 14): server-rendered pages for the people around the node.

Login, Overview, Studies, Study and Failures, in English and German, over the same accounts,
session cookie, role table and actions as the API. ``install`` adds them to the app: the
pages' router, the static folder (one stylesheet) and the two answers a browser gets instead
of the API's JSON: a redirect to /login without a session, a 403 page for a role or a form
that may not.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from node.web.console import (
    admin,
    feedback,
    keyimage_routes,
    notes,
    pages,
    review,
    upload,
    users_page,
)
from node.web.console.deps import LoginRequired, PageForbidden, login_url

STATIC = Path(__file__).with_name("static")


async def _to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(login_url(exc.next_path), status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    return pages._page(request, "error.html", exc.user, status=403, reason=exc.reason)


def install(app: FastAPI) -> None:
    app.include_router(pages.router)
    app.include_router(admin.router)
    app.include_router(users_page.router)
    app.include_router(feedback.router)
    app.include_router(upload.router)
    app.include_router(review.router)
    app.include_router(notes.router)
    app.include_router(keyimage_routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(PageForbidden, _forbidden)
