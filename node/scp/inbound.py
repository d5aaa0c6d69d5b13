"""The lean C-STORE receive path: P-DATA read, filed and answered on the DUL thread.

In pynetdicom 3.0 a received C-STORE crosses three threads and many objects: the DUL thread
decodes each P-DATA-TF PDU into a PDU object, a primitive, a state-machine event; the DIMSE layer
decodes the command set into a pydicom ``Dataset``, writes the File Meta with pydicom and each
fragment through a buffered file with a flush; the association thread finds the message by
polling a queue, runs the handler, encodes the response into a ``Dataset``, then a primitive, and
queues it back to the DUL thread, which encodes and sends it on its next turn (it sleeps between
turns). On the 300-instance CT benchmark (bench/ingest.py) that was about 3 ms an instance, more
than the node's own work (fsync, ledger).

:class:`Inbound` takes the data-transfer phase's P-DATA-TF PDUs off that path. It replaces the
association's ``DULServiceProvider._read_pdu_data``, which the DUL thread calls when the socket
is readable. That and the other pynetdicom internals used here (the DUL's ``state_machine``,
``event_queue``, ``to_provider_queue``, ``_idle_timer`` and socket; ``Association._accepted_cx``;
``DIMSEServiceProvider.receive_primitive``) are pinned to 3.0.x in pyproject.toml and covered by
tests/test_scp.py, test_bad_input.py, test_access.py (TLS), test_crash.py and test_inbound.py.
In the data-transfer state (Sta6), for a P-DATA-TF PDU, it parses the PDVs by hand; a C-STORE
request's command set is read with :func:`node.scp.dimse_wire.parse_command`, its data set
fragments are written straight into a new file in ``incoming/`` behind a hand-built File Meta
(the same bytes pynetdicom writes; the kernel is asked to start writing each one back), the
handler (:meth:`ScpHandlers.store`) runs, and the response goes out as one packed PDU in one
``sendall`` on this same thread, the only one that writes to the socket. While PDUs keep coming
it reads on without going back to the DUL's sleep. Every other PDU, and every other DIMSE message
(C-ECHO, anything unexpected), goes to pynetdicom unchanged: the PDU header is pushed back into
the socket reader (:class:`node.scp.fastpath.BulkRecv`) and pynetdicom's own method reads it.

The guarantees are the handler's and do not change: the response is sent only after it returned,
i.e. after the file is fsynced, renamed and its ledger row committed. pynetdicom's EVT_C_STORE,
EVT_PDU_RECV, EVT_DATA_RECV and EVT_DIMSE_RECV do not fire for these requests (the node binds
none but EVT_C_STORE, kept as the fallback).
"""

from __future__ import annotations

import logging
import select
import ssl
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO, cast

from pynetdicom.pdu_primitives import P_DATA

from node.scp import dimse_wire as wire
from node.scp.handlers import Received, ScpHandlers
from node.spool import start_writeback

log = logging.getLogger("node.scp")

NEXT_PDU_WAIT_S = 0.005  # wait this long on the socket for the next PDU before yielding
# A P-DATA-TF PDU is read into one buffer of its announced length: refuse absurd lengths (peers
# keep to the node's maximum PDU length, 1 MiB by default) instead of allocating them.
LARGEST_PDU_READ = 64 * 2**20
_PDV = struct.Struct(">LBB")


class Inbound:
    """One association's C-STORE receive state, hooked into its DUL."""

    def __init__(self, assoc: Any, handlers: ScpHandlers, incoming: Path) -> None:
        self._assoc = assoc
        self._dul = assoc.dul
        self._handlers = handlers
        self._incoming = incoming
        self._command = bytearray()
        self._forwarding = False  # a message being passed to pynetdicom has a data set to come
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._request: tuple[int, int, str, str] = (0, 0, "", "")  # context, msg id, class, inst

    def attach(self) -> None:
        self._dul._read_pdu_data = self.read_pdu_data

    def read_pdu_data(self) -> None:
        """Called by the DUL thread when the socket is readable."""
        dul = self._dul
        sock = dul.socket
        while True:
            if dul.state_machine.current_state != "Sta6":
                type(dul)._read_pdu_data(dul)
                return
            try:
                head = sock.recv(6)
                if len(head) == 6 and head[0] == 0x04:
                    length = int.from_bytes(head[2:6], "big")
                    if length > LARGEST_PDU_READ:
                        log.warning("association aborted: P-DATA-TF PDU of %d bytes", length)
                        self.discard()
                        dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                        return
                    body = sock.recv(length)
                    if len(body) != length:
                        raise ConnectionError("connection closed inside a PDU")
                else:
                    sock.recv.push_back(head)
                    type(dul)._read_pdu_data(dul)
                    return
            except (OSError, TimeoutError):
                self.discard()
                dul.event_queue.put("Evt17")  # transport connection closed
                return
            if not self._p_data(body):
                return
            dul._idle_timer.restart()
            if dul.to_provider_queue.queue or not _readable(sock.socket, NEXT_PDU_WAIT_S):
                return

    def _p_data(self, body: bytearray) -> bool:
        """Handle one P-DATA-TF PDU's PDVs; False once the association is to be aborted."""
        view = memoryview(body)
        offset, end = 0, len(body)
        try:
            while offset < end:
                if offset + 6 > end:
                    raise wire.BadCommand("truncated PDV item")
                item_length, context_id, header = _PDV.unpack_from(body, offset)
                stop = offset + 4 + item_length
                if item_length < 2 or stop > end:
                    raise wire.BadCommand("PDV item past the end of the PDU")
                self._pdv(context_id, header, view[offset + 6 : stop])
                offset = stop
        except (wire.BadCommand, OSError) as exc:
            log.warning("association aborted: bad P-DATA from the peer (%s)", exc)
            self.discard()
            self._dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
            return False
        return True

    def _pdv(self, context_id: int, header: int, data: memoryview) -> None:
        if self._forwarding:
            self._forward(context_id, header, data)
            self._forwarding = not header & 2
        elif header & 1:  # command fragment
            if self._file is not None:
                raise wire.BadCommand("command fragment inside a data set")
            self._command += data
            if header & 2:
                command, self._command = self._command, bytearray()
                self._on_command(context_id, command)
        elif self._file is not None:
            if context_id != self._request[0]:
                raise wire.BadCommand("data set fragment in another presentation context")
            self._file.write(data)
            start_writeback(self._file.fileno())
            if header & 2:
                self._finish()
        else:
            raise wire.BadCommand("data set fragment without a command")

    def _on_command(self, context_id: int, command: bytearray) -> None:
        elements = wire.parse_command(command)
        has_data = wire.us_value(elements, wire.DATA_SET_TYPE) != wire.NO_DATA_SET
        context = self._assoc._accepted_cx.get(context_id)
        message_id = wire.us_value(elements, wire.MESSAGE_ID)
        if (
            wire.us_value(elements, wire.COMMAND_FIELD) != wire.C_STORE_RQ
            or not has_data or context is None or message_id is None
        ):
            self._forward(context_id, 0x03, memoryview(command))
            self._forwarding = has_data
            return
        sop_class = wire.ui_value(elements, wire.AFFECTED_SOP_CLASS)
        sop_instance = wire.ui_value(elements, wire.AFFECTED_SOP_INSTANCE)
        self._request = (context_id, message_id, sop_class, sop_instance)
        self._path = self._incoming / f"{uuid.uuid4().hex}.dcm"
        self._file = open(self._path, "xb")  # noqa: SIM115 - closed in _finish or discard
        self._file.write(
            wire.file_meta(sop_class, sop_instance, str(context.transfer_syntax[0]))
        )

    def _forward(self, context_id: int, header: int, data: memoryview) -> None:
        """Give one PDV to pynetdicom's DIMSE layer, as its DT-2 action would."""
        primitive = P_DATA()
        # pynetdicom's setter wants [ID, PDV] lists, its annotation says tuples
        cast(Any, primitive).presentation_data_value_list = [
            [context_id, bytes([header]) + bytes(data)]
        ]
        self._assoc.dimse.receive_primitive(primitive)

    def _finish(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        path, self._file, self._path = self._path, None, None
        context_id, message_id, sop_class, sop_instance = self._request
        requestor = self._assoc.requestor
        status = self._handlers.store(Received(
            path=path, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
            transfer_syntax=str(self._assoc._accepted_cx[context_id].transfer_syntax[0]),
            calling=str(requestor.ae_title).strip(), peer=str(requestor.address),
        ))
        path.unlink(missing_ok=True)  # not placed (refused, duplicate): pynetdicom deletes it too
        self._dul.socket.socket.sendall(
            wire.store_response_pdu(context_id, message_id, sop_class, sop_instance, status)
        )

    def discard(self, *_args: Any) -> None:
        """Drop a data set whose reception ended early: it was never acknowledged."""
        file, path, self._file, self._path = self._file, self._path, None, None
        if file is not None and path is not None:
            file.close()
            path.unlink(missing_ok=True)


def _readable(raw: Any, timeout: float) -> bool:
    if raw is None:
        return False
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return True
    try:
        return bool(select.select([raw], [], [], timeout)[0])
    except (OSError, ValueError):
        return True  # let the next read report the closed connection
