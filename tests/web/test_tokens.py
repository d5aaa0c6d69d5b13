"""API tokens for machines, in-process on a real SQLite ledger: ``Authorization: Bearer``, the
token's role, no CSRF, refusals (wrong, revoked, expired, cookie and bearer together), the
audit trail, and the admin routes that make, list and revoke tokens."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select, update

from node.core import db
from node.core.accounts import Role
from node.core.api_tokens import ApiTokens
from node.core.ledger import utcnow
from node.web.deps import COOKIE, CSRF_HEADER
from tests.web.conftest import Api, make_job


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens(api: Api) -> ApiTokens:
    return ApiTokens(api.ctx.accounts)


def _audit(api: Api, action: str) -> list[tuple[object, ...]]:
    return [(a["user"], a["role"], a["outcome"], a["detail"])
            for a in api.ctx.accounts.audit_page(limit=200) if a["action"] == action]


def test_a_token_acts_with_its_role_without_csrf_and_is_audited(api: Api) -> None:
    job = make_job(api.ledger, "1.2.840.99.1")
    secret = _tokens(api).add("pacs-monitor", Role.OPERATOR)
    assert secret.startswith("dnt_") and len(secret) >= 40
    me = api.client.get("/api/v1/session", headers=_bearer(secret)).json()
    assert (me["name"], me["role"]) == ("token:pacs-monitor", "operator")
    assert api.client.get("/api/v1/studies", headers=_bearer(secret)).status_code == 200
    # a state-changing request with the token alone: no cookie, no CSRF header
    r = api.client.post(f"/api/v1/studies/{job}/retry", headers=_bearer(secret))
    assert r.status_code == 200, r.text
    assert api.client.get("/api/v1/audit", headers=_bearer(secret)).status_code == 403
    (retry,) = [a for a in api.ctx.accounts.audit_page(limit=50) if a["action"] == "retry"]
    assert (retry["user"], retry["role"], retry["outcome"]) == \
        ("token:pacs-monitor", "operator", "ok")
    # the use itself: once per minute, not on every request
    assert _audit(api, "token") == [("token:pacs-monitor", "operator", "ok", None)]


def test_the_ledger_keeps_only_the_tokens_sha256(api: Api) -> None:
    secret = _tokens(api).add("script", Role.CLINICIAN, expires_days=30)
    with db.reader(api.ctx.ledger.engine) as conn:
        row = conn.execute(select(db.api_tokens)).one()
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(tuple(row))
    assert timedelta(days=29, hours=23) < row.expires_at - row.created_at <= timedelta(days=30)
    listed = [t.as_json(utcnow()) for t in _tokens(api).list()]
    assert listed[0]["name"] == "script" and listed[0]["state"] == "active"
    assert secret not in str(listed) and row.token_hash not in str(listed)


def test_wrong_revoked_and_expired_tokens_get_401_and_are_audited(api: Api) -> None:
    tokens = _tokens(api)
    revoked, expired = tokens.add("old", Role.ADMIN), tokens.add("short", Role.ADMIN,
                                                                  expires_days=1)
    assert api.client.get("/api/v1/studies", headers=_bearer(revoked)).status_code == 200
    tokens.revoke("old")
    with api.ctx.ledger.engine.begin() as conn:
        conn.execute(update(db.api_tokens).where(db.api_tokens.c.name == "short")
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    for header in (_bearer(revoked), _bearer(expired), _bearer("dnt_" + "x" * 43),
                   {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        r = api.client.get("/api/v1/studies", headers=header)
        assert r.status_code == 401, header
        assert r.headers["www-authenticate"] == "Bearer"
    refused = [a for a in _audit(api, "token") if a[2] == "refused"]
    assert refused[::-1] == [("token:old", "admin", "refused", "revoked"),
                             ("token:short", "admin", "refused", "expired"),
                             (None, None, "refused", "unknown token")]
    assert [t.state(utcnow()) for t in tokens.list()] == ["revoked", "expired"]


def test_a_cookie_and_a_bearer_together_are_refused(api: Api) -> None:
    secret = _tokens(api).add("both", Role.OPERATOR)
    api.login(Role.ADMIN)
    assert api.client.cookies.get(COOKIE)
    r = api.client.get("/api/v1/studies", headers=_bearer(secret))
    assert r.status_code == 400 and "not both" in r.json()["detail"]


def test_admins_make_list_and_revoke_tokens_through_the_api(api: Api) -> None:
    csrf = api.login(Role.ADMIN)
    body = {"name": "emr-bridge", "role": "clinician", "expires_days": 7}
    assert api.client.post("/api/v1/tokens", json=body).status_code == 403  # no CSRF
    made = api.client.post("/api/v1/tokens", json=body, headers={CSRF_HEADER: csrf})
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    again = api.client.post("/api/v1/tokens", json=body, headers={CSRF_HEADER: csrf})
    assert again.status_code == 409
    bad = api.client.post("/api/v1/tokens", json={**body, "name": "a b;c"},
                          headers={CSRF_HEADER: csrf})
    assert bad.status_code == 422
    (listed,) = api.client.get("/api/v1/tokens").json()["items"]
    assert (listed["name"], listed["role"], listed["state"]) == \
        ("emr-bridge", "clinician", "active")
    assert secret not in str(listed)
    cookies = dict(api.client.cookies)
    api.client.cookies.clear()
    me = api.client.get("/api/v1/session", headers=_bearer(secret)).json()
    assert me["role"] == "clinician"
    api.client.cookies.update(cookies)
    r = api.client.delete("/api/v1/tokens/emr-bridge", headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.text
    assert api.client.delete("/api/v1/tokens/emr-bridge",
                             headers={CSRF_HEADER: csrf}).status_code == 404
    api.client.cookies.clear()
    assert api.client.get("/api/v1/session", headers=_bearer(secret)).status_code == 401
    actions = [(a["action"], a["user"], a["detail"])
               for a in api.ctx.accounts.audit_page(limit=50)
               if a["action"].startswith("token-")]
    assert actions == [("token-revoke", "admin", "token:emr-bridge"),
                       ("token-add", "admin", "token:emr-bridge (clinician)")]


def test_only_a_logged_in_admin_manages_tokens_not_a_token(api: Api) -> None:
    admin_token = _tokens(api).add("automation", Role.ADMIN)
    r = api.client.post("/api/v1/tokens", headers=_bearer(admin_token),
                        json={"name": "minted", "role": "admin"})
    assert r.status_code == 403 and "not by a token" in r.json()["detail"]
    assert api.client.get("/api/v1/tokens", headers=_bearer(admin_token)).status_code == 403
    operator = _tokens(api).add("ops", Role.OPERATOR)
    assert api.client.get("/api/v1/tokens", headers=_bearer(operator)).status_code == 403
    assert [t.name for t in _tokens(api).list()] == ["automation", "ops"]
