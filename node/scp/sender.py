"""A C-STORE SCU: send a batch of instances to one destination over one association.

Each instance gets an :class:`InstanceOutcome` that says whether it was delivered, delivered
with a warning, or failed for a reason worth retrying (``transient``) or not (``permanent``).
A destination that cannot be associated with raises :class:`DestinationUnavailable` (transient)
or :class:`DestinationRejected` (permanent).

pynetdicom never sets TCP_NODELAY on its sockets; with Nagle's algorithm on, the small DIMSE
command PDUs wait for delayed ACKs and bulk C-STORE runs about three times slower. The
``EVT_CONN_OPEN`` handler sets it on the association's socket as soon as it is connected (before
the A-ASSOCIATE-RQ is written). The same handler lowers the DUL reactor's idle sleep as the SCP
does (see ``node.scp.fastpath``).

Messages and details carry only AE titles, host, port, status codes, SOP class names and reasons:
never patient data.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from node.errors import PermanentError, TransientError
from node.scp.fastpath import DUL_IDLE_SLEEP_S, poll_faster

log = logging.getLogger("node.sender")

#: Set TCP_NODELAY on the association's socket (off only to measure its effect).
TCP_NODELAY = True

#: A-ASSOCIATE-RJ has at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS = 128

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})

Result = Literal["delivered", "warning", "transient", "permanent"]


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


@dataclass(frozen=True)
class InstanceOutcome:
    sop_instance_uid: str
    status: int | None
    result: Result
    detail: str


def classify_status(status: int) -> tuple[Result, str]:
    """Map a C-STORE response status onto a result and a short description."""
    if status == 0x0000:
        return "delivered", "success"
    if status in WARNING_STATUSES:
        return "warning", f"delivered with warning 0x{status:04X}"
    if status & 0xFF00 == 0xA700:
        return "transient", f"refused: out of resources (0x{status:04X})"
    if status & 0xFF00 == 0xA900:
        return "permanent", f"error: data set does not match SOP class (0x{status:04X})"
    if 0xC000 <= status <= 0xCFFF:
        return "permanent", f"error: cannot understand (0x{status:04X})"
    return "permanent", f"failed with status 0x{status:04X}"


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


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else False
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return UID(str(tsyntax))


def build_contexts(datasets: Sequence[pydicom.Dataset]) -> list[Any]:
    """One context per SOP class for its data sets' transfer syntax (if not uncompressed
    little endian) plus one per SOP class offering Explicit and Implicit VR Little Endian."""
    pairs: dict[tuple[str, str], None] = {}
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        tsyntax = str(_transfer_syntax(ds))
        if tsyntax not in UNCOMPRESSED:
            pairs[(sop_class, tsyntax)] = None
        pairs[(sop_class, "")] = None
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentError(
            f"{len(pairs)} presentation contexts needed, at most {MAX_CONTEXTS}: split the batch"
        )
    return [
        build_context(sop_class, [tsyntax] if tsyntax else list(UNCOMPRESSED))
        for sop_class, tsyntax in pairs
    ]


def _on_conn_open(event: evt.Event) -> None:
    dul = event.assoc.dul
    raw = dul.socket.socket if dul.socket is not None else None
    if raw is not None and TCP_NODELAY:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dul._run_loop_delay = DUL_IDLE_SLEEP_S


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = UID(str(ds.SOPClassUID))
    return uid.name or str(uid)


def _association_error(assoc: Any, where: str) -> Exception:
    """The exception for an association that was not established."""
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
    return DestinationUnavailable(
        f"{where}: no association (connection refused, unreachable or timed out)"
    )


def _store_one(assoc: Any, ds: pydicom.Dataset, where: str) -> InstanceOutcome:
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:
        return InstanceOutcome(uid, None, "transient", "not sent: association ended")
    try:
        status_ds = assoc.send_c_store(ds)
    except ValueError:
        # pynetdicom: no accepted presentation context for this SOP class / transfer syntax
        return InstanceOutcome(
            uid, None, "permanent",
            f"{where}: no accepted presentation context for {_sop_class_name(ds)} "
            f"in {_transfer_syntax(ds).name}")
    except (RuntimeError, OSError) as exc:
        return InstanceOutcome(uid, None, "transient", f"association failed: {type(exc).__name__}")
    status = status_ds.get("Status") if status_ds is not None else None
    if status is None:
        return InstanceOutcome(uid, None, "transient",
                               "no response (timeout or association aborted)")
    result, detail = classify_status(int(status))
    return InstanceOutcome(uid, int(status), result, detail)


def send(
    destination: Destination, datasets: Sequence[pydicom.Dataset], timeout_s: float = 30
) -> list[InstanceOutcome]:
    """Send ``datasets`` over one association; return one outcome per data set, in order.

    Raises DestinationRejected or DestinationUnavailable when no association can be made.
    """
    if not datasets:
        return []
    poll_faster()
    ae = AE(ae_title=destination.calling_ae_title)
    ae.requested_contexts = build_contexts(datasets)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    tls_args = (destination.tls, destination.host) if destination.tls is not None else None
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn_open)],
    )
    where = destination.describe()
    if not assoc.is_established:
        raise _association_error(assoc, where)
    try:
        return [_store_one(assoc, ds, where) for ds in datasets]
    finally:
        if assoc.is_established:
            assoc.release()
