"""MLLP client against the real listener on real sockets (and once as its own process).

The message is an ORU^R01 built by ``build_oru`` from pydicom's real CT_small.dcm with a
distinctive patient ID and name, so that any leak into an exception text would show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.core.errors import ConfigError, TransientError
from node.core.settings import ClientTls
from node.hl7.listener import MllpListener, build_ack, server_tls_context
from node.hl7.mllp import (
    Ack,
    FrameReader,
    Hl7Unavailable,
    MllpError,
    classify,
    frame,
    parse_ack,
    send_message,
)
from node.scp.tls import client_context
from tests.hl7.sample_oru import sample_oru

REPO = Path(__file__).resolve().parents[2]
PATIENT_ID = "PHI-MRN-4711"
FAMILY_NAME = "Geheimnisvoll"
TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def message() -> str:
    return sample_oru(PATIENT_ID, FAMILY_NAME)


def msh10(message: str) -> str:
    return message.split("\r")[0].split("|")[9]


def assert_no_patient_data(exc: BaseException) -> None:
    assert PATIENT_ID not in str(exc) and FAMILY_NAME not in str(exc)


def test_aa_is_delivered_and_the_listener_keeps_the_message(message: str,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "received.hl7"
    with MllpListener(mode="AA", out=out) as listener:
        ack = send_message("127.0.0.1", listener.port, message, timeout_s=5)
        ack_again = send_message("127.0.0.1", listener.port, message, timeout_s=5)
    assert ack.code == "AA" and ack.control_id == msh10(message)
    assert classify(ack, "retry", "fail") == "delivered"
    assert ack_again.control_id == ack.control_id
    assert listener.received == [message, message]
    block = message.replace("\r", "\n")
    assert out.read_text(encoding="utf-8") == f"{block}\n\n{block}\n\n"
    assert f"PID|1||{PATIENT_ID}" in out.read_text(encoding="utf-8")


def test_line_feed_separated_message_is_sent_with_carriage_returns(message: str) -> None:
    as_text_file = message.replace("\r", "\n") + "\n"  # e.g. read back with Path.read_text
    with MllpListener(mode="AA") as listener:
        ack = send_message("127.0.0.1", listener.port, as_text_file, timeout_s=5)
    assert (ack.code, ack.control_id) == ("AA", msh10(message))
    assert listener.received == [message + "\r"]


@pytest.mark.parametrize(("mode", "on_error", "on_reject", "outcome"), [
    ("AE", "retry", "fail", "transient"),
    ("AE", "fail", "retry", "permanent"),
    ("AR", "retry", "fail", "permanent"),
    ("AR", "fail", "retry", "transient"),
])
def test_negative_acks_are_classified_per_policy(message: str, mode: str, on_error: str,
                                                 on_reject: str, outcome: str) -> None:
    with MllpListener(mode=mode) as listener:
        ack = send_message("127.0.0.1", listener.port, message, timeout_s=5)
    assert (ack.code, ack.control_id) == (mode, msh10(message))
    assert f"mode {mode}" in ack.text
    assert classify(ack, on_error, on_reject) == outcome


def test_classify_covers_the_enhanced_mode_codes() -> None:
    def outcome(code: str, on_error: str = "retry", on_reject: str = "fail") -> str:
        return classify(Ack(code, "", "X"), on_error, on_reject)

    assert [outcome(c) for c in ("AA", "CA", "AE", "CE", "AR", "CR")] == [
        "delivered", "delivered", "transient", "transient", "permanent", "permanent"]
    with pytest.raises(ValueError, match="unknown"):
        outcome("ZZ")


def test_silent_peer_times_out(message: str) -> None:
    with MllpListener(mode="silent") as listener:
        started = time.monotonic()
        with pytest.raises(Hl7Unavailable, match=r"no answer within 0.5 s while waiting") as info:
            send_message("127.0.0.1", listener.port, message, timeout_s=TIMEOUT_S)
        elapsed = time.monotonic() - started
        assert listener.received == [message]
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 2
    assert isinstance(info.value, TransientError)
    assert f"127.0.0.1:{listener.port}" in str(info.value)
    assert_no_patient_data(info.value)


def test_dropped_connection_is_unavailable(message: str) -> None:
    with MllpListener(mode="drop") as listener:
        with pytest.raises(Hl7Unavailable, match=r"closed without an ACK|reset") as info:
            send_message("127.0.0.1", listener.port, message, timeout_s=5)
        assert listener.received == [message]
    assert_no_patient_data(info.value)


def test_nothing_listening_is_unavailable(message: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(Hl7Unavailable, match="connection refused while connecting") as info:
            send_message("127.0.0.1", port, message, timeout_s=TIMEOUT_S)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_patient_data(info.value)


@contextlib.contextmanager
def answering(reply: bytes) -> Iterator[int]:
    """A peer that reads one framed message and answers ``reply`` as it is; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            FrameReader(conn).read()
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        thread.join(5)
        server.close()


def garbled_replies(message: str) -> dict[str, bytes]:
    return {
        "not hl7": frame("this is not an acknowledgment"),
        "no msa": frame("MSH|^~\\&|EMR|HOSP|||20260101||ACK|1|P|2.5.1\rERR|||207|E"),
        "not utf-8": b"\x0bMSH|^~\\&|\xff\xfe|MSA|AA|1\x1c\x0d",
        "no frame": b"HTTP/1.1 400 Bad Request\r\n\r\n",
        "cut short": b"\x0bMSH|^~\\&|EMR|HOSP",
        "other message": frame(build_ack(message.replace(msh10(message), "SOMEONE-ELSE"), "AA")),
    }


@pytest.mark.parametrize("case", ["not hl7", "no msa", "not utf-8", "no frame", "cut short",
                                  "other message"])
def test_garbled_or_foreign_acks_are_unavailable(message: str, case: str) -> None:
    with answering(garbled_replies(message)[case]) as port, \
            pytest.raises(Hl7Unavailable) as info:
        send_message("127.0.0.1", port, message, timeout_s=5)
    expected = "another message" if case == "other message" else "garbled|closed"
    assert re.search(expected, str(info.value))
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_patient_data(info.value)


def test_reader_splits_and_joins_frames_and_enforces_its_limit() -> None:
    first, second = "MSH|^~\\&|A\rPID|1||X", "MSH|^~\\&|B"
    left, right = socket.socketpair()
    with left, right:
        right.sendall(frame(first) + frame(second))  # two messages in one segment
        for byte in frame("MSH|^~\\&|C\u00e9"):  # one message a byte at a time
            right.sendall(bytes([byte]))
        right.shutdown(socket.SHUT_WR)
        reader = FrameReader(left)
        assert [reader.read(), reader.read(), reader.read(), reader.read()] == [
            first.encode(), second.encode(), "MSH|^~\\&|C\u00e9".encode(), None]
    left, right = socket.socketpair()
    with left, right:
        right.sendall(frame("MSH|^~\\&|" + "x" * 100))
        with pytest.raises(MllpError, match="longer than 50 bytes"):
            FrameReader(left, max_bytes=50).read()


def test_ack_parser_reads_msa_and_err_text() -> None:
    ack = parse_ack("MSH|^~\\&|EMR||||20260101||ACK|9|P|2.3\rMSA|AE|CID\\T\\1\r"
                    "ERR|PID^1^3^204&Unknown key identifier")
    assert ack == Ack(code="AE", text="Unknown key identifier", control_id="CID&1")
    built = parse_ack(build_ack("MSH|^~\\&|NODE|R|EMR|H|20260101||ORU^R01|CID|P|2.5.1", "AR"))
    assert (built.code, built.control_id) == ("AR", "CID")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificates(folder: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signs: (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(_name("hl7 listener"))
            .issuer_name(_name(ca_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / f"{ca_name}.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_verifies_the_listener(message: str, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path, "hospital-ca")
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _certificates(tmp_path / "other", "other-ca")
    assert client_context(ClientTls(enabled=False), "delivery.hl7[emr]") is None
    trusting = client_context(ClientTls(enabled=True, ca_certificates=str(ca)), "x")
    distrusting = client_context(ClientTls(enabled=True, ca_certificates=str(other_ca)), "x")
    assert trusting is not None and trusting.verify_mode == ssl.CERT_REQUIRED
    with MllpListener(mode="AA", tls=server_tls_context(str(cert), str(key))) as listener:
        ack = send_message("127.0.0.1", listener.port, message, timeout_s=5, tls=trusting)
        assert ack.code == "AA"
        with pytest.raises(Hl7Unavailable, match="TLS certificate not accepted") as info:
            send_message("127.0.0.1", listener.port, message, timeout_s=5, tls=distrusting)
        assert listener.received == [message]
    assert_no_patient_data(info.value)
    with pytest.raises(ConfigError, match=r"delivery.hl7\[emr\].tls: cannot load"):
        client_context(ClientTls(enabled=True, ca_certificates=str(tmp_path / "none.pem")),
                       "delivery.hl7[emr]")


def test_listener_runs_as_a_program_until_sigterm(message: str, tmp_path: Path) -> None:
    out = tmp_path / "received.hl7"
    with subprocess.Popen(
            [sys.executable, "-m", "node.hl7.listener", "--host", "127.0.0.1", "--port", "0",
             "--out", str(out), "--mode", "AA"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the listener printed nothing within 30 s"
            line = proc.stdout.readline()
            found = re.search(r"listener on 127\.0\.0\.1:(\d+)", line)
            assert found, line
            ack = send_message("127.0.0.1", int(found.group(1)), message, timeout_s=5)
            assert (ack.code, ack.control_id) == ("AA", msh10(message))
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=10)
            assert proc.returncode == 0, errors
        finally:
            if proc.poll() is None:
                proc.kill()
    assert out.read_text(encoding="utf-8") == message.replace("\r", "\n") + "\n\n"
