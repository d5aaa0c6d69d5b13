"""The console's Users page (admin): the accounts and API tokens, and the forms that change them.

Accounts change through ``node.core.accounts`` (argon2id hashes, sessions ended on every
change), tokens through ``node.core.api_tokens``, as ``dicom-node user|token`` and the API do;
each change is an audit record naming the account, never a password. A password is read from
the form, checked (twice, long enough, as the CLI checks it) and never shown again: a refused
form comes back empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select

from node.core import db
from node.core.accounts import Role, Session
from node.core.api_tokens import ApiTokens
from node.core.errors import NodeError
from node.core.ledger import utcnow
from node.web.access import ADMIN, page_route
from node.web.console.deps import page_allow, page_session
from node.web.console.pages import _page
from node.web.context import WebContext
from node.web.deps import address, context

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)

#: as ``dicom-node user`` asks (node/commands/user.py)
MIN_PASSWORD = 12


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    source: str
    disabled: bool
    locked_until: datetime | None
    last_login: datetime | None


def accounts(ctx: WebContext) -> list[Account]:
    """Every account, by name, with its last successful login from the audit trail."""
    u, a = db.users.c, db.audit.c
    last = (select(a.user_name, func.max(a.at).label("at"))
            .where(a.action == "login", a.outcome == "ok").group_by(a.user_name).subquery())
    query = (select(u.name, u.role, u.source, u.disabled, u.locked_until, last.c.at)
             .outerjoin(last, last.c.user_name == u.name).order_by(u.name))
    with db.reader(ctx.ledger.engine) as conn:
        return [Account(r.name, r.role, r.source, bool(r.disabled), r.locked_until, r.at)
                for r in conn.execute(query)]


def _see_other(done: str, name: str = "") -> RedirectResponse:
    query = {"done": done, **({"name": name} if name else {})}
    return RedirectResponse(f"/users?{urlencode(query)}", status_code=303)


def _audit(ctx: WebContext, user: Session, request: Request, action: str, outcome: str,
           detail: str) -> None:
    ctx.accounts.record(name=user.name, role=user.role, address=address(request),
                        action=action, outcome=outcome, detail=detail)


def _password_problem(password: str, again: str) -> str:
    if password != again:
        return "differ"
    if len(password) < MIN_PASSWORD:
        return "short"
    return ""


def _role(text: str) -> Role | None:
    return Role(text) if text in Role.__members__.values() else None


@page_route(router, "GET", "/users", ADMIN, page_allow, response_model=None)
def users(request: Request, done: str = "", name: str = "", user: Session = _USER,
          ctx: WebContext = _CTX) -> Response:
    now = utcnow()
    return _page(request, "users.html", user, active="users", done=done, name=name,
                 accounts=accounts(ctx), tokens=ApiTokens(ctx.accounts).list(), now=now,
                 min_password=MIN_PASSWORD, all_roles=list(Role))


def _change(ctx: WebContext, user: Session, request: Request, action: str, name: str,
            detail: str, change: Any) -> RedirectResponse:
    """Do one change to an account; audit it (refusals too) and say how it went."""
    try:
        change()
    except NodeError as exc:
        _audit(ctx, user, request, action, "refused", f"user:{name}: {exc}"[:200])
        return _see_other(f"{action}-refused", name)
    _audit(ctx, user, request, action, "ok", detail)
    return _see_other(action, name)


@page_route(router, "POST", "/users/add", ADMIN, page_allow, response_model=None)
def add(request: Request, name: str = Form("", max_length=64), role: str = Form(""),
        password: str = Form("", max_length=1024), again: str = Form("", max_length=1024),
        user: Session = _USER, ctx: WebContext = _CTX) -> Response:
    """A new local account (argon2id), as ``dicom-node user add NAME --role R``."""
    chosen, problem = _role(role), _password_problem(password, again)
    if chosen is None:
        return _see_other("bad-role")
    if problem:
        return _see_other(f"password-{problem}")
    return _change(ctx, user, request, "user-add", name, f"user:{name} ({chosen.value})",
                   lambda: ctx.accounts.add_user(name, chosen, password))


@page_route(router, "POST", "/users/{name}/role", ADMIN, page_allow, response_model=None)
def change_role(request: Request, name: str, role: str = Form(""), user: Session = _USER,
                ctx: WebContext = _CTX) -> Response:
    chosen = _role(role)
    if chosen is None:
        return _see_other("bad-role")
    return _change(ctx, user, request, "user-role", name, f"user:{name} ({chosen.value})",
                   lambda: ctx.accounts.set_role(name, chosen))


@page_route(router, "POST", "/users/{name}/password", ADMIN, page_allow, response_model=None)
def reset_password(request: Request, name: str, password: str = Form("", max_length=1024),
                   again: str = Form("", max_length=1024), user: Session = _USER,
                   ctx: WebContext = _CTX) -> Response:
    """A new password, as ``dicom-node user passwd NAME``: unlocks and re-enables the account."""
    problem = _password_problem(password, again)
    if problem:
        return _see_other(f"password-{problem}", name)
    return _change(ctx, user, request, "user-passwd", name, f"user:{name}",
                   lambda: ctx.accounts.set_password(name, password))


@page_route(router, "POST", "/users/{name}/disable", ADMIN, page_allow, response_model=None)
def disable(request: Request, name: str, user: Session = _USER,
            ctx: WebContext = _CTX) -> Response:
    """The account can no longer log in, as ``dicom-node user disable NAME``."""
    if name == user.name:
        return _see_other("self", name)
    return _change(ctx, user, request, "user-disable", name, f"user:{name}",
                   lambda: ctx.accounts.disable(name))


@page_route(router, "POST", "/tokens/{name}/revoke", ADMIN, page_allow, response_model=None)
def revoke(request: Request, name: str, user: Session = _USER,
           ctx: WebContext = _CTX) -> Response:
    """The token is refused from now on, as ``DELETE /api/v1/tokens/{name}``."""
    try:
        ApiTokens(ctx.accounts).revoke(name)
    except NodeError:
        return _see_other("token-gone", name)
    _audit(ctx, user, request, "token-revoke", "ok", f"token:{name}")
    return _see_other("token-revoke", name)
