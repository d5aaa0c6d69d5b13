"""The role table as a whole: every route has a rule, and the rule is what the server does.

Walks the app's whole route list: a route without a rule in ``node.web.access.ACCESS`` fails
here; without a session every protected route answers 401; each role against each route it
must not reach answers 403; each role it may reach gets neither.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from node.core.accounts import Role
from node.core.jobstate import JobState
from node.web.access import ACCESS, PAGES
from node.web.deps import CSRF_HEADER
from tests.web.conftest import Api, make_job

#: FastAPI's own documentation routes and the console's static files (a stylesheet): public,
#: and no others outside the table
DOCS = {"/api/v1/openapi.json", "/api/v1/docs", "/static"}
#: the logouts, tried last (they end the session the other calls use)
LOGOUTS = {("DELETE", "/api/v1/session"), ("POST", "/logout")}


def _routes(api: Api) -> list[tuple[str, str]]:
    found = []
    # every route the app serves, included routers flattened (FastAPI's own walk)
    for r in iter_route_contexts(api.client.app.routes):  # type: ignore[attr-defined]
        if isinstance(r.original_route, APIRoute):
            found += [(m, str(r.path)) for m in sorted(r.methods or ())]
        else:
            assert r.path in DOCS, f"a route outside the role table: {r.path}"
    return found


def _call(api: Api, method: str, path: str, csrf: str = "") -> int:
    url = re.sub(r"\{[^}]+\}", "1", path)
    headers = {CSRF_HEADER: csrf} if csrf else {}
    body = {"name": "x", "password": "y"} if path == "/api/v1/session" else None
    response = api.client.request(method, url, headers=headers, json=body,
                                  follow_redirects=False)
    if (method, path) in PAGES and response.status_code == 303:
        # a console page sends a browser without a session to the login page: that and
        # nothing else is what a 401 is for an API route
        location = response.headers["location"]
        return 401 if location == "/login" or location.startswith("/login?next=") else 303
    return response.status_code


def test_every_route_has_a_rule(api: Api) -> None:
    routes = _routes(api)
    assert sorted(routes) == sorted(ACCESS), "each route is declared through node.web.access.route"
    assert len(routes) >= 10


def test_without_a_session_every_protected_route_answers_401(api: Api) -> None:
    """... or, for a console page, sends the browser to the login page (counted as 401)."""
    make_job(api.ledger, "1.2.3")
    protected = [(m, p) for (m, p), roles in ACCESS.items() if roles is not None]
    assert {_call(api, m, p) for m, p in protected} == {401}
    assert PAGES and all(ACCESS[p] is not None or p[1] == "/login" for p in PAGES)
    r = api.client.get("/studies/1", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login?next=/studies/1")
    # and the public ones answer without one
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/api/v1/openapi.json").status_code == 200


@pytest.mark.parametrize("role", list(Role))
def test_each_role_gets_403_where_it_must_not_go_and_through_where_it_may(
        api: Api, role: Role) -> None:
    make_job(api.ledger, "1.2.3")
    csrf = api.login(role)
    forbidden, allowed = [], []
    for (method, path), roles in sorted(ACCESS.items()):
        if roles is None or (method, path) in LOGOUTS:
            continue  # public; logouts are tried last
        (allowed if role in roles else forbidden).append((method, path))
    assert {(m, p): _call(api, m, p, csrf) for m, p in forbidden} == \
        {(m, p): 403 for m, p in forbidden}
    answers = {(m, p): _call(api, m, p, csrf) for m, p in allowed}
    assert all(code not in (401, 403) for code in answers.values()), answers
    r = api.client.post("/logout", headers={CSRF_HEADER: csrf}, follow_redirects=False)
    assert r.status_code == 303 and api.client.get("/", follow_redirects=False).status_code == 303
    csrf = api.login(role)
    assert _call(api, "DELETE", "/api/v1/session", csrf) == 200


def test_the_table_holds_the_roles_of_the_issue() -> None:
    assert ACCESS[("POST", "/api/v1/studies/{study_id}/retry")] == {Role.ADMIN, Role.OPERATOR}
    assert ACCESS[("POST", "/api/v1/retry-failed")] == {Role.ADMIN, Role.OPERATOR}
    assert ACCESS[("GET", "/api/v1/audit")] == {Role.ADMIN}
    assert ACCESS[("GET", "/healthz")] is None and ACCESS[("GET", "/readyz")] is None


@pytest.mark.parametrize("header", [None, "", "wrong-token"])
def test_a_state_changing_request_without_its_csrf_token_is_refused(
        api: Api, header: str | None) -> None:
    job = make_job(api.ledger, "1.2.3")
    api.login(Role.OPERATOR)
    headers = {} if header is None else {CSRF_HEADER: header}
    r = api.client.post(f"/api/v1/studies/{job}/retry", headers=headers)
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    r = api.client.post("/api/v1/retry-failed", headers=headers)
    assert r.status_code == 403
    assert api.ledger.study_by_id(job).state == JobState.FAILED
