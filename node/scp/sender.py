"""A C-STORE SCU: send a batch of instances to one destination over one association.

Items are data sets in memory (``pydicom.Dataset``) or DICOM Part 10 files (``pathlib.Path``).
Each item gets an :class:`InstanceOutcome` that says whether it was delivered, delivered with a
warning, or failed for a reason worth retrying (``transient``) or not (``permanent``). A file that
is not readable DICOM is a permanent outcome, not an exception. A destination that cannot be
associated with raises :class:`DestinationUnavailable` (transient) or
:class:`DestinationRejected` (permanent).

Files are sent as they are on disk. Only their File Meta Information is read; for each SOP class
and transfer syntax found, a presentation context with exactly that transfer syntax is proposed
(:func:`build_contexts`), and the bytes after the meta group go out unchanged in that context. If
the peer accepted no such context, the file is decoded and sent like a data set (pynetdicom
converts between uncompressed transfer syntaxes). Data sets are encoded once, in the accepted
context's transfer syntax.

The association is negotiated, released and aborted by pynetdicom, from here. The C-STORE requests
and their responses are not left to it, because its way cost far more than the peer does: on the
300-instance CT benchmark (bench/send.py, bench/README.md) its ``send_c_store`` reached about a
third of dcmtk storescu's rate. This module is the public API and the one orchestrator; the steps:

* ``node.scp.store_items``: each item made ready to send (:class:`Prepared`), and its outcome;
* ``node.scp.file_meta``: a Part 10 file's File Meta Information, read by hand;
* ``node.scp._store_wire``: the C-STORE-RQ command set, P-DATA-TF framing, simple responses;
* ``node.scp._store_batch``: the requests of one batch, with pynetdicom's reactor paused.

pynetdicom never sets TCP_NODELAY on its sockets; with Nagle's algorithm on, pynetdicom's own small
PDUs waited for delayed ACKs and its bulk C-STORE ran about three times slower. The
``EVT_CONN_OPEN`` handler sets it on the association's socket as soon as it is connected (before
the A-ASSOCIATE-RQ is written); with whole messages written at once it no longer changes the
benchmark, but costs nothing. The same handler lowers the DUL reactor's idle sleep, the latency
with which a response is picked up, as the SCP does (see ``node.scp._fastpath``).

Messages and details carry only AE titles, host, port, status codes, SOP class names and reasons:
never patient data (and no file names, which may carry some).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from node.core.errors import PermanentError, TransientError
from node.scp._fastpath import DUL_IDLE_SLEEP_S
from node.scp._store_batch import Batch
from node.scp._store_wire import StoreResponse, parse_store_response, store_command
from node.scp.file_meta import NotPart10, read_file_meta
from node.scp.store_items import (
    InstanceOutcome,
    Item,
    OutcomeCallback,
    Prepared,
    Result,
    classify_status,
    prepare,
)

__all__ = [
    "MAX_CONTEXTS", "TCP_NODELAY", "Destination", "DestinationRejected", "DestinationUnavailable",
    "InstanceOutcome", "Item", "NotPart10", "OutcomeCallback", "Result", "StoreResponse",
    "build_contexts", "classify_status", "parse_store_response", "read_file_meta", "send",
    "store_command",
]

#: Set TCP_NODELAY on the association's socket (off only to measure its effect).
TCP_NODELAY = True

#: A-ASSOCIATE-RJ has at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS = 128

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DestinationUnavailable(TransientError):
    """The destination could not be reached, timed out, or rejected us transiently."""


class DestinationRejected(PermanentError):
    """The destination rejected the association permanently (e.g. AE title not recognised)."""


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "DICOM_NODE"
    tls: ssl.SSLContext | None = None

    def describe(self) -> str:
        return (f"{self.name} ({self.calling_ae_title} -> {self.ae_title}@{self.host}:{self.port})")


def build_contexts(items: Sequence[Prepared]) -> list[Any]:
    """The presentation contexts to propose for ``items``.

    Per SOP class: one context for each transfer syntax its files are in (exactly that one, so
    the file can go out as it is) and data sets are in (if not uncompressed little endian), plus
    one offering Explicit and Implicit VR Little Endian.
    """
    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        if item.path is not None or item.tsyntax not in UNCOMPRESSED:
            pairs[(item.sop_class, item.tsyntax)] = None
        pairs[(item.sop_class, "")] = None
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentError(
            f"{len(pairs)} presentation contexts needed, at most {MAX_CONTEXTS}: split the batch"
        )
    return [
        build_context(sop_class, [tsyntax] if tsyntax else list(UNCOMPRESSED))
        for sop_class, tsyntax in pairs
    ]


# --- the association ------------------------------------------------------------------------

# Reasons of A-ASSOCIATE-RJ by (source, diagnostic), PS3.8 9.3.4.
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE provider)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def _on_conn_open(event: evt.Event) -> None:
    dul = event.assoc.dul
    raw = dul.socket.socket if dul.socket is not None else None
    if raw is not None and TCP_NODELAY:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dul._run_loop_delay = DUL_IDLE_SLEEP_S


def _association_error(assoc: Any, where: str, connected: bool) -> Exception:
    """The exception for an association that was not established."""
    if not connected:  # pynetdicom reports a refused connection as an aborted association
        return DestinationUnavailable(
            f"{where}: no connection (refused, unreachable or timed out)")
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        verdict, source, diagnostic = (
            (rj.result, rj.result_source, rj.diagnostic) if rj is not None else (None, 0, 0)
        )
        reason = _REJECT_REASONS.get((int(source or 0), int(diagnostic or 0)),
                                     f"source {source}, reason {diagnostic}")
        if verdict == 0x01:
            return DestinationRejected(f"{where}: association rejected permanently: {reason}")
        return DestinationUnavailable(f"{where}: association rejected transiently: {reason}")
    if assoc.is_aborted:
        return DestinationUnavailable(f"{where}: association aborted during negotiation")
    return DestinationUnavailable(f"{where}: association not established")


def send(
    destination: Destination,
    items: Sequence[Item],
    timeout_s: float = 30,
    *,
    on_outcome: OutcomeCallback | None = None,
) -> list[InstanceOutcome]:
    """Send ``items`` (data sets or Part 10 files) over one association; return one outcome
    per item, in order.

    ``on_outcome(index, outcome)``, if given, is called for each item in order as soon as its
    outcome is known (on this thread, between requests), so that a caller can record deliveries
    one by one and a crash mid-batch leaves at most the request in flight unrecorded. If it
    raises, the association is released and the exception propagates.

    Raises DestinationRejected or DestinationUnavailable when no association can be made
    (not when no item is readable: then nothing is sent and every outcome is permanent).
    """
    prepared = [prepare(item) for item in items]
    sendable = [p for p in prepared if isinstance(p, Prepared)]
    if not sendable:
        outcomes = [p for p in prepared if isinstance(p, InstanceOutcome)]
        for index, outcome in enumerate(outcomes):
            if on_outcome is not None:
                on_outcome(index, outcome)
        return outcomes
    ae = AE(ae_title=destination.calling_ae_title)
    ae.requested_contexts = build_contexts(sendable)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    tls_args = (destination.tls, destination.host) if destination.tls is not None else None
    connected = False

    def on_conn_open(event: evt.Event) -> None:
        nonlocal connected
        connected = True
        _on_conn_open(event)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)],
    )
    where = destination.describe()
    if not assoc.is_established:
        raise _association_error(assoc, where, connected)
    batch = Batch(assoc, where, timeout_s)
    batch.pause_reactor()
    try:
        return batch.run(prepared, on_outcome)
    finally:
        batch.resume_reactor()
        if assoc.is_established:
            assoc.release()
