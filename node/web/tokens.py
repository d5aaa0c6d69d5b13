"""API tokens through the API: what ``dicom-node token add|list|revoke`` does, for admins.

Only an admin logged in with a session may make, list or revoke tokens; a token, even an admin
one, may not (403): a machine that could mint tokens could keep itself in after its own was
revoked. A new token's secret is in the answer to its POST and nowhere else.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from node.core.accounts import Role, Session
from node.core.api_tokens import NAME, ApiTokens
from node.core.errors import NodeError
from node.core.ledger import iso_z, utcnow
from node.web.access import ADMIN, route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")
_CTX, _SESSION = Depends(context), Depends(session)


class NewToken(BaseModel):
    name: str = Field(pattern=f"^{NAME.pattern}$", max_length=48)
    role: Role
    #: the token is refused after this many days; none: no expiry
    expires_days: int | None = Field(default=None, ge=1, le=3650)


def _by_a_person(user: Session) -> None:
    if user.via == "token":
        raise HTTPException(status_code=403, detail="API tokens are managed by an admin "
                            "logged in with a session, not by a token")


@route(router, "GET", "/tokens", ADMIN)
def list_tokens(user: Session = _SESSION, ctx: WebContext = _CTX) -> dict[str, Any]:
    """Every token with its role, state and last use; never a secret."""
    _by_a_person(user)
    now = utcnow()
    return {"items": [t.as_json(now) for t in ApiTokens(ctx.accounts).list()]}


@route(router, "POST", "/tokens", ADMIN, status_code=201)
def add_token(body: NewToken, request: Request, user: Session = _SESSION,
              ctx: WebContext = _CTX) -> dict[str, Any]:
    """A new token: its secret is in this answer only."""
    _by_a_person(user)
    try:
        secret = ApiTokens(ctx.accounts).add(body.name, body.role,
                                             expires_days=body.expires_days)
    except NodeError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action="token-add", outcome="ok",
                        detail=f"token:{body.name} ({body.role.value})")
    (made,) = [t for t in ApiTokens(ctx.accounts).list() if t.name == body.name]
    expires = made.expires_at
    return {"name": made.name, "role": made.role.value, "token": secret,
            "expires_at": None if expires is None else iso_z(expires)}


@route(router, "DELETE", "/tokens/{name}", ADMIN)
def revoke_token(name: str, request: Request, user: Session = _SESSION,
                 ctx: WebContext = _CTX) -> dict[str, str]:
    """The token is refused from now on."""
    _by_a_person(user)
    try:
        ApiTokens(ctx.accounts).revoke(name)
    except NodeError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action="token-revoke", outcome="ok", detail=f"token:{name}")
    return {"status": f"token {name} revoked"}
