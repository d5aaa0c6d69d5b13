"""Hostile DICOM peers against a real ``dicom-node serve``: raw sockets, struct-packed PDUs.

One node runs through every case (issue 11 item 9): PDUs announcing gigabytes, truncated and
malformed PDUs, random bytes (a fixed seed), mutated association requests, P-DATA for a
presentation context that was not accepted, PDV lengths past the PDU, command sets without an
Affected SOP Instance UID or with a non-ASCII one, fragments over the node's announced maximum,
PDUs stalled half-way, floods of idle connections. Each gets an A-ABORT, a close, or a DIMSE
error status, in time; meanwhile and afterwards real dcmtk peers get through at the first try;
the node's log holds no traceback and one line per refusal episode; its resident memory stays
within 50 MiB of where it started; no association thread is left behind; the ledger holds
exactly what was stored successfully, and nothing of the fuzz is left in the spool, incoming/ or
quarantine.

The hostile peers connect from 127.0.0.2 (and .3, .4), the real senders from 127.0.0.1, so the
per-address cap is seen to hold the one back and not the other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess
from tests.data import ct_series, sample_file
from tests.scp.test_access import _tls_store, _wait_tls_ready, pki  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.integration

SEED = 20261207
TIMEOUT_S = 2.0  # the node's acse_timeout_s and network_timeout_s here
MAX_PDU = 65536  # the node's announced maximum PDU length here
PER_PEER = 8
TOTAL = 24
HOSTILE = "127.0.0.2"

CT = b"1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = b"1.2.840.10008.1.1"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
CT_CX, ECHO_CX = 1, 3

ABORT, CLOSED, REJECT, ACCEPT, RELEASED = "A-ABORT", "closed", "A-ASSOCIATE-RJ", "A-ASSOCIATE-AC", "A-RELEASE-RP"
PDU_TYPES = {1: "A-ASSOCIATE-RQ", 2: ACCEPT, 3: REJECT, 4: "P-DATA-TF", 5: "A-RELEASE-RQ", 6: RELEASED, 7: ABORT}


# ------------------------------------------------------------------------- struct-packed PDUs


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def item(item_type: int, data: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(data)) + data


def associate_rq(called: bytes = b"DICOM_NODE", calling: bytes = b"HOSTILE", max_pdu: int = 16384) -> bytes:
    variable = item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntax in ((CT_CX, CT, EXPLICIT_LE), (ECHO_CX, VERIFICATION, IMPLICIT_LE)):
        variable += item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract) + item(0x40, syntax))
    variable += item(0x50, item(0x51, struct.pack(">L", max_pdu)) + item(0x52, b"1.2.826.0.1.3680043.8.498.1"))
    return pdu(0x01, struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32) + variable)


RELEASE_RQ = pdu(0x05, bytes(4))


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, tag, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def ui(value: bytes) -> bytes:
    return value + b"\0" * (len(value) % 2)


def command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(body))) + body


def store_rq(message_id: int, *, sop_class: bytes | None = CT, sop_instance: bytes | None = b"1.2.3.4.5",
             data_set: bool = True) -> bytes:
    parts = [element(0x0100, us(0x0001)), element(0x0110, us(message_id)), element(0x0700, us(0)),
             element(0x0800, us(0x0000 if data_set else 0x0101))]
    if sop_class is not None:
        parts.insert(0, element(0x0002, ui(sop_class)))
    if sop_instance is not None:
        parts.append(element(0x1000, ui(sop_instance)))
    return command(*parts)


def echo_rq(message_id: int, *, sop_class: bytes = VERIFICATION, data_set: bool = False) -> bytes:
    return command(element(0x0002, ui(sop_class)), element(0x0100, us(0x0030)),
                   element(0x0110, us(message_id)), element(0x0800, us(0x0000 if data_set else 0x0101)))


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, message control header, fragment) PDVs."""
    return pdu(0x04, b"".join(struct.pack(">LBB", len(d) + 2, cx, hdr) + d for cx, hdr, d in pdvs))


def command_pdv(cx: int, data: bytes) -> tuple[int, int, bytes]:
    return (cx, 0x03, data)


def data_pdv(cx: int, data: bytes, last: bool = True) -> tuple[int, int, bytes]:
    return (cx, 0x02 if last else 0x00, data)


# ------------------------------------------------------------------------------- a raw peer


class Peer:
    """A peer on a raw socket, from its own loopback address."""

    def __init__(self, port: int, source: str = HOSTILE, timeout: float = 10.0) -> None:
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.opened = time.monotonic()

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the node may have closed already: that is its answer
            self.sock.sendall(data)

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def read(self) -> tuple[str, bytes] | None:
        """The next PDU from the node as (name, body); None when it closed the connection."""
        head = self._exact(6)
        if head is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", head)
        body = self._exact(length)
        assert body is not None, "the node closed inside its own PDU"
        return PDU_TYPES.get(pdu_type, hex(pdu_type)), body

    def answer(self) -> str:
        """What the node answered next: a PDU's name, a C-STORE status, or closed."""
        got = self.read()
        if got is None:
            return CLOSED
        name, body = got
        if name == "P-DATA-TF":
            cmd = parse_command(body[6:])
            return f"status 0x{int.from_bytes(cmd[0x0900], 'little'):04X}"
        return name

    def until_closed(self) -> list[str]:
        answers = [self.answer()]
        while answers[-1] != CLOSED:
            answers.append(self.answer())
        return answers

    def associate(self) -> None:
        self.send(associate_rq())
        got = self.read()
        assert got is not None and got[0] == ACCEPT, got

    def close(self) -> None:
        self.sock.close()


def parse_command(data: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset < len(data):
        _, tag, length = struct.unpack_from("<HHL", data, offset)
        out[tag] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return out


class CloseWatch:
    """Watches peers from now on: how long after it opened each one's connection was closed."""

    def __init__(self, peers: list[Peer], timeout: float) -> None:
        self._peers = peers
        self._closed: dict[int, float] = {}
        self._thread = threading.Thread(target=self._watch, args=(timeout,))
        self._thread.start()

    def _watch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for i, peer in enumerate(self._peers):
                peer.sock.setblocking(False)
                sel.register(peer.sock, selectors.EVENT_READ, i)
            while len(self._closed) < len(self._peers) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._closed[key.data] = time.monotonic() - self._peers[key.data].opened
                        sel.unregister(key.fileobj)

    def durations(self) -> list[float]:
        """Seconds from open to close, per peer; fails if one was not closed in time."""
        self._thread.join()
        for peer in self._peers:
            peer.close()
        assert len(self._closed) == len(self._peers), "the node left connections open"
        return [self._closed[i] for i in range(len(self._peers))]


# ------------------------------------------------------------------------ the node, observed


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    return values


@pytest.fixture
def hostile_node(node_factory) -> Iterator[NodeProcess]:
    node = node_factory({"scp": {
        "acse_timeout_s": TIMEOUT_S, "network_timeout_s": TIMEOUT_S, "max_pdu_bytes": MAX_PDU,
        "max_associations": TOTAL, "max_associations_per_peer": PER_PEER,
    }}).start()
    yield node


def steady_threads(pid: int) -> None:
    """Wait until the node's thread count has not changed for half a second."""
    last, since = proc_status(pid)["Threads"], time.monotonic()
    while time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = proc_status(pid)["Threads"]
        if now != last:
            last, since = now, time.monotonic()


def settle(pid: int, threads: int, timeout: float = 10.0) -> None:
    """Wait until the node runs no more threads than ``threads`` (its associations ended)."""
    deadline = time.monotonic() + timeout
    while proc_status(pid)["Threads"] > threads and time.monotonic() < deadline:
        time.sleep(0.05)


def no_traceback(node: NodeProcess) -> None:
    log = node.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


# ---------------------------------------------------------------------------------- the cases


def malformed_pdus_before_association(port: int) -> None:
    """Each gets an A-ABORT at once: nothing is allocated for what a header merely announces."""
    rq = associate_rq()
    cases = {
        "A-ASSOCIATE-RQ announcing 4 GiB": b"\x01\x00\xff\xff\xff\xff" + random.Random(SEED).randbytes(201),
        "A-ASSOCIATE-RQ over 64 KiB": pdu(0x01, bytes(70000)),
        "unknown PDU type": pdu(0x09, b"abcd"),
        "truncated A-ASSOCIATE-RQ": pdu(0x01, rq[6:60]),
        "A-ASSOCIATE-RQ with a bad item length": rq[:76] + b"\xff\xff" + rq[78:],
        "A-RELEASE-RQ of 10 bytes": pdu(0x05, bytes(10)),
        "P-DATA-TF announcing 4 GiB": b"\x04\x00\xff\xff\xff\xf0" + bytes(64),
    }
    for name, data in cases.items():
        peer = Peer(port, timeout=1.0)  # an A-ABORT, then the node closes: no waiting for either
        peer.send(data)
        assert peer.until_closed() == [ABORT, CLOSED], name
        peer.close()


def protocol_errors_after_association(port: int) -> None:
    """Inside an association: each gets an A-ABORT, or 0xC000 and the association carries on."""
    big = p_data(data_pdv(CT_CX, bytes(525_534)))  # 525,540 bytes against the announced 65,536
    aborted = {
        "P-DATA for presentation context 99": p_data(command_pdv(99, echo_rq(1))),
        "PDV length past the end of the PDU": pdu(0x04, struct.pack(">LBB", 500, CT_CX, 3) + bytes(20)),
        "truncated PDV item": pdu(0x04, b"\x00\x00\x00"),
        "PDV item of length 0": pdu(0x04, struct.pack(">LBB", 0, CT_CX, 3)),
        "data set fragment without a command": p_data(data_pdv(CT_CX, bytes(100))),
        "data set PDU over the announced maximum": big,
        "command set with an element past its end": p_data(command_pdv(CT_CX, struct.pack("<HHL", 0, 0x0100, 1000) + us(1))),
        "command set without a Message ID": p_data(command_pdv(CT_CX, command(element(0x0100, us(1))))),
        "C-FIND request, not served": p_data(command_pdv(CT_CX, command(
            element(0x0002, ui(CT)), element(0x0100, us(0x0020)), element(0x0110, us(1)), element(0x0800, us(0x0101))))),
        "C-ECHO request on the CT context": p_data(command_pdv(CT_CX, echo_rq(1, sop_class=CT))),
        "C-ECHO request with a data set": p_data(command_pdv(ECHO_CX, echo_rq(1, data_set=True))),
        "command fragments over 64 KiB": b"".join(p_data((CT_CX, 0x01, bytes(60000))) for _ in range(2)),
        "a second A-ASSOCIATE-RQ": associate_rq(),
        "A-ABORT of 1 KiB": pdu(0x07, bytes(1024)),
    }
    for name, data in aborted.items():
        peer = Peer(port)
        peer.associate()
        peer.send(data)
        answers = peer.until_closed()
        assert answers[0] == ABORT, (name, answers)
        peer.close()

    refused = {  # name: (command set, whether a data set follows)
        "non-ASCII Affected SOP Instance UID": (store_rq(1, sop_instance="1.2.3.\u00e9".encode()), True),
        "no Affected SOP Instance UID": (store_rq(2, sop_instance=None), True),
        "no Affected SOP Class UID": (store_rq(3, sop_class=None), True),
        "a UID of 80 digits": (store_rq(4, sop_instance=b"1." + b"2" * 78), True),
        "no data set": (store_rq(5, data_set=False), False),
    }
    for name, (cmd, has_data) in refused.items():
        peer = Peer(port)
        peer.associate()
        peer.send(p_data(command_pdv(CT_CX, cmd)))
        if has_data:  # the data set follows, in two fragments
            peer.send(p_data(data_pdv(CT_CX, bytes(3000), last=False)))
            peer.send(p_data(data_pdv(CT_CX, bytes(3000))))
        assert peer.answer() == "status 0xC000", name
        # the association carries on: a C-ECHO is answered, a release is confirmed
        peer.send(p_data(command_pdv(ECHO_CX, echo_rq(9))))
        assert peer.answer() == "status 0x0000", name
        peer.send(RELEASE_RQ)
        assert peer.until_closed() == [RELEASED, CLOSED], name
        peer.close()


def random_peers(port: int) -> list[str]:
    """Random bytes, random PDU bodies, mutated association requests, random P-DATA (seeded)."""
    rq = associate_rq()

    def one(i: int) -> str:
        rng = random.Random(SEED + i)
        # from several addresses, so that the per-address cap lets nearly all of them in
        peer = Peer(port, source=f"127.0.1.{i % 6 + 1}", timeout=2 * TIMEOUT_S + 3)
        try:
            kind = i % 4
            if kind == 0:  # random bytes
                peer.send(rng.randbytes(rng.randint(1, 400)))
            elif kind == 1:  # a well-formed header, a random body
                peer.send(pdu(rng.randint(1, 7), rng.randbytes(rng.randint(0, 600))))
            elif kind == 2:  # an association request with a few bytes changed
                data = bytearray(rq)
                for _ in range(rng.randint(1, 6)):
                    data[rng.randrange(6, len(data))] = rng.randrange(256)
                peer.send(bytes(data))
            else:  # an association, then P-DATA with random PDVs
                peer.send(rq)
                if peer.answer() != ACCEPT:
                    return "not associated"  # over the per-address cap for a moment
                pdvs = [(rng.choice((CT_CX, ECHO_CX)), rng.randrange(4), rng.randbytes(rng.randint(0, 300)))
                        for _ in range(rng.randint(1, 3))]
                peer.send(p_data(*pdvs))
            return peer.answer()
        except TimeoutError:
            return "no answer in time"
        finally:
            peer.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(one, range(240)))


# ----------------------------------------------------------------------------------- the test


def test_hostile_peers_get_aborts_or_errors_and_real_senders_get_through(hostile_node: NodeProcess, tmp_path: Path) -> None:
    node = hostile_node
    pid = node.proc.pid  # type: ignore[union-attr]
    files = ct_series(tmp_path / "ct", 4)
    node.storescu(files[0])  # warm up: the node has received once before it is measured
    steady_threads(pid)  # that association's threads have ended
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    start = proc_status(pid)
    started = time.monotonic()

    malformed_pdus_before_association(node.port)
    protocol_errors_after_association(node.port)
    answers = random_peers(node.port)
    assert "no answer in time" not in answers
    assert set(answers) <= {ABORT, CLOSED, REJECT, ACCEPT, "status 0xC000", "status 0x0000", "not associated"}, set(answers)
    assert answers.count(ABORT) > 200  # the fuzz did reach the node's parsers

    # stalled half-way: 3 bytes of a header, half an association request, a P-DATA header before
    # the association, half a data set PDU inside one; meanwhile real senders get through
    settle(pid, start["Threads"])
    stalled = [Peer(node.port) for _ in range(4)]
    stalled[3].associate()
    for peer, data in zip(stalled, (b"\x01\x00\x00", associate_rq()[:100],
                                     p_data(data_pdv(CT_CX, bytes(1000)))[:7], b""), strict=True):
        peer.send(data)
    stalled[3].send(p_data(command_pdv(CT_CX, store_rq(1, sop_instance=b"1.2.3.99"))))
    stalled[3].send(p_data(data_pdv(CT_CX, bytes(40000)))[:20000])
    for peer in stalled:
        peer.opened = time.monotonic()
    watch = CloseWatch(stalled, TIMEOUT_S + 5)
    time.sleep(0.3)
    assert node.echo().returncode == 0
    node.storescu(files[1])
    for seconds in watch.durations():
        assert TIMEOUT_S - 0.5 < seconds < TIMEOUT_S + 2

    # 50 idle connections from one address: 8 are let in (and dropped after the ACSE timeout),
    # the rest are closed at once; the real sender on another address is not held up
    settle(pid, start["Threads"])
    idle = [Peer(node.port) for _ in range(50)]
    watch = CloseWatch(idle, TIMEOUT_S + 5)
    time.sleep(0.3)
    assert node.echo().returncode == 0
    node.storescu(files[2])
    seconds = watch.durations()
    assert sum(t < 0.5 for t in seconds) == 50 - PER_PEER, seconds
    assert sum(TIMEOUT_S - 0.5 < t < TIMEOUT_S + 2 for t in seconds) == PER_PEER, seconds

    # all associations: 30 idle from five addresses against the cap of 24; the rest are closed
    # at once, and that is logged once
    settle(pid, start["Threads"])
    many = [Peer(node.port, source=f"127.0.0.{2 + i % 5}") for i in range(30)]
    seconds = CloseWatch(many, TIMEOUT_S + 5).durations()
    assert sum(t < 0.5 for t in seconds) == 30 - TOTAL, seconds
    # refusals are logged at most once a minute per address (and for the cap on all)
    minutes = 1 + int((time.monotonic() - started) // 60)
    assert 1 <= node.log().count(f"refusing connections from {HOSTILE}:") <= minutes
    assert 1 <= node.log().count("(scp.max_associations)") <= minutes

    # afterwards: C-ECHO and a valid store at the first try, the ledger exact, nothing left over
    assert node.echo().returncode == 0
    node.storescu(files[3])
    elapsed = time.monotonic() - started
    (study,) = node.status()
    assert study["instances"] == 4
    assert len(list((node.var_dir / "spool").rglob("*.dcm"))) == 4
    assert list((node.var_dir / "incoming").iterdir()) == []
    assert node.quarantine() == []
    settle(pid, start["Threads"])
    end = proc_status(pid)
    assert end["Threads"] <= start["Threads"], (start, end)  # no association thread left behind
    assert end["VmHWM"] - start["VmRSS"] < 50 * 1024, (start, end)  # kB
    no_traceback(node)
    assert "was missed by" not in node.log()  # the pipeline's timers kept time
    assert node.alive()
    assert elapsed < 60


def test_silent_peers_do_not_stall_tls_handshakes(node_factory, pki: dict[str, Path]) -> None:  # noqa: F811
    """A TLS handshake runs on the connection's own thread: silent peers hold up no one."""
    node = node_factory({"scp": {"acse_timeout_s": TIMEOUT_S, "network_timeout_s": TIMEOUT_S, "tls": {
        "enabled": True, "certificate": str(pki["node_cert"]), "private_key": str(pki["node_key"]),
        "ca_certificates": str(pki["ca"]), "require_client_certificate": True}}})
    node.start(wait=False)
    _wait_tls_ready(node, pki)
    silent = [Peer(node.port) for _ in range(4)]  # TCP connected, no ClientHello
    garbage = Peer(node.port)
    garbage.send(b"\x16\x03\x01\x00\x05hello" * 3)
    watch = CloseWatch([*silent, garbage], TIMEOUT_S + 5)
    time.sleep(0.3)
    stored = _tls_store(node, pki, "modality", sample_file("CT_small.dcm"))  # at the first try
    assert stored.returncode == 0, stored.stderr
    seconds = watch.durations()
    assert all(TIMEOUT_S - 0.5 < t < TIMEOUT_S + 2 for t in seconds[:4]), seconds
    assert seconds[4] < 1.0, seconds
    assert len(node.status()) == 1
    assert node.log().count("TLS handshake with 127.0.0.2 failed") == 1  # once a minute per address
    no_traceback(node)
