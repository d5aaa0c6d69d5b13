"""Directory login against a real OpenLDAP: the test starts its own ``slapd`` on a free port
with a throw-away mdb database, loads people and groups with ``ldapadd``, and logs in through
the API (in-process, and once through a real ``dicom-node serve``).

People: rita (radiologists), otto (operators), ada (pacs-admins and radiologists), carl (only
a group no role is mapped to), and the service account dicom-node that searches for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import select

from node.core import db
from node.core.accounts import Accounts, Role
from node.core.directory import Directory
from node.core.errors import ConfigError, NodeError
from node.core.ledger import Ledger
from node.core.settings import LdapRole, LdapSettings
from node.core.settings_load import load_settings
from node.preflight import secret_problems
from node.web.app import create_app
from node.web.context import WebContext
from tests.conftest import NodeProcess, free_port
from tests.web.conftest import web_settings

SLAPD, LDAPADD, LDAPMODIFY = Path("/usr/sbin/slapd"), Path("/usr/bin/ldapadd"), \
    Path("/usr/bin/ldapmodify")
SCHEMA = Path("/etc/ldap/schema")
BASE = "dc=hospital,dc=org"
ROOT_DN, ROOT_PW = f"cn=admin,{BASE}", "slapd root pw 1"
SERVICE_DN, SERVICE_PW = f"cn=dicom-node,ou=services,{BASE}", "service account pw 7"
PASSWORDS = {"rita": "rita's directory pw", "otto": "otto's directory pw",
             "ada": "ada's directory pw", "carl": "carl's directory pw"}
GROUPS = {"pacs-admins": ["ada"], "radiologists": ["rita", "ada"], "operators": ["otto"],
          "cafeteria": ["carl", "rita"]}
#: in order: the first that names one of the user's groups gives the role
ROLES = (LdapRole(f"cn=pacs-admins,ou=groups,{BASE}", "admin"),
         LdapRole("Radiologists", "radiologist"),  # by cn, in another case
         LdapRole(f"CN=operators, OU=groups, {BASE.upper()}", "operator"))  # DN, spaced, upper
INJECTIONS = ("*", "*)(uid=*", "rita)(uid=rita", "rita)(|(uid=*",
              "*)(objectClass=*))(|(uid=*", "rita\x00",
              "uid=rita,ou=people," + BASE)


def _ldif() -> str:
    blocks = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Hospital\n"
        "dc: hospital",
        *(f"dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}"
          for ou in ("people", "groups", "services")),
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject"
        f"\ncn: dicom-node\nuserPassword: {SERVICE_PW}",
        *(f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
          f"cn: {uid.title()}\nsn: {uid.title()}\nuserPassword: {pw}"
          for uid, pw in PASSWORDS.items()),
        *(f"dn: cn={cn},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {cn}\n"
          + "\n".join(f"member: uid={m},ou=people,{BASE}" for m in members)
          for cn, members in GROUPS.items()),
    ]
    return "\n\n".join(blocks) + "\n"


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for 127.0.0.1: (CA, certificate, key)."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                   for _ in range(2))
    ca = (x509.CertificateBuilder().subject_name(name("test directory CA"))
          .issuer_name(name("test directory CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class Slapd:
    """A real OpenLDAP server in ``folder``, on a free port of 127.0.0.1 (and, with ``tls``,
    ldaps:// on another, StartTLS on both, with a certificate of its own CA)."""

    folder: Path
    tls: bool = False
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def start(self) -> Slapd:
        if not SLAPD.exists():
            pytest.fail(f"{SLAPD} is missing: scripts/setup installs slapd and ldap-utils")
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        conf = self.folder / "slapd.conf"
        conf.write_text("\n".join([
            *(f"include {SCHEMA / n}.schema" for n in ("core", "cosine", "inetorgperson")),
            f"pidfile {self.folder / 'slapd.pid'}",
            "modulepath /usr/lib/ldap", "moduleload back_mdb",
            "database mdb", "maxsize 10485760", f'suffix "{BASE}"',
            f'rootdn "{ROOT_DN}"', f'rootpw "{ROOT_PW}"', f"directory {self.folder / 'db'}",
            "access to attrs=userPassword by anonymous auth by * none",
            "access to * by users read by * none", ""]))
        self.port = free_port()
        urls = [self.url + "/"]
        if self.tls:
            _, cert, key = _certificates(self.folder)
            conf.write_text(conf.read_text().replace("database mdb", "\n".join([
                f"TLSCACertificateFile {self.ca_file}", f"TLSCertificateFile {cert}",
                f"TLSCertificateKeyFile {key}", "database mdb"])))
            self.tls_port = free_port()
            urls.append(self.ldaps_url + "/")
        self.proc = subprocess.Popen(
            [str(SLAPD), "-h", " ".join(urls), "-f", str(conf), "-d", "0"],
            stdout=subprocess.DEVNULL, stderr=(self.folder / "slapd.log").open("ab"))
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("slapd did not start: "
                            + (self.folder / "slapd.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        done = subprocess.run(["/usr/bin/ldapwhoami", "-x", "-H", self.url, "-D", ROOT_DN,
                               "-w", ROOT_PW], capture_output=True, timeout=10)
        return done.returncode == 0

    def ldap(self, tool: Path, ldif: str) -> None:
        done = subprocess.run([str(tool), "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                              input=ldif.encode(), capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr.decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    server.ldap(LDAPADD, _ldif())
    yield server
    server.stop()


def template_mode(url: str, **more: Any) -> LdapSettings:
    """Users found by a DN template; groups read with the user's own bind."""
    return LdapSettings(enabled=True, url=url, user_dn_template=f"uid={{name}},ou=people,{BASE}",
                        group_base=f"ou=groups,{BASE}", roles=ROLES, timeout_s=3.0, **more)


def search_mode(url: str) -> LdapSettings:
    """Users and groups found by the service account, whose password is in the environment."""
    return LdapSettings(enabled=True, url=url, bind_dn=SERVICE_DN,
                        password_env="TEST_LDAP_SERVICE_PW", user_base=f"ou=people,{BASE}",
                        group_base=f"ou=groups,{BASE}", roles=ROLES, timeout_s=3.0)


@dataclass
class Node:
    ctx: WebContext
    client: TestClient

    def login(self, name: str, password: str) -> httpx.Response:
        return self.client.post("/api/v1/session", json={"name": name, "password": password})

    def audit(self) -> list[dict[str, Any]]:
        return self.ctx.accounts.audit_page(limit=100)

    def user_row(self, name: str) -> Any:
        u = db.users.c
        with db.reader(self.ctx.ledger.engine) as conn:
            return conn.execute(select(db.users).where(u.name == name)).one_or_none()


@pytest.fixture
def make_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("TEST_LDAP_SERVICE_PW", SERVICE_PW)
    opened: list[tuple[TestClient, Any]] = []

    def make(ldap: LdapSettings, name: str = "node") -> Node:
        folder = tmp_path / name
        folder.mkdir()
        engine = db.make_engine(f"sqlite:///{folder / 'ledger.sqlite3'}")
        db.create_schema(engine)
        settings = web_settings(folder, max_failed_logins=3, ldap=ldap)
        ctx = WebContext.of(Ledger(engine), settings, {})
        client = TestClient(create_app(ctx))
        client.__enter__()
        opened.append((client, engine))
        return Node(ctx, client)

    yield make
    for client, engine in opened:
        client.__exit__(None, None, None)
        engine.dispose()


@pytest.fixture(params=["template", "search"])
def node(request: pytest.FixtureRequest, slapd: Slapd, make_node: Any) -> Node:
    mode = template_mode if request.param == "template" else search_mode
    return make_node(mode(slapd.url))  # type: ignore[no-any-return]


def test_a_radiologist_of_the_directory_logs_in_and_is_audited(node: Node) -> None:
    r = node.login("rita", PASSWORDS["rita"])
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "radiologist"  # radiologists is mapped; cafeteria is not
    me = node.client.get("/api/v1/session").json()
    assert (me["name"], me["role"]) == ("rita", "radiologist")
    assert node.client.get("/api/v1/studies").status_code == 200
    row = node.user_row("rita")
    assert (row.source, row.role, row.disabled) == ("ldap", "radiologist", False)
    assert not row.password_hash.startswith("$argon2")  # a marker no password verifies
    (record,) = node.audit()
    assert (record["user"], record["role"], record["action"], record["outcome"],
            record["detail"]) == ("rita", "radiologist", "login", "ok", "directory")


def test_the_first_mapped_group_in_the_order_written_gives_the_role(node: Node) -> None:
    assert node.login("ada", PASSWORDS["ada"]).json()["role"] == "admin"
    node.client.cookies.clear()
    assert node.login("otto", PASSWORDS["otto"]).json()["role"] == "operator"


def test_wrong_password_and_no_mapped_group_are_refused_and_audited(node: Node) -> None:
    wrong = node.login("rita", "not rita's password")
    unmapped = node.login("carl", PASSWORDS["carl"])  # right password, only in cafeteria
    unknown = node.login("nobody", "any password at all")
    for r in (wrong, unmapped, unknown):
        assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    assert node.client.get("/api/v1/session").status_code == 401
    details = [(a["user"], a["outcome"], a["detail"]) for a in node.audit()][::-1]
    assert details[0] == ("rita", "refused", "wrong password")
    assert details[1] == ("carl", "refused", "no mapped group")
    assert details[2][:2] == ("nobody", "refused")
    assert node.user_row("carl") is None  # no shadow account for a refused user
    assert not any(pw in str(node.audit()) for pw in PASSWORDS.values())


def test_an_empty_password_never_binds_anonymously(node: Node) -> None:
    assert node.login("rita", "").status_code == 401


@pytest.mark.parametrize("name", INJECTIONS)
def test_a_filter_or_dn_injection_in_the_name_logs_no_one_in(node: Node, name: str) -> None:
    for password in PASSWORDS.values():
        r = node.login(name, password)
        assert r.status_code in (401, 429), (name, r.text)
    assert node.user_row(name) is None


def test_a_local_account_of_the_same_name_wins(node: Node) -> None:
    node.ctx.accounts.add_user("rita", Role.CLINICIAN, "rita's local password")
    assert node.login("rita", PASSWORDS["rita"]).status_code == 401
    r = node.login("rita", "rita's local password")
    assert r.status_code == 200 and r.json()["role"] == "clinician"


def test_failed_directory_logins_lock_the_name_before_and_after_its_first_login(
        node: Node) -> None:
    codes = [node.login("otto", "wrong otto pw").status_code for _ in range(3)]
    assert codes == [401, 401, 401]  # max_failed_logins = 3; otto never logged in before
    r = node.login("otto", PASSWORDS["otto"])
    assert r.status_code == 429 and "locked" in r.json()["detail"]
    assert node.login("rita", PASSWORDS["rita"]).status_code == 200  # made her shadow row
    node.client.cookies.clear()
    assert [node.login("rita", "wrong").status_code for _ in range(3)] == [401] * 3
    assert node.login("rita", PASSWORDS["rita"]).status_code == 429
    assert node.user_row("rita").locked_until is not None


def test_the_role_follows_the_directory_groups_at_each_login(
        slapd: Slapd, make_node: Any) -> None:
    node = make_node(search_mode(slapd.url))
    assert node.login("otto", PASSWORDS["otto"]).json()["role"] == "operator"
    group = f"cn=radiologists,ou=groups,{BASE}"
    member = f"uid=otto,ou=people,{BASE}"
    slapd.ldap(LDAPMODIFY, f"dn: {group}\nchangetype: modify\nadd: member\nmember: {member}\n")
    try:
        # the open session takes the new role at the next login, which updates the row
        assert node.login("otto", PASSWORDS["otto"]).json()["role"] == "radiologist"
        assert node.client.get("/api/v1/session").json()["role"] == "radiologist"
    finally:
        slapd.ldap(LDAPMODIFY,
                   f"dn: {group}\nchangetype: modify\ndelete: member\nmember: {member}\n")


def test_a_user_taken_out_of_every_mapped_group_loses_the_open_session_too(
        slapd: Slapd, make_node: Any) -> None:
    node = make_node(template_mode(slapd.url))
    assert node.login("rita", PASSWORDS["rita"]).status_code == 200
    assert node.client.get("/api/v1/session").status_code == 200
    group, member = f"cn=radiologists,ou=groups,{BASE}", f"uid=rita,ou=people,{BASE}"
    slapd.ldap(LDAPMODIFY, f"dn: {group}\nchangetype: modify\ndelete: member\nmember: {member}\n")
    try:
        other = TestClient(node.client.app)  # another browser: the open session is the first's
        r = other.post("/api/v1/session", json={"name": "rita", "password": PASSWORDS["rita"]})
        assert r.status_code == 401  # only in cafeteria now
        assert node.client.get("/api/v1/session").status_code == 401
    finally:
        slapd.ldap(LDAPMODIFY,
                   f"dn: {group}\nchangetype: modify\nadd: member\nmember: {member}\n")


def test_a_disabled_directory_user_is_refused_and_keeps_the_directorys_password(
        slapd: Slapd, make_node: Any) -> None:
    node = make_node(template_mode(slapd.url))
    assert node.login("rita", PASSWORDS["rita"]).status_code == 200
    accounts: Accounts = node.ctx.accounts
    with pytest.raises(NodeError, match="through the directory"):
        accounts.set_password("rita", "a new local password")
    accounts.disable("rita")
    assert node.client.get("/api/v1/session").status_code == 401  # sessions ended
    assert node.login("rita", PASSWORDS["rita"]).status_code == 401
    assert node.audit()[0]["detail"] == "disabled"


def test_a_stopped_directory_is_a_clear_503_and_the_node_serves_on(
        tmp_path: Path, make_node: Any) -> None:
    own = Slapd(tmp_path / "own").start()
    own.ldap(LDAPADD, _ldif())
    node = make_node(template_mode(own.url))
    node.ctx.accounts.add_user("local-admin", Role.ADMIN, "a local admin password")
    assert node.login("rita", PASSWORDS["rita"]).status_code == 200
    node.client.cookies.clear()
    own.stop()
    started = time.monotonic()
    r = node.login("rita", PASSWORDS["rita"])
    assert r.status_code == 503 and r.json()["detail"].startswith("directory unreachable")
    assert time.monotonic() - started < 3.0
    assert node.client.get("/healthz").status_code == 200
    assert node.login("local-admin", "a local admin password").status_code == 200
    record = node.audit()[1]
    assert (record["user"], record["outcome"]) == ("rita", "error")
    assert PASSWORDS["rita"] not in str(node.audit())


@contextlib.contextmanager
def _silent_peer() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung directory."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    held.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


def test_a_directory_that_never_answers_times_out_within_timeout_s(make_node: Any) -> None:
    with _silent_peer() as port:
        node = make_node(replace(template_mode(f"ldap://127.0.0.1:{port}"), timeout_s=1.0))
        started = time.monotonic()
        r = node.login("rita", PASSWORDS["rita"])
        took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert took < 3.0  # one receive timeout (1 s), not the default's forever


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("tls-slapd"), tls=True).start()
    server.ldap(LDAPADD, _ldif())
    yield server
    server.stop()


def test_ldaps_and_start_tls_verify_the_directory_against_ca_file(
        tls_slapd: Slapd, make_node: Any, tmp_path: Path) -> None:
    ca = str(tls_slapd.ca_file)
    ldaps = make_node(template_mode(tls_slapd.ldaps_url, ca_file=ca), "ldaps")
    assert ldaps.login("rita", PASSWORDS["rita"]).json()["role"] == "radiologist"
    start_tls = make_node(template_mode(tls_slapd.url, start_tls=True, ca_file=ca), "starttls")
    assert start_tls.login("otto", PASSWORDS["otto"]).json()["role"] == "operator"
    # a directory whose certificate the node's CA did not sign gets no password
    other_ca, _, _ = _certificates(tmp_path)
    for url, more in ((tls_slapd.ldaps_url, {}), (tls_slapd.url, {"start_tls": True})):
        node = make_node(template_mode(url, ca_file=str(other_ca), **more),
                         f"untrusted-{len(more)}")
        r = node.login("rita", PASSWORDS["rita"])
        assert r.status_code == 503 and "directory unreachable" in r.json()["detail"], r.text


def test_ldap_settings_are_checked_in_one_line_each(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[web.ldap]\nenabled = true\nurl = "http://ldap"\nstart_tls = true\n'
                   'user_dn_template = "uid={user},dc=x"\ngroup_filter = "(member={who})"\n'
                   'timeout_s = 0\n[[web.ldap.roles]]\ngroup = "x"\nrole = "superuser"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert any(p.startswith("web.ldap.roles[0].role: expected one of") for p in
               err.value.problems)
    cfg.write_text(cfg.read_text().replace('"superuser"', '"admin"'))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert [p.split(":")[0] for p in err.value.problems] == [
        "web.ldap.url", "web.ldap.user_dn_template", "web.ldap.group_base",
        "web.ldap.group_filter", "web.ldap.timeout_s"]


def test_a_service_account_without_its_password_is_a_config_error(
        slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="TEST_LDAP_SERVICE_PW"):
        Directory(search_mode(slapd.url), environ={})
    monkeypatch.delenv("TEST_LDAP_SERVICE_PW", raising=False)
    settings = web_settings(Path("."), ldap=search_mode(slapd.url))
    assert secret_problems(settings) == [  # what check-config says
        "web.ldap.password_env: the environment variable TEST_LDAP_SERVICE_PW is not set"]


@pytest.mark.integration
def test_serve_logs_a_directory_user_in_and_serves_on_without_the_directory(
        tmp_path: Path, node_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    own = Slapd(tmp_path / "own").start()
    own.ldap(LDAPADD, _ldif())
    web_port = free_port()
    monkeypatch.setenv("TEST_LDAP_SERVICE_PW", SERVICE_PW)  # serve inherits it
    node: NodeProcess = node_factory({
        "web": {"enabled": True, "port": web_port},
        "web.ldap": {"enabled": True, "url": own.url, "bind_dn": SERVICE_DN,
                     "password_env": "TEST_LDAP_SERVICE_PW", "user_base": f"ou=people,{BASE}",
                     "group_base": f"ou=groups,{BASE}", "timeout_s": 3.0,
                     "roles": [{"group": "radiologists", "role": "radiologist"},
                               {"group": f"cn=operators,ou=groups,{BASE}", "role": "operator"}]},
    })
    node.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10) as client:
            _wait_up(client)
            r = client.post("/api/v1/session",
                            json={"name": "rita", "password": PASSWORDS["rita"]})
            assert r.status_code == 200, r.text
            assert r.json()["role"] == "radiologist"
            assert client.get("/api/v1/studies").status_code == 200
            client.cookies.clear()
            wrong = client.post("/api/v1/session", json={"name": "otto", "password": "nope"})
            assert wrong.status_code == 401
            own.stop()
            down = client.post("/api/v1/session",
                               json={"name": "otto", "password": PASSWORDS["otto"]})
            assert down.status_code == 503
            assert "directory unreachable" in down.json()["detail"]
            assert client.get("/healthz").status_code == 200
        assert node.alive()
    finally:
        own.stop()
        node.stop()
    log = node.log()
    assert "Traceback" not in log
    for secret in [*PASSWORDS.values(), SERVICE_PW]:
        assert secret not in log


def _wait_up(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail("the web API did not come up")
