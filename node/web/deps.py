"""One dependency per concern: the context, the ledger, the session (with CSRF), the role.

A caller is a person with a session cookie, or a machine with ``Authorization: Bearer
<token>`` (``node.core.api_tokens``). A bearer request needs no CSRF token: a browser never
adds that header by itself, and another site's page cannot make it add one without a CORS
preflight, which the node does not answer. A request carrying both a session cookie and a
bearer token is refused (400): it would be ambiguous who acts.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request

from node.core.accounts import Role, Session
from node.core.api_tokens import ApiTokens
from node.core.ledger import Ledger
from node.web.context import WebContext

#: the session cookie (HttpOnly, SameSite=Strict, Secure under TLS)
COOKIE = "dicom_node_session"
#: the header a state-changing request carries: the CSRF token its session got at login
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def ledger(ctx: WebContext = Depends(context)) -> Ledger:  # noqa: B008 - FastAPI's idiom
    return ctx.ledger


def address(request: Request) -> str:
    return request.client.host if request.client else ""


def session(request: Request, ctx: WebContext = Depends(context)) -> Session:  # noqa: B008
    """The caller's live session (401 without one); on a state-changing request its CSRF token
    must come back in the header (403 otherwise): a cookie alone, which another site's page can
    make a browser send, never changes anything. With a bearer token instead: that token's
    role, without CSRF (401 for a wrong, revoked or expired one)."""
    token = request.cookies.get(COOKIE)
    bearer = request.headers.get("Authorization")
    if bearer is not None:
        if token:
            raise HTTPException(status_code=400, detail="send a session cookie or a bearer "
                                "token, not both")
        return _bearer(bearer, request, ctx)
    found = ctx.accounts.session(token) if token else None
    if found is None:
        raise HTTPException(status_code=401, detail="log in first (POST /api/v1/session)")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode(), found.csrf_token.encode()):
            raise HTTPException(status_code=403, detail=f"missing or wrong {CSRF_HEADER}")
    return found


def _bearer(header: str, request: Request, ctx: WebContext) -> Session:
    scheme, _, secret = header.partition(" ")
    found = (ApiTokens(ctx.accounts).session(secret.strip(), address(request))
             if scheme.lower() == "bearer" and secret.strip() else None)
    if found is None:
        raise HTTPException(status_code=401, detail="expected Authorization: Bearer <token> "
                            "with a valid API token", headers={"WWW-Authenticate": "Bearer"})
    return found


def allow(roles: frozenset[Role]) -> Callable[[Session], Session]:
    """The dependency that lets only ``roles`` through (403 for the others)."""

    def check(user: Session = Depends(session)) -> Session:  # noqa: B008
        if user.role not in roles:
            raise HTTPException(status_code=403, detail=f"not allowed for role {user.role}")
        return user

    return check
