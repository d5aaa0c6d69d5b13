"""A real MLLP server standing in for an EMR's interface engine (tests, demos).

Every message it receives is kept (``received``) and appended to an output file (one message a
block, its segments one a line, a blank line between messages); it answers each according to
its mode: ``AA``, ``AE`` or ``AR`` (a v2.5.1 ACK built with hl7apy, MSA-2 = the message's
MSH-10), ``silent`` (reads, never answers) or ``drop`` (closes the connection unanswered).

The other modes play an EMR that misbehaves, to try the node's delivery against it:
``garbage`` (answers bytes that are neither MLLP nor HL7), ``wrong-id`` (an AA whose MSA-2 is
another message's), ``cut`` (closes in the middle of its ACK), ``hangup`` (closes in the middle
of the incoming message, which it does not keep) and ``flood`` (answers a frame that never ends:
megabytes without an end block, until the sender gives up).

Its own reads are bounded too: a message over ``max_bytes`` or a connection idle (or inside a
message) for ``idle_timeout_s`` ends the connection.

    python -m node.hl7.listener --host 127.0.0.1 --port 2575 --out FILE --mode AA

runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, get_args

from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.core import Message  # type: ignore[import-untyped]

from node.hl7.mllp import MAX_MESSAGE_BYTES, START_BLOCK, Er7, FrameReader, MllpError, frame
from node.hl7.oru import VERSION, escape, fill, hl7_datetime

log = logging.getLogger(__name__)

Mode = Literal["AA", "AE", "AR", "silent", "drop", "garbage", "wrong-id", "cut", "hangup",
               "flood"]
MODES: tuple[str, ...] = get_args(Mode)
#: what mode ``garbage`` answers: no MLLP frame, no HL7
GARBAGE = b"\x00\xffHTTP/1.1 400 Bad Request\r\n\r\n\xfe"
#: how much mode ``flood`` sends at most (the sender should give up long before)
FLOOD_BYTES = 64 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0
#: MSA-3 and ERR of the negative modes; ERR-3 from HL7 table 0357
_NEGATIVE = {
    "AE": ("Application error (test listener in mode AE)", "207", "Application internal error"),
    "AR": ("Message rejected (test listener in mode AR)", "200", "Unsupported message type"),
}


def build_ack(message: str, code: str, *, created: datetime | None = None) -> str:
    """A v2.5.1 ACK of ``message`` with MSA-1 ``code`` (AA, AE or AR) and MSA-2 its MSH-10."""
    try:
        received: Er7 | None = Er7(message)
    except MllpError:
        received = None

    def header(field: int, component: int = 1) -> str:
        return received.value("MSH", field, component) if received is not None else ""

    ack = Message("ACK", version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    fill(ack.msh.msh_3, header(5))  # the receiver answers as the sender
    fill(ack.msh.msh_4, header(6))
    fill(ack.msh.msh_5, header(3))
    fill(ack.msh.msh_6, header(4))
    fill(ack.msh.msh_7, hl7_datetime(created or datetime.now().astimezone()))
    fill(ack.msh.msh_9, "ACK", header(9, 2), "ACK")
    ack.msh.msh_10 = uuid.uuid4().hex[:20].upper()
    fill(ack.msh.msh_11, header(11) or "P")
    ack.msa.msa_1 = code
    ack.msa.msa_2 = escape(header(10))
    if code in _NEGATIVE:
        text, error_code, error_text = _NEGATIVE[code]
        ack.msa.msa_3 = escape(text)
        err = ack.add_segment("ERR")
        fill(err.err_3, error_code, error_text, "HL70357")
        err.err_4 = "E"
        err.err_8 = escape(text)
    return str(ack.to_er7())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], listener: MllpListener) -> None:
        self.listener = listener
        super().__init__(address, _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.listener.serve(self.request, self.client_address)


class MllpListener:
    """A threaded MLLP server on ``host``:``port`` (0 picks a free port: see ``.port``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, mode: str = "AA",
                 out: str | Path | None = None, tls: ssl.SSLContext | None = None,
                 max_bytes: int = MAX_MESSAGE_BYTES,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        self.idle_timeout_s = idle_timeout_s
        self.out = Path(out) if out is not None else None
        self.tls = tls
        self.max_bytes = max_bytes
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server = _Server((host, port), self)
        self.host, self.port = str(self._server.server_address[0]), self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> MllpListener:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"mllp-listener-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            for conn in self._connections:
                _shut(conn)
        self._server.server_close()

    def __enter__(self) -> MllpListener:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """One connection: read messages, keep them, answer per mode, until it closes."""
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with self._lock:
                self._connections.add(conn)
            self._converse(conn)
        except (MllpError, OSError) as exc:
            log.warning("HL7 listener: connection from %s:%s ended (%s)", *peer[:2],
                        "idle" if isinstance(exc, TimeoutError) else exc.__class__.__name__)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _converse(self, conn: socket.socket) -> None:
        if self.mode == "hangup":
            conn.settimeout(self.idle_timeout_s)
            conn.recv(16)  # the first bytes of the message, then a close with the rest unread
            return
        reader = FrameReader(conn, max_bytes=self.max_bytes)
        while (data := reader.read(time.monotonic() + self.idle_timeout_s)) is not None:
            text = data.decode("utf-8", errors="replace")
            self._record(text)
            if self.mode == "drop":
                return
            if self.mode in ("AA", "AE", "AR"):
                conn.sendall(frame(build_ack(text, self.mode)))
            elif self.mode != "silent":
                self._misbehave(conn, text)
                return

    def _misbehave(self, conn: socket.socket, text: str) -> None:
        """Answer ``text`` as the modes that play a broken EMR do, then close."""
        if self.mode == "garbage":
            conn.sendall(GARBAGE)
        elif self.mode == "wrong-id":
            other = text.replace(Er7(text).value("MSH", 10), "SOMEONE-ELSES-MSG", 1)
            conn.sendall(frame(build_ack(other, "AA")))
        elif self.mode == "cut":
            ack = frame(build_ack(text, "AA"))
            conn.sendall(ack[:len(ack) // 2])
        elif self.mode == "flood":
            conn.settimeout(self.idle_timeout_s)
            conn.sendall(START_BLOCK + b"MSH|^~\\&|")
            chunk = b"X" * 65536
            for _ in range(FLOOD_BYTES // len(chunk)):
                conn.sendall(chunk)  # OSError once the sender has hung up

    def _record(self, text: str) -> None:
        with self._lock:
            self.received.append(text)
            if self.out is not None:
                block = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
                with self.out.open("a", encoding="utf-8") as f:
                    f.write(block + "\n\n")


def _shut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer: nothing left to end
        conn.shutdown(socket.SHUT_RDWR)


def server_tls_context(certificate: str, private_key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, private_key)
    return ctx


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hl7-listen", description="An MLLP listener that keeps and acknowledges HL7 v2 "
        "messages (a stand-in for an EMR interface engine).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2575, help="port (0 = any free port)")
    parser.add_argument("--out", type=Path, help="append every received message to this file")
    parser.add_argument("--mode", choices=MODES, default="AA", help="how to answer")
    parser.add_argument("--certificate", help="TLS: server certificate (PEM)")
    parser.add_argument("--private-key", help="TLS: its private key (PEM)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        tls = (server_tls_context(args.certificate, args.private_key or args.certificate)
               if args.certificate else None)
        listener = MllpListener(args.host, args.port, mode=args.mode, out=args.out, tls=tls)
    except (OSError, ssl.SSLError) as exc:
        print(f"hl7-listen: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with listener:
        print(f"HL7 MLLP listener on {listener.host}:{listener.port}"
              f"{' (TLS)' if tls else ''}, mode {args.mode}, "
              f"writing to {args.out if args.out else 'nowhere'}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
