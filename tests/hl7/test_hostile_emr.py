"""EMRs that misbehave, played by the real MLLP listener on real sockets (issue 11, item 9).

Each bad EMR (garbage, silence, an ACK for another message, a close in the middle of the ACK
or of the message, an ACK that never ends) gets a clear error on the outbox item, shown by
``dicom-node status --outbox``, a retry with back-off, and no traceback in the log; once an EMR
that behaves listens on the same port, the message is delivered, once. The MLLP readers on both
sides are bounded in memory and in time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hl7apy import parser as hl7apy_parser
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.validation import Validator

from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance, open_ledger
from node.core.outbox import ItemState, NewItem, Outbox
from node.core.settings import Settings
from node.core.settings_load import load_settings
from node.hl7.listener import MODES, MllpListener
from node.hl7.mllp import (
    MAX_ACK_BYTES,
    START_BLOCK,
    FrameReader,
    Hl7Unavailable,
    MllpError,
    send_message,
)
from node.hl7.oru import control_id
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.flow import DELIVERY, Flow
from tests.conftest import free_port, write_config
from tests.hl7.sample_oru import sample_oru

REPO = Path(__file__).resolve().parents[2]
PATIENT_ID, FAMILY_NAME = "PHI-MRN-0815", "Vertraulich"
TIMEOUT_S = 0.5
#: each bad EMR, and what the outbox item says about it (a pattern)
BAD_EMRS = {
    "garbage": re.escape("garbled answer (data outside an MLLP frame)"),
    "silent": re.escape(f"no answer within {TIMEOUT_S:g} s while waiting for the ACK"),
    "wrong-id": re.escape("the ACK is for another message (MSA-2 is not MSH-10)"),
    "cut": re.escape("garbled answer (the connection closed in the middle of a message)"),
    "hangup": "connection (reset|closed) by the peer|the connection closed without an ACK",
    "flood": re.escape(f"garbled answer (message longer than {MAX_ACK_BYTES} bytes)"),
}


MESSAGE = sample_oru(PATIENT_ID, FAMILY_NAME)


def test_the_message_used_here_is_strictly_valid() -> None:
    parsed = hl7apy_parser.parse_message(MESSAGE, validation_level=VALIDATION_LEVEL.STRICT,
                                         find_groups=True)
    assert Validator.validate(parsed)


# --------------------------------------------------------------------------------------------
# the client against each bad EMR


@pytest.mark.parametrize("mode", list(BAD_EMRS))
def test_each_bad_emr_is_a_clear_transient_error(mode: str) -> None:
    with MllpListener(mode=mode) as emr:
        started = time.monotonic()
        with pytest.raises(Hl7Unavailable) as info:
            send_message("127.0.0.1", emr.port, MESSAGE, timeout_s=TIMEOUT_S)
        elapsed = time.monotonic() - started
    text = str(info.value)
    assert text.startswith(f"HL7 destination 127.0.0.1:{emr.port}: ")
    assert re.search(BAD_EMRS[mode], text.split(": ", 1)[1]), text
    assert PATIENT_ID not in text and FAMILY_NAME not in text
    assert elapsed < TIMEOUT_S + 2


def test_an_endless_ack_costs_the_client_at_most_its_limit() -> None:
    """A peer that streams megabytes without an end block: the client stops at 1 MiB."""
    with MllpListener(mode="flood") as emr:
        tracemalloc.start()
        try:
            with pytest.raises(Hl7Unavailable, match="longer than"):
                send_message("127.0.0.1", emr.port, MESSAGE, timeout_s=5)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 3 * MAX_ACK_BYTES


def test_the_reader_drops_whitespace_and_stops_at_its_limit() -> None:
    """4 MiB of whitespace before a frame is not kept; a frame without end block ends at
    max_bytes; the reader's memory stays within its limit plus one read all along."""
    left, right = socket.socketpair()
    blank, endless = b"\n" * 65536, START_BLOCK + b"MSH|" + b"x" * (1024 * 1024)

    def send() -> None:
        with contextlib.suppress(OSError):  # the reader hangs up at its limit
            for _ in range(64):
                right.sendall(blank)
            right.sendall(endless)

    with left, right:
        sender = threading.Thread(target=send, daemon=True)
        tracemalloc.start()
        try:
            sender.start()
            with pytest.raises(MllpError, match="longer than 262144 bytes"):
                FrameReader(left, max_bytes=256 * 1024).read(time.monotonic() + 10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        left.close()
        sender.join(5)
    assert peak < 512 * 1024


def closed(sock: socket.socket) -> bool:
    """Whether the peer closes ``sock`` within 5 s (with unread data a close is a reset)."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_listener_drops_a_sender_that_streams_or_stalls() -> None:
    with MllpListener(mode="AA", max_bytes=64 * 1024, idle_timeout_s=0.5) as emr:
        with socket.create_connection(("127.0.0.1", emr.port)) as flood:
            flood.sendall(START_BLOCK + b"MSH|^~\\&|" + b"x" * (128 * 1024))
            assert closed(flood)  # by the listener at its limit
        with socket.create_connection(("127.0.0.1", emr.port)) as stalled:
            stalled.sendall(START_BLOCK + b"MSH|^~\\&|half a message")
            started = time.monotonic()
            assert closed(stalled)  # when it stayed quiet inside a message
            assert 0.3 < time.monotonic() - started < 3
        ack = send_message("127.0.0.1", emr.port, MESSAGE, timeout_s=5)  # still serving
        assert ack.code == "AA" and emr.received == [MESSAGE]


# --------------------------------------------------------------------------------------------
# through the outbox and the delivery worker


@dataclass
class Node:
    """The node's ledger, outbox and delivery worker in this process, on a real config file."""

    config: Path
    settings: Settings
    ledger: Ledger
    outbox: Outbox
    flow: Flow
    study_id: int

    def status_outbox(self) -> str:
        out = subprocess.run([sys.executable, "-m", "node.commands", "--config", str(self.config),
                              "status", "--outbox"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        return out.stdout

    def item(self) -> object:
        (item,) = self.outbox.items(self.study_id)
        return item

    def run_until_attempted(self, attempts: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.outbox.items(self.study_id)[0].attempts < attempts:
            assert time.monotonic() < deadline, "the delivery worker did not attempt in time"
            self.flow.run_waiting(DELIVERY)
            time.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    port = free_port()
    config = write_config(tmp_path / "node.toml", {
        "node": {"var_dir": str(tmp_path / "var")},
        "delivery": {"timeout_s": TIMEOUT_S, "retry_base_s": 0.2, "retry_cap_s": 0.2,
                     "max_attempts": 50,
                     "hl7": [{"name": "emr", "host": "127.0.0.1", "port": port}]},
    })
    settings = load_settings(config)
    ledger = open_ledger(settings, create=True)
    ledger.record_instance(ReceivedInstance(
        sop_instance_uid="2.25.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="2.25.2", series_instance_uid="2.25.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", matched_rules=(),
        size_bytes=1, calling_ae_title="CT1"), "a/b.dcm", lambda: None)
    study_id = ledger.studies()[0].id
    for state in (JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED):
        ledger.transition(study_id, state, reason="test")
    root = tmp_path / "var" / "outbox"
    (root / "job").mkdir(parents=True)
    (root / "job" / "oru-emr.hl7").write_bytes(MESSAGE.encode("utf-8"))
    outbox = Outbox(ledger.engine)
    item = NewItem("lung-ct", "hl7", "emr", control_id("job", "emr"), "oru", "job/oru-emr.hl7")
    ledger.transition(study_id, JobState.BUILT, reason="test",
                      also=lambda conn: outbox.add(conn, study_id, 1, [item]))
    yield Node(config, settings, ledger, outbox,
               Flow(ledger, settings, Deliverer(outbox, Peers(settings, root))),
               study_id)
    ledger.engine.dispose()


@pytest.mark.parametrize("mode", list(BAD_EMRS))
def test_a_bad_emr_leaves_a_clear_error_and_the_message_is_delivered_once_it_behaves(
        node: Node, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    port = node.settings.delivery.hl7[0].port
    caplog.set_level(logging.DEBUG)
    with MllpListener(port=port, mode=mode, idle_timeout_s=5) as bad:
        node.run_until_attempted(2)  # tried, backed off, tried again
        received_by_bad = list(bad.received)
    (item,) = node.outbox.items(node.study_id)
    assert (item.state, item.attempts) == (ItemState.PENDING, 2)
    assert item.next_attempt_at is not None and item.last_error is not None
    assert re.search(BAD_EMRS[mode], item.last_error), item.last_error
    assert f"127.0.0.1:{port}" in item.last_error
    assert PATIENT_ID not in item.last_error and FAMILY_NAME not in item.last_error
    assert node.ledger.study_by_id(node.study_id).state == JobState.DELIVERED  # not reported
    table = node.status_outbox()
    assert "PENDING" in table and item.last_error in table
    failed = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(failed) == 2  # one warning line per attempt, saying why
    assert all(r.levelno == logging.WARNING and r.getMessage().endswith(item.last_error)
               for r in failed)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert all(PATIENT_ID not in r.getMessage() for r in caplog.records)
    if mode != "hangup":  # the others read the whole message before misbehaving
        assert received_by_bad == [MESSAGE, MESSAGE]

    with MllpListener(port=port, mode="AA", idle_timeout_s=5) as good:
        node.run_until_attempted(3)
        for _ in range(5):  # more sweeps: nothing is sent again
            node.flow.run_waiting(DELIVERY)
    assert good.received == [MESSAGE]
    (item,) = node.outbox.items(node.study_id)
    assert (item.state, item.attempts, item.last_error) == (ItemState.DELIVERED, 3, None)
    assert node.ledger.study_by_id(node.study_id).state == JobState.DONE


def test_hl7_listen_offers_every_mode_of_the_listener() -> None:
    from node.commands import _parser

    for mode in MODES:
        assert _parser().parse_args(["hl7-listen", "--out", "x", "--mode", mode]).mode == mode
