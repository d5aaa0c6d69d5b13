"""The console's dependencies: the same session cookie as the API, answered the browser's way.

A page without a session sends the browser to the login page (303) instead of answering 401
JSON; a role that may not see a page gets a 403 page. Every POST must carry the session's
CSRF token, as the hidden form field ``csrf_token`` (the console's forms) or as the API's
header: a cookie alone, which another site can make a browser send, changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import Depends, Request

from node.core.accounts import Role, Session
from node.web.context import WebContext
from node.web.deps import COOKIE, CSRF_HEADER, SAFE_METHODS, context

#: the hidden form field that carries the session's CSRF token
CSRF_FIELD = "csrf_token"


class LoginRequired(Exception):
    """No live session: the browser goes to the login page, then back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__("log in first")
        self.next_path = next_path


class PageForbidden(Exception):
    """The user's role may not do this, or the form's CSRF token was missing or wrong."""

    def __init__(self, user: Session, reason: str) -> None:
        super().__init__(reason)
        self.user = user
        self.reason = reason


def login_url(next_path: str) -> str:
    return "/login" if next_path in ("", "/") else f"/login?next={quote(next_path, safe='/')}"


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this site only (never ``//host`` or a URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def page_session(request: Request, ctx: WebContext = Depends(context)) -> Session:  # noqa: B008
    token = request.cookies.get(COOKIE)
    found = ctx.accounts.session(token) if token else None
    if found is None:
        target = request.url.path if request.method in SAFE_METHODS else "/"
        raise LoginRequired(target)
    return found


async def _check_csrf(request: Request, user: Session) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        form = await request.form(max_files=0, max_fields=16)
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else ""
    if not secrets.compare_digest(sent.encode(), user.csrf_token.encode()):
        raise PageForbidden(user, "csrf")


def page_allow(roles: frozenset[Role]) -> Callable[..., Awaitable[Session]]:
    """The dependency that lets only ``roles`` see a page, and checks a POST's CSRF token."""

    async def check(request: Request,
                    user: Session = Depends(page_session)) -> Session:  # noqa: B008
        if user.role not in roles:
            raise PageForbidden(user, "role")
        if request.method not in SAFE_METHODS:
            await _check_csrf(request, user)
        return user

    return check
