"""The API's behaviour in-process on a real SQLite ledger: login, lockout, pages, retry, audit,
health; and the server on a real socket (plain and TLS), started and stopped as serve does."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.core import db
from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.ledger import Ledger
from node.web.context import WebContext
from node.web.deps import COOKIE, CSRF_HEADER
from node.web.server import WebServer
from tests.conftest import free_port
from tests.web.conftest import PASSWORD, Api, make_job, web_settings


def _audit(api: Api) -> list[dict[str, object]]:
    return api.ctx.accounts.audit_page(limit=100)


def test_login_sets_a_strict_http_only_cookie_and_the_audit_says_who(api: Api) -> None:
    r = api.client.post("/api/v1/session", json={"name": "operator", "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure under TLS (test below)
    assert r.json()["role"] == "operator" and len(r.json()["csrf_token"]) >= 40
    assert api.client.get("/api/v1/session").json()["name"] == "operator"
    (record,) = _audit(api)
    assert (record["user"], record["role"], record["action"], record["outcome"],
            record["address"]) == ("operator", "operator", "login", "ok", "testclient")
    assert PASSWORD not in str(record)


def test_wrong_passwords_lock_the_account_even_for_the_right_one(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = {"name": "clinician", "password": "not the password"}
    codes = [api.client.post("/api/v1/session", json=bad).status_code for _ in range(3)]
    assert codes == [401, 401, 401]  # max_failed_logins = 3 in the fixture
    good = {"name": "clinician", "password": PASSWORD}
    r = api.client.post("/api/v1/session", json=good)
    assert r.status_code == 429 and "locked" in r.json()["detail"]
    unknown = api.client.post("/api/v1/session", json={"name": "nobody", "password": "x"})
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "wrong user name or password"
    outcomes = [(a["user"], a["outcome"], a["detail"]) for a in _audit(api)]
    assert outcomes == [(None, "refused", "unknown user"),
                        ("clinician", "refused", "account locked")] + \
        [("clinician", "refused", "wrong password")] * 3
    api.ctx.accounts.set_password("clinician", PASSWORD)  # an admin's reset unlocks it
    assert api.client.post("/api/v1/session", json=good).status_code == 200
    assert PASSWORD not in caplog.text and "not the password" not in caplog.text


def test_a_disabled_user_loses_the_session_at_once(api: Api) -> None:
    api.login(Role.RADIOLOGIST)
    assert api.client.get("/api/v1/studies").status_code == 200
    api.ctx.accounts.disable("radiologist")
    assert api.client.get("/api/v1/studies").status_code == 401
    r = api.client.post("/api/v1/session", json={"name": "radiologist", "password": PASSWORD})
    assert r.status_code == 401


def test_logout_ends_the_session(api: Api) -> None:
    csrf = api.login(Role.ADMIN)
    assert api.client.delete("/api/v1/session", headers={CSRF_HEADER: csrf}).status_code == 200
    api.client.cookies.clear()
    assert api.client.get("/api/v1/studies").status_code == 401


def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    db.create_schema(engine)
    ctx = WebContext.of(Ledger(engine), web_settings(tmp_path, session_ttl_s=0.001), {})
    ctx.accounts.add_user("op", Role.OPERATOR, PASSWORD)
    opened = ctx.accounts.login("op", PASSWORD, "127.0.0.1")
    assert ctx.accounts.session(opened.token) is None
    assert ctx.accounts.session("made-up") is None
    engine.dispose()


def test_studies_come_in_keyset_pages_filtered_by_state_and_time(api: Api) -> None:
    failed = [make_job(api.ledger, f"1.2.{i}") for i in range(5)]
    done = make_job(api.ledger, "1.3.1", to=(JobState.COMPLETE,))
    api.login(Role.OPERATOR)
    seen, before = [], None
    while True:
        params = {"state": "failed", "limit": 2, **({"before": before} if before else {})}
        page = api.client.get("/api/v1/studies", params=params).json()
        seen = [s["id"] for s in page["items"]] + seen
        before = page["next_before"]
        if before is None:
            break
    assert seen == failed
    all_jobs = api.client.get("/api/v1/studies").json()["items"]
    assert [s["id"] for s in all_jobs] == [*failed, done]
    assert all_jobs[0]["state"] == "FAILED" and all_jobs[0]["instances"] == 1
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert api.client.get("/api/v1/studies", params={"since": later}).json()["items"] == []
    bad = api.client.get("/api/v1/studies", params={"state": "NOPE"})
    assert bad.status_code == 422 and "state" in bad.json()["detail"]
    assert api.client.get("/api/v1/studies", params={"since": "yesterday"}).status_code == 422
    assert api.client.get("/api/v1/studies", params={"limit": 0}).status_code == 422


def test_one_study_with_its_series_and_timeline(api: Api) -> None:
    job = make_job(api.ledger, "1.2.9", series=2, per_series=3)
    api.login(Role.CLINICIAN)
    body = api.client.get(f"/api/v1/studies/{job}").json()
    assert body["id"] == job and body["instances"] == 6
    assert [(s["series_instance_uid"], s["instances"]) for s in body["series"]] == \
        [("1.2.9.0", 3), ("1.2.9.1", 3)]
    assert [(e["from"], e["to"]) for e in body["timeline"]] == \
        [("RECEIVING", "COMPLETE"), ("COMPLETE", "FAILED")]
    assert body["outbox"] == []
    assert api.client.get("/api/v1/studies/999").status_code == 404


def test_an_operator_retries_a_failed_job_and_the_audit_says_so(api: Api) -> None:
    job = make_job(api.ledger, "1.2.9")
    other = make_job(api.ledger, "1.2.10")
    csrf = api.login(Role.OPERATOR)
    r = api.client.post(f"/api/v1/studies/{job}/retry", headers={CSRF_HEADER: csrf})
    assert r.status_code == 200 and "FAILED -> COMPLETE" in r.json()["result"]
    assert api.ledger.study_by_id(job).state == JobState.COMPLETE
    again = api.client.post(f"/api/v1/studies/{job}/retry", headers={CSRF_HEADER: csrf})
    assert again.status_code == 409 and "not FAILED" in again.json()["detail"]
    r = api.client.post("/api/v1/retry-failed", headers={CSRF_HEADER: csrf})
    assert [i["id"] for i in r.json()["items"]] == [other]
    assert api.ledger.study_by_id(other).state == JobState.COMPLETE
    retries = [(a["user"], a["role"], a["job"], a["outcome"])
               for a in _audit(api) if a["action"] == "retry"]
    assert retries == [("operator", "operator", other, "ok"),
                       ("operator", "operator", job, "refused"),
                       ("operator", "operator", job, "ok")]
    csrf = api.login(Role.ADMIN)
    listed = api.client.get("/api/v1/audit", params={"limit": 2}).json()
    assert [a["action"] for a in listed["items"]] == ["login", "retry"]
    older = api.client.get("/api/v1/audit", params={"before": listed["next_before"]}).json()
    assert [a["action"] for a in older["items"]] == ["retry", "retry", "login"]


def test_readyz_says_what_is_missing(api: Api, tmp_path: Path) -> None:
    assert api.client.get("/readyz").json() == {
        "ready": True, "checks": {"ledger": True, "disk": True, "models": True}}
    engine = db.make_engine(f"sqlite:///{tmp_path / 'gone' / 'l.sqlite3'}")  # no such folder
    huge = web_settings(tmp_path)
    huge = type(huge)(node=huge.node, scp=type(huge.scp)(min_free_disk_mb=2**40), web=huge.web)
    ctx = WebContext.of(Ledger(engine), huge, {}, ["lung-ct"])
    api.client.app.state.ctx = ctx  # type: ignore[attr-defined]
    r = api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == {"ledger": False, "disk": False, "models": False}
    assert api.client.get("/healthz").status_code == 200


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "node.pem", folder / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("tls", [False, True])
def test_the_server_listens_serves_and_stops(api: Api, tmp_path: Path, tls: bool) -> None:
    port = free_port()
    base = web_settings(tmp_path, port=port, tls=tls)
    if tls:
        cert, key = _self_signed(tmp_path)
        base = type(base)(node=base.node, web=base.web, scp=type(base.scp)(
            min_free_disk_mb=0, tls=type(base.scp.tls)(certificate=str(cert),
                                                        private_key=str(key))))
    server = WebServer(WebContext.of(api.ledger, base, {}))
    server.start()
    try:
        verify: ssl.SSLContext | bool = False
        if tls:
            verify = ssl.create_default_context(cafile=str(cert))
        scheme = "https" if tls else "http"
        with httpx.Client(base_url=f"{scheme}://localhost:{port}", verify=verify) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            r = client.post("/api/v1/session", json={"name": "admin", "password": PASSWORD})
            assert r.status_code == 200
            assert ("Secure" in r.headers["set-cookie"]) is tls
            assert "server" not in r.headers
    finally:
        server.stop()
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))


def test_check_config_names_a_web_address_or_certificate_that_cannot_work(
        tmp_path: Path) -> None:
    from node.preflight import web_problems

    s = web_settings(tmp_path, host="192.0.2.1", port=free_port(), tls=True)  # TEST-NET-1
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    s = type(s)(node=s.node, web=s.web, scp=type(s.scp)(tls=type(s.scp.tls)(
        certificate=str(garbage), private_key=str(garbage))))
    problems = web_problems(s)
    assert len(problems) == 2
    assert problems[0].startswith("web.host/web.port: cannot listen on 192.0.2.1:")
    assert problems[1].startswith("web.tls: the node's certificate and key (scp.tls) do not load")
    with socket.socket() as taken:  # in use: serve says so when it starts, not check-config
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = web_settings(tmp_path, port=taken.getsockname()[1])
        assert web_problems(busy) == []
    assert web_problems(web_settings(tmp_path, enabled=False, host="192.0.2.1")) == []
