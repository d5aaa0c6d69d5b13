"""The SCP server: one pynetdicom AE per receiving process, all on one port (SO_REUSEPORT).

The kernel spreads new associations over the receiving processes, so several associations are
received in parallel without sharing one interpreter lock. Every accepted socket gets
TCP_NODELAY: DIMSE answers are small writes that Nagle's algorithm would otherwise hold back.

The accepting thread does nothing that waits on a peer: a connection over the caps
(``scp.max_associations`` in all, ``scp.max_associations_per_peer`` from one address) is closed
at once (:class:`node.scp.admission.AdmissionGate`), and a TLS handshake runs on the
connection's own thread (:mod:`node.scp._fastpath`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import socket
import socketserver
import tempfile
import threading
import time
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.core.db import make_engine
from node.core.ledger import Ledger
from node.core.settings import Settings
from node.core.spool import Spool, open_spool
from node.core.timers import completion_doorbell
from node.scp._fastpath import NodeRequestHandler
from node.scp.admission import PEERS, AdmissionGate
from node.scp.handlers import ScpHandlers
from node.scp.tls import server_context

log = logging.getLogger("node.scp")


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, sharing its port with sibling processes.

    ``store_handlers`` (set by :func:`start_receiver`) is what :mod:`node.scp._inbound` files
    received C-STOREs with; ``gate`` counts connections against the caps.
    """

    store_handlers: ScpHandlers | None = None
    gate: AdmissionGate | None = None
    # socketserver listens with a backlog of 5: a burst of connections then fills the kernel's
    # accept queue and real senders' connections wait seconds for SYN-ACK retries.
    request_queue_size = socket.SOMAXCONN

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:  # the handshake runs on the connection's thread, not here
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection under the caps; socketserver closes it at once otherwise."""
        return self.gate is None or self.gate.admit(str(client_address[0]))


def configure_pynetdicom() -> None:
    # Stream each data set to a file in incoming/ instead of memory, and accept every storage
    # SOP class (standard, retired, private) in whatever transfer syntax it is proposed in.
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    for name, kind in (("pynetdicom.utils", _HandledDecodeErrors),
                       ("pynetdicom.association", _NetworkTimeoutLine)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


class _HandledDecodeErrors(logging.Filter):
    """Drop the traceback pynetdicom logs for bytes it cannot decode as ASCII.

    ``pynetdicom.utils.decode_bytes`` (AE titles, UIDs of an association request) logs the
    UnicodeError with its traceback, then raises ValueError, which :mod:`node.scp._inbound` turns
    into one line and an A-ABORT: the traceback says nothing more about the peer.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, UnicodeError) and record.funcName == "decode_bytes")


class _NetworkTimeoutLine(logging.Filter):
    """pynetdicom's "Network timeout reached", as one line per peer address a minute, naming it.

    pynetdicom logs it (at ERROR, without the peer) on the association's thread for every
    association it drops for silence; a peer holding many idle associations made many lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Network timeout reached":
            return True
        assoc = threading.current_thread()
        peer = str(getattr(getattr(assoc, "requestor", None), "address", "an unknown address"))
        PEERS.warning(peer, "idle", "association from %s dropped: nothing received for %g s "
                      "(scp.network_timeout_s)", peer, getattr(assoc, "network_timeout", 0))
        return False


def build_ae(settings: Settings) -> AE:
    scp = settings.scp
    ae = AE(ae_title=settings.node.ae_title)
    ae.add_supported_context(Verification)
    # The admission gate enforces scp.max_associations as connections are accepted; pynetdicom's
    # own count (threads alive) lags a closed connection by a moment, so it gets headroom.
    ae.maximum_associations = 2 * scp.max_associations
    ae.maximum_pdu_size = scp.max_pdu_bytes
    ae.acse_timeout = scp.acse_timeout_s
    ae.dimse_timeout = scp.dimse_timeout_s
    ae.network_timeout = scp.network_timeout_s
    return ae


class Receiver:
    """A running SCP in this process: its AE and server."""

    def __init__(self, ae: AE, server: NodeAssociationServer) -> None:
        self.ae = ae
        self.server = server

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let running associations finish for ``grace_s``, abort the rest.

        An association aborted here never got Success for its in-flight instance, so its
        sender sends that instance again.
        """
        # socketserver's shutdown(): pynetdicom's override also expects start_server()'s
        # bookkeeping, which make_server() does not do.
        socketserver.BaseServer.shutdown(self.server)
        self.server.server_close()
        deadline = time.monotonic() + grace_s
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()


def start_receiver(settings: Settings, ledger: Ledger, spool: Spool) -> Receiver:
    """Start serving in background threads of this process."""
    configure_pynetdicom()
    # pynetdicom writes each incoming data set with NamedTemporaryFile(): put those files on the
    # spool's file system so that placing them is a rename, not a copy.
    tempfile.tempdir = str(spool.incoming)
    handlers = ScpHandlers(settings=settings, spool=spool, ledger=ledger,
                           bell=completion_doorbell(settings.var_path))
    ae = build_ae(settings)
    ssl_context = server_context(settings.scp.tls) if settings.scp.tls.enabled else None
    server = ae.make_server(
        (settings.node.host, settings.node.port),
        ssl_context=ssl_context,
        evt_handlers=[
            (evt.EVT_REQUESTED, handlers.on_requested),
            (evt.EVT_C_STORE, handlers.on_store),
            *((e, handlers.on_association)
              for e in (evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_ABORTED)),
        ],
        server_class=NodeAssociationServer,
        request_handler=NodeRequestHandler,
    )
    assert isinstance(server, NodeAssociationServer)
    server.store_handlers = handlers
    server.gate = AdmissionGate(settings.scp.max_associations,
                                settings.scp.max_associations_per_peer)
    thread = threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True)
    thread.start()
    return Receiver(ae, server)


# ------------------------------------------------------------------ extra receiving processes


def spawn_receivers(settings: Settings, count: int) -> list[multiprocessing.process.BaseProcess]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    for i in range(count):
        proc = ctx.Process(target=_receiver_main, args=(settings,), name=f"receiver-{i + 1}")
        proc.start()
        procs.append(proc)
    return procs


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        log.warning("cannot tie this receiver's life to the main process (no prctl)")


def _receiver_main(settings: Settings) -> None:
    from node.core.logs import setup_logging

    _die_with_parent()
    setup_logging(settings.node.log_level)
    engine = make_engine(
        settings.database_url,
        synchronous=settings.ledger.sqlite_synchronous,
        busy_timeout_s=settings.ledger.busy_timeout_s,
    )
    ledger = Ledger(engine, late_arrival=settings.completion.late_arrival)
    spool = open_spool(settings)  # the same keys as the main process
    receiver = start_receiver(settings, ledger, spool)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    stop.wait()
    receiver.stop()
