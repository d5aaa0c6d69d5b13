"""pynetdicom's acceptor, bounded and tuned: PDU reads with caps and deadlines, the lean path.

What the node changes in how pynetdicom 3.0 accepts a connection, and why:

* **Bounded reads.** pynetdicom reads a PDU into a buffer of the length its header announces: one
  A-ASSOCIATE-RQ announcing 0xFFFFFFFF bytes made the node allocate 4 GiB. :class:`BulkRecv`
  refuses a PDU longer than its type allows (``dimse_wire.pdu_limit``: 64 KiB for
  A-ASSOCIATE-RQ/AC, the 4 bytes PS3.8 gives the others, the node's own announced maximum for
  P-DATA-TF), and grows the buffer only as data actually arrives, so a lying length costs
  nothing.
* **Deadlines.** The accepted socket had no timeout: a peer that sent 3 bytes of a PDU header
  and stopped held the association's threads forever (the DUL's idle and ARTIM timers are only
  checked between PDUs). Every PDU must now arrive whole within the association's deadline
  (``scp.network_timeout_s`` once associated, the shorter of it and ``scp.acse_timeout_s``
  before), and every send gets ``scp.network_timeout_s``.
* **TLS handshakes off the accept thread.** pynetdicom wraps an accepted socket (handshake
  included) on the one thread that accepts: a peer that connected and said nothing stopped the
  node from accepting anyone. The handshake now runs on the connection's own thread, with the
  ACSE timeout.
* **Bulk reads.** One ``recv_into`` fills as much of a PDU as the kernel has (pynetdicom reads
  4 KiB at a time and appends).
* **An idle DUL waits on its socket.** pynetdicom's DUL reactor polls: it sleeps 1 ms (0.2 ms
  as the node had tuned it for C-STORE latency) and looks again. 24 idle connections kept one of
  the two cores busy, and timers and real senders waited. Now an idle DUL blocks in ``select``
  on its socket and on an eventfd that the association's thread signals whenever it queues a
  primitive to send (:class:`_WakingQueue`), for at most :data:`DUL_IDLE_WAIT_S` (its timers'
  resolution). Data and answers are acted on at once; an idle connection costs 50 wake-ups a
  second instead of 5,000. The association's own reactor, which polled its queues every
  millisecond, likewise waits for work (:class:`_Checkpoint`).
* **The lean path.** Each association gets a :class:`node.scp._inbound.Inbound`, which reads every
  PDU (all of them go through :class:`BulkRecv`) and receives, files and answers C-STOREs on the
  DUL thread.
* **Every connection is counted** by the server's :class:`node.scp.admission.AdmissionGate` until
  its association thread ends; a partial data set left by it is removed then at the latest.

The pynetdicom internals used here are listed, with every other one, in ``node.scp._pynetdicom``;
they are pinned to 3.0.x in pyproject.toml and covered by the SCP tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler

from node.scp import _dimse_wire as wire
from node.scp._inbound import Inbound
from node.scp.admission import PEERS, AdmissionGate

log = logging.getLogger("node.scp")

#: The longest an idle DUL waits before it looks at its ARTIM and idle timers again.
DUL_IDLE_WAIT_S = 0.02
#: The sender's DUL (node.scp.sender) still polls, with this sleep between turns.
DUL_IDLE_SLEEP_S = 0.0002
#: Read at most this much of a PDU before the peer has shown that it sends what it announced.
FIRST_READ = 64 * 2**10


class BulkRecv:
    """The association socket's ``recv``: bounded, with a deadline, in few system calls.

    ``timeout`` (seconds, None for none) is what each send gets, and the default deadline of a
    read.
    """

    def __init__(self, raw: socket.socket, timeout: float | None) -> None:
        self._raw = raw
        self._timeout = timeout
        raw.settimeout(timeout)

    def read_pdu(self, max_pdu: int, within_s: float | None) -> tuple[int, bytearray] | None:
        """One whole PDU as (type, body), or None if the peer closed before sending any of it.

        Raises :class:`node.scp._dimse_wire.PduRefused` for a type or length the node does not read,
        ``TimeoutError`` when the PDU did not arrive whole within ``within_s`` seconds,
        ``ConnectionError`` when the connection closed inside it.
        """
        deadline = None if within_s is None else time.monotonic() + within_s
        try:
            head = self._read(6, deadline)
            if not head:
                return None
            if len(head) < 6:
                raise ConnectionError("connection closed inside a PDU header")
            pdu_type, length = wire.check_pdu_header(head, max_pdu)
            body = self._read(length, deadline)
            if len(body) != length:
                raise ConnectionError("connection closed inside a PDU")
            return pdu_type, body
        finally:
            self._raw.settimeout(self._timeout)

    def __call__(self, nr_bytes: int) -> bytearray:
        """pynetdicom's ``recv(nr_bytes)``: what arrived of ``nr_bytes`` before a close."""
        try:
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            return self._read(nr_bytes, deadline)
        finally:
            self._raw.settimeout(self._timeout)

    def _read(self, nr_bytes: int, deadline: float | None) -> bytearray:
        buf = bytearray(min(nr_bytes, FIRST_READ))
        got = self._fill(buf, 0, deadline)
        if got == len(buf) < nr_bytes:  # the peer does send: now take room for the rest
            whole = bytearray(nr_bytes)
            whole[:got] = buf
            buf = whole
            got = self._fill(buf, got, deadline)
        del buf[got:]
        return buf

    def _fill(self, buf: bytearray, got: int, deadline: float | None) -> int:
        with memoryview(buf) as view:
            while got < len(buf):
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the PDU did not arrive in time")
                    self._raw.settimeout(left)
                n = self._raw.recv_into(view[got:], len(buf) - got)
                if n == 0:  # connection closed
                    break
                got += n
        return got


class NodeRequestHandler(RequestHandler):
    """Sets up each accepted connection on its own thread (see the module docstring)."""

    def handle(self) -> None:
        host = str(self.client_address[0])
        gate: AdmissionGate | None = getattr(self.server, "gate", None)
        started = False
        try:
            if self._handshake(host):
                assoc = self._create_association()
                evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
                assoc.start()
                started = True
        finally:
            if not started:
                _close(self.request)
                if gate is not None:
                    gate.release(host)

    def _handshake(self, host: str) -> bool:
        sock = self.request
        if not isinstance(sock, ssl.SSLSocket):
            return True
        sock.settimeout(self.ae.acse_timeout)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            PEERS.warning(
                host, "tls", "TLS handshake with %s failed: %s", host,
                getattr(exc, "reason", None) or type(exc).__name__,
            )
            return False
        return True

    def _create_association(self) -> Any:
        assoc: Any = super()._create_association()
        assoc_socket = assoc.dul.socket
        raw = assoc_socket.socket
        assoc_socket.recv = BulkRecv(raw, self.ae.network_timeout)
        wake = _wait_on_socket(assoc.dul)
        _wait_for_work(assoc)
        handlers = self.server.store_handlers  # type: ignore[attr-defined]
        assert handlers is not None  # set before the server accepts
        inbound = Inbound(assoc, handlers, PEERS)
        inbound.attach()
        assoc.bind(evt.EVT_CONN_CLOSE, inbound.discard)
        _on_end(assoc, raw, wake, inbound, getattr(self.server, "gate", None),
                str(self.client_address[0]))
        return assoc


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after each put: whoever waits for its items stops waiting."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def _wait_on_socket(dul: Any) -> int:
    """Make the idle DUL wait on its socket and its eventfd instead of polling; the eventfd."""
    wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def signal() -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(wake, 1)

    dul.to_provider_queue = _WakingQueue(signal)
    dul._run_loop_delay = 0  # it still sleeps between turns: let it only yield the GIL
    is_transport_event = dul._is_transport_event

    def wait_then_look() -> bool:
        if dul.state_machine.current_state == "Sta1":  # connection over: about to be stopped
            time.sleep(0.001)
        elif dul.event_queue.empty() and not dul.to_provider_queue.queue:
            raw = dul.socket.socket if dul.socket is not None else None
            if not (isinstance(raw, ssl.SSLSocket) and raw.pending()):
                with contextlib.suppress(OSError, ValueError):
                    select.select([wake] if raw is None else [raw, wake], [], [], DUL_IDLE_WAIT_S)
            with contextlib.suppress(OSError):
                os.eventfd_read(wake)
        return bool(is_transport_event())

    dul._is_transport_event = wait_then_look
    return wake


class _Checkpoint:
    """The association reactor's ``_reactor_checkpoint``, which it waits on every turn.

    It keeps pynetdicom's meaning (cleared, it pauses the reactor) and adds a wait of up to
    :data:`DUL_IDLE_WAIT_S` for work: the reactor otherwise looks for DIMSE messages and ACSE
    indications every millisecond, which is what an idle association cost after the DUL stopped
    polling. Its DIMSE message queue and the DUL's queue to it end the wait on each put.
    """

    def __init__(self) -> None:
        self._gate = threading.Event()
        self._gate.set()
        self._work = threading.Event()

    def work(self) -> None:
        self._work.set()

    def set(self) -> None:
        self._gate.set()
        self._work.set()

    def clear(self) -> None:
        self._gate.clear()

    def is_set(self) -> bool:
        return self._gate.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self._gate.wait(timeout)
        self._work.wait(DUL_IDLE_WAIT_S)
        self._work.clear()
        return self._gate.wait(timeout)


def _wait_for_work(assoc: Any) -> None:
    """Make the association's reactor wait for work instead of polling every millisecond."""
    checkpoint = _Checkpoint()
    assoc._reactor_checkpoint = checkpoint
    assoc.dimse.msg_queue = _WakingQueue(checkpoint.work)
    assoc.dul.to_user_queue = _WakingQueue(checkpoint.work)


def _on_end(assoc: Any, raw: socket.socket, wake: int, inbound: Inbound,
            gate: AdmissionGate | None, host: str) -> None:
    """When the association's thread ends: drop any partial data set, close, free the slot."""
    run = assoc.run

    def run_then_release() -> None:
        try:
            run()
        finally:
            inbound.discard()
            _close(raw)
            os.close(wake)
            if gate is not None:
                gate.release(host)
            inbound.exchange.close()  # the association's audit records, once the peer is free

    assoc.run = run_then_release


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

