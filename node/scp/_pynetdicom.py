"""Every pynetdicom internal the hand-written DIMSE paths rely on, named in this one place.

The lean receive path (``_inbound``, ``_fastpath``) and the sender's batches (``_store_batch``,
``_store_wire``) are measured to be several times faster than pynetdicom's own paths (see
bench/README.md), and they reach into pynetdicom 3.0's internals to be so. pyproject.toml pins
pynetdicom to 3.0.x; :func:`missing` says which of these a pynetdicom in use lacks
(``tests/scp/test_pynetdicom_internals.py`` runs it, and checks that no scp module uses an
internal not listed here). Upgrading pynetdicom means reading this table first.

Instance attributes (set in ``__init__``) cannot be checked on the class and are marked so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    owner: str  # "module:Class"
    name: str
    why: str
    used_in: tuple[str, ...]
    instance: bool = False  # set in __init__: not checkable on the class


_DUL = "pynetdicom.dul:DULServiceProvider"
_ASSOC = "pynetdicom.association:Association"
_SOCKET = "pynetdicom.transport:AssociationSocket"
_DIMSE = "pynetdicom.dimse:DIMSEServiceProvider"

INTERNALS: tuple[Internal, ...] = (
    Internal(_DUL, "_read_pdu_data", "replaced: every PDU is read by BulkRecv within its cap",
             ("_inbound", "_fastpath")),
    Internal(_DUL, "_recv_pdu", "the queue of PDUs the state machine reads", ("_inbound",),
             instance=True),
    Internal(_DUL, "_decode_pdu", "decodes every PDU but P-DATA, as the DUL would",
             ("_inbound",)),
    Internal(_DUL, "_idle_timer", "restarted on every PDU the lean path reads", ("_inbound",),
             instance=True),
    Internal(_DUL, "_run_loop_delay", "the DUL's poll sleep, replaced by a socket wait",
             ("_fastpath",), instance=True),
    Internal(_DUL, "_is_transport_event", "whether the DUL has socket work", ("_fastpath",)),
    Internal(_DUL, "_kill_thread", "the DUL thread's stop flag", ("_fastpath",),
             instance=True),
    Internal(_DUL, "event_queue", "state machine events put by the lean path",
             ("_inbound", "_fastpath"), instance=True),
    Internal(_DUL, "to_provider_queue", "primitives to send; replaced by a waking queue",
             ("_inbound", "_fastpath"), instance=True),
    Internal(_DUL, "to_user_queue", "replaced by a waking queue", ("_fastpath",),
             instance=True),
    Internal(_DUL, "state_machine", "the current state (Sta6: data transfer)",
             ("_inbound", "_fastpath"), instance=True),
    Internal(_DUL, "socket", "the association socket", ("_inbound", "_fastpath", "sender"),
             instance=True),
    Internal(_SOCKET, "socket", "the raw socket: reads, sendall, select",
             ("_inbound", "_fastpath", "_store_wire", "sender"), instance=True),
    Internal(_SOCKET, "recv", "replaced by BulkRecv", ("_fastpath", "_inbound"),
             instance=True),
    Internal(_ASSOC, "_accepted_cx", "accepted presentation contexts by ID", ("_inbound",),
             instance=True),
    Internal(_ASSOC, "_reactor_checkpoint", "pauses the association's reactor",
             ("_fastpath", "_store_batch"), instance=True),
    Internal(_ASSOC, "_is_paused", "whether the reactor is paused", ("_store_batch",),
             instance=True),
    Internal(_ASSOC, "_get_valid_context", "the context of a SOP class and syntax",
             ("_store_batch",)),
    Internal(_ASSOC, "run", "the association thread's loop", ("_fastpath",)),
    Internal(_DIMSE, "msg_queue", "replaced by a waking queue", ("_fastpath",),
             instance=True),
    Internal(_DIMSE, "receive_primitive", "hands a decoded P-DATA to DIMSE", ("_inbound",)),
    Internal(_DIMSE, "get_msg", "the next DIMSE message of a batch", ("_store_batch",)),
    Internal(_DIMSE, "message", "the message being received", ("_store_batch",),
             instance=True),
    Internal(_DIMSE, "maximum_pdu_size", "the peer's maximum PDU, for P-DATA framing",
             ("_store_wire",), instance=True),
    Internal("pynetdicom.transport:RequestHandler", "_create_association",
             "wraps the association the server creates", ("_fastpath",)),
    Internal("pynetdicom._config:", "STORE_RECV_CHUNKED_DATASET",
             "C-STOREs left to pynetdicom are written to a file", ("server",)),
)


def missing() -> list[str]:
    """The listed internals the installed pynetdicom lacks (instance attributes aside)."""
    out = []
    for item in INTERNALS:
        if item.instance:
            continue
        module, _, cls = item.owner.partition(":")
        owner: object = importlib.import_module(module)
        if cls:
            owner = getattr(owner, cls, None)
        if owner is None or not hasattr(owner, item.name):
            out.append(f"{item.owner}.{item.name}")
    return out
