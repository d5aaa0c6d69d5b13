"""The audit trail: its DICOM audit messages against the PS3.15 A.5.1 schema (jing), RFC 5424
over a real UDP socket and a real TLS socket (a CA made here with ``cryptography``), nothing
lost and nothing sent twice while the repository is down, filters, keyset pages and CSV."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select

from node.core import atna, audit, db
from node.core.audit_forward import AuditForwarder
from node.core.settings import AuditSettings, Settings
from node.core.syslog import BOM, MSGID, SyslogSender, Target, format_message

SCHEMA = Path(__file__).with_name("audit_message.rnc")
JING = "/usr/bin/jing"
RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) - (.*)$", re.S)


def validate(xml: bytes, tmp_path: Path) -> None:
    """jing checks the message against the DICOM audit message schema; errors fail."""
    path = tmp_path / f"message-{abs(hash(xml))}.xml"
    path.write_bytes(xml)
    result = subprocess.run([JING, "-c", str(SCHEMA), str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def parse_syslog(data: bytes) -> tuple[int, bytes]:
    """(PRI, the XML) of one RFC 5424 message; fails if it is not one."""
    match = RFC5424.match(data)
    assert match, data[:200]
    assert match.group(6) == MSGID.encode()
    body = match.group(7)
    assert body.startswith(BOM)
    return int(match.group(1)), body[len(BOM):]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(e)
    yield e
    e.dispose()


NOW = dt.datetime(2026, 12, 7, 9, 30, 0, 123456)
SOURCE = atna.Source("DICOM_NODE", "General Hospital")
PEER = atna.Participant("MODALITY", True, "10.1.2.3", ae_title="MODALITY")
NODE = atna.Participant("DICOM_NODE", False, "node.hospital.org", ae_title="DICOM_NODE")
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_every_builder_makes_a_message_the_schema_accepts(tmp_path: Path) -> None:
    messages = [
        atna.user_authentication(at=NOW, source=SOURCE, user="root", address="127.0.0.1",
                                 logout=False, success=True, node="DICOM_NODE"),
        atna.user_authentication(at=NOW, source=SOURCE, user="root", address="127.0.0.1",
                                 logout=False, success=False, node="DICOM_NODE"),
        atna.user_authentication(at=NOW, source=SOURCE, user="root", address="::1",
                                 logout=True, success=True, node="DICOM_NODE"),
        atna.instances_transferred(at=NOW, source=SOURCE, sender=PEER, receiver=NODE,
                                   study=atna.Study("1.2.3.4", [(CT, 300)]), received=True),
        atna.instances_transferred(at=NOW, source=SOURCE, sender=NODE, receiver=PEER,
                                   study=atna.Study("1.2.3.4", [("", 3)]), received=False,
                                   success=False, description="1 not delivered"),
        atna.begin_transferring(at=NOW, source=SOURCE, sender=NODE, receiver=PEER,
                                study=atna.Study("1.2.3.4", [(CT, 1)])),
        atna.query(at=NOW, source=SOURCE, requestor=NODE, responder=PEER,
                   sop_class="1.2.840.10008.5.1.4.1.2.2.1", query_dataset=b"\x08\x00\x52\x00",
                   transfer_syntax="1.2.840.10008.1.2.1"),
        atna.security_alert(at=NOW, source=SOURCE, reporter=NODE, peer=PEER,
                            subject="10.1.2.3", alert="calling ae title not allowed"),
        atna.instances_accessed(at=NOW, source=SOURCE,
                                user=atna.Participant("op", True, "127.0.0.1"), node=NODE,
                                study=atna.Study("1.2.3.4"), action=atna.Action.UPDATE,
                                description="retry: re-queued (FAILED -> BUILT)"),
        atna.instances_accessed(at=NOW, source=SOURCE,
                                user=atna.Participant("os:root", True, "cli"), node=NODE,
                                study=None, action=atna.Action.DELETE, success=False),
    ]
    for xml in messages:
        validate(xml, tmp_path)
    received = messages[3].decode()
    assert 'csd-code="110104"' in received and 'EventActionCode="C"' in received
    assert 'csd-code="110180"' in received and 'NumberOfInstances="300"' in received
    assert 'csd-code="110122"' in messages[0].decode()
    assert 'EventOutcomeIndicator="4"' in messages[1].decode()
    assert 'csd-code="110123"' in messages[2].decode()
    assert 'csd-code="110102"' in messages[5].decode()
    assert 'csd-code="110112"' in messages[6].decode()
    assert 'csd-code="110113"' in messages[7].decode()
    assert 'csd-code="110103"' in messages[8].decode()
    assert 'EventActionCode="U"' in messages[8].decode()
    assert 'EventActionCode="D"' in messages[9].decode()


def test_the_schema_refuses_a_message_out_of_order(tmp_path: Path) -> None:
    """The check can fail: ParticipantObjectIdentification before ActiveParticipant."""
    xml = atna.user_authentication(at=NOW, source=SOURCE, user="u", address="", logout=False,
                                   success=True, node="N")
    broken = xml.replace(b"<AuditMessage>", b"<AuditMessage><AuditSourceIdentification "
                         b'AuditSourceID="X" />', 1)
    path = tmp_path / "broken.xml"
    path.write_bytes(broken)
    result = subprocess.run([JING, "-c", str(SCHEMA), str(path)], capture_output=True,
                            timeout=60)
    assert result.returncode != 0


def test_rfc5424_over_a_real_udp_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        sender = SyslogSender(Target("127.0.0.1", server.getsockname()[1], "udp", 2.0))
        xml = atna.security_alert(at=NOW, source=SOURCE, reporter=NODE, peer=PEER,
                                  subject="10.1.2.3", alert="rejected")
        assert sender.send([format_message(xml, app_name="dicom-node", hostname="node",
                                           procid="42", severity=4)]) == 1
        data = server.recv(65535)
    pri, body = parse_syslog(data)
    assert pri == 10 * 8 + 4  # authpriv, warning
    assert body == xml
    validate(body, tmp_path)


# ------------------------------------------------------------------ a TLS syslog receiver


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and the repository's certificate for "localhost", signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test audit CA")])
    ca = _cert("Test audit CA", ca_key, ca_name, ca_key, ca=True)
    cert = _cert("localhost", key, ca_name, ca_key, ca=False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "repo.pem", "key": folder / "repo.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


class TlsSyslog:
    """A real RFC 5425 receiver: TLS, octet-counted frames; it can be stopped and started
    again on the same port (the repository going down and coming back)."""

    def __init__(self, pki: dict[str, Path], port: int = 0) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki["cert"], pki["key"])
        self.messages: list[bytes] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen()
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), self.context.wrap_socket(
                    conn, server_side=True) as tls:
                tls.settimeout(5)
                self._frames(tls)

    def _frames(self, tls: ssl.SSLSocket) -> None:
        buffer = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while b" " in buffer:
                length, rest = buffer.split(b" ", 1)
                if len(rest) < int(length):
                    break
                self.messages.append(rest[:int(length)])
                buffer = rest[int(length):]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _settings(port: int, pki: dict[str, Path]) -> Settings:
    return replace(Settings(), audit=AuditSettings(
        enabled=True, repository=f"localhost:{port}", transport="tls", ca_file=str(pki["ca"]),
        interval_s=0.05, retry_cap_s=0.2, timeout_s=2.0))


def _logins(engine: Engine, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        audit.record(engine, audit.Entry(action="login", outcome="ok", user=f"user{i}",
                                         role="admin", address="127.0.0.1"), forward=True)


def test_tls_repository_down_keeps_rows_and_delivers_each_once_when_back(
        engine: Engine, pki: dict[str, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    repo = TlsSyslog(pki)
    port = repo.port
    clock = [0.0]
    forwarder = AuditForwarder(engine, _settings(port, pki), clock=lambda: clock[0])
    _logins(engine, 3)
    assert forwarder.sweep() == 3
    repo.stop()  # the repository goes down
    _logins(engine, 5, start=3)
    with caplog.at_level(logging.INFO, logger="node.audit"):
        for _ in range(4):
            clock[0] += 1.0
            assert forwarder.sweep() == 0
    assert len(audit.pending(engine, 100)) == 5  # kept, none lost
    down = [r for r in caplog.records if "audit repository unreachable" in r.getMessage()]
    assert len(down) == 1, "one line per outage, not per row or per try"
    repo = TlsSyslog(pki, port)  # back, on the same port
    try:
        clock[0] += 1.0
        assert forwarder.sweep() == 5
        deadline = dt.datetime.now() + dt.timedelta(seconds=5)
        while len(repo.messages) < 5 and dt.datetime.now() < deadline:
            threading.Event().wait(0.05)
    finally:
        repo.stop()
    assert audit.pending(engine, 100) == []
    users = []
    for data in repo.messages:
        _, xml = parse_syslog(data)
        validate(xml, tmp_path)
        users += re.findall(rb'UserID="(user\d+)"', xml)
    assert sorted(users) == [f"user{i}".encode() for i in range(3, 8)], "each row once"
    a = db.audit.c
    with engine.connect() as conn:
        attempts = dict(conn.execute(select(a.user_name, a.forward_attempts)).all())
    assert attempts["user0"] == 1 and attempts["user3"] > 1


def test_tls_refuses_a_repository_its_ca_did_not_sign(
        engine: Engine, pki: dict[str, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    repo = TlsSyslog(pki)
    other = tmp_path / "other-ca.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")])
    other.write_bytes(_cert("Other CA", key, name, key, ca=True)
                      .public_bytes(serialization.Encoding.PEM))
    settings = _settings(repo.port, pki)
    settings = replace(settings, audit=replace(settings.audit, ca_file=str(other)))
    try:
        _logins(engine, 1)
        with caplog.at_level(logging.WARNING, logger="node.audit"):
            assert AuditForwarder(engine, settings).sweep() == 0
    finally:
        repo.stop()
    assert repo.messages == []
    assert len(audit.pending(engine, 10)) == 1
    assert "certificate not trusted" in caplog.text


def test_rows_written_while_forwarding_is_off_are_not_sent(engine: Engine) -> None:
    audit.record(engine, audit.Entry(action="login", outcome="ok", user="a"), forward=False)
    audit.record(engine, audit.Entry(action="login", outcome="ok", user="b"), forward=True)
    assert [p.user for p in audit.pending(engine, 10)] == ["b"]
    assert audit.include_earlier(engine) == 1  # audit.send_earlier
    assert [p.user for p in audit.pending(engine, 10)] == ["a", "b"]


def test_rows_without_an_audit_message_are_marked_not_sent(engine: Engine) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        settings = replace(Settings(), audit=AuditSettings(
            enabled=True, repository=f"127.0.0.1:{server.getsockname()[1]}"))
        audit.record(engine, audit.Entry(action="token-add", outcome="ok", user="root",
                                          detail="token:scraper (operator)"), forward=True)
        assert AuditForwarder(engine, settings).sweep() == 0
    assert audit.pending(engine, 10) == []


def test_filters_and_keyset_pages(engine: Engine) -> None:
    for i in range(25):
        audit.record(engine, audit.Entry(action="login" if i % 2 else "logout",
                                         outcome="ok", user=f"u{i % 3}",
                                         at=dt.datetime(2026, 12, 1) + dt.timedelta(hours=i)))
    first = audit.page(engine, limit=10)
    second = audit.page(engine, limit=10, before=first[-1]["id"])
    assert [r["id"] for r in first + second] == list(range(25, 5, -1))
    logins = audit.page(engine, limit=100, filters=audit.Filters(action="login"))
    assert len(logins) == 12 and {r["action"] for r in logins} == {"login"}
    u1 = audit.page(engine, limit=100, filters=audit.Filters(user="u1"))
    assert {r["user"] for r in u1} == {"u1"} and len(u1) == 8
    window = audit.page(engine, limit=100, filters=audit.Filters(
        since=dt.datetime(2026, 12, 1, 5), until=dt.datetime(2026, 12, 1, 10)))
    assert len(window) == 5
    assert len(list(audit.every(engine, batch=7))) == 25


def test_csv_cells_that_would_run_as_formulas_are_neutralised() -> None:
    rows = [{"id": 1, "user": "=HYPERLINK(\"http://x\")", "detail": "+1", "address": "-2",
             "action": "@SUM(A1)", "outcome": "ok"}]
    text = "".join(audit.csv_lines(rows))
    lines = text.splitlines()
    assert lines[0].startswith("id,at,user,")
    assert "'=HYPERLINK" in lines[1] and "'+1" in lines[1] and "'-2" in lines[1]
    assert "'@SUM(A1)" in lines[1]
    assert audit.safe_cell("plain") == "plain" and audit.safe_cell(None) == ""


def test_the_query_message_carries_the_request_in_base64(tmp_path: Path) -> None:
    xml = atna.query(at=NOW, source=SOURCE, requestor=NODE, responder=PEER,
                     sop_class="1.2.840.10008.5.1.4.1.2.2.1", query_dataset=b"\x01\x02",
                     transfer_syntax="1.2.840.10008.1.2")
    assert base64.b64encode(b"\x01\x02") in xml
    validate(xml, tmp_path)
