"""Every PDU an accepted association receives, read here; C-STOREs received on the DUL thread.

In pynetdicom 3.0 a received C-STORE crosses three threads and many objects: the DUL thread
decodes each P-DATA-TF PDU into a PDU object, a primitive, a state-machine event; the DIMSE layer
decodes the command set into a pydicom ``Dataset``, writes the File Meta with pydicom and each
fragment through a buffered file with a flush; the association thread finds the message by
polling a queue, runs the handler, encodes the response into a ``Dataset``, then a primitive, and
queues it back to the DUL thread, which encodes and sends it on its next turn (it sleeps between
turns). On the 300-instance CT benchmark (bench/ingest.py) that was about 3 ms an instance, more
than the node's own work (fsync, ledger).

:class:`Inbound` replaces the association's ``DULServiceProvider._read_pdu_data``, which the DUL
thread calls when the socket is readable, in every state of the association. Each PDU is read
whole by :meth:`node.scp._fastpath.BulkRecv.read_pdu`, within the PDU's length cap and the
association's deadline. Then:

* a P-DATA-TF PDU in the data-transfer state (Sta6) is parsed here: a C-STORE request's command
  set is read with :func:`node.scp._dimse_wire.parse_command`, its data set fragments are written
  straight into a new file in ``incoming/`` behind a hand-built File Meta (the same bytes
  pynetdicom writes; the kernel is asked to start writing each one back), the handler
  (:meth:`ScpHandlers.store`) runs, and the response goes out as one packed PDU in one
  ``sendall`` on this same thread, the only one that writes to the socket. While PDUs keep
  coming it reads on without going back to the DUL's sleep. A C-ECHO request is handed to
  pynetdicom, re-packed from the elements checked here. Anything else is refused: a C-STORE
  whose request lacks a usable Affected SOP Class or Instance UID, or has no data set, is
  answered Cannot Understand (0xC000) and its data set dropped; any other command, a PDV for a
  presentation context that was not accepted, a malformed command set or PDV, a data set where
  a command belongs, ends the association with an A-ABORT, logged in one line;
* every other PDU is decoded by pynetdicom's own decoder and given to its state machine, as its
  reader would; a PDU it cannot decode is an invalid PDU (A-ABORT), logged in one line, never a
  traceback.
* the peer's A-RELEASE-RQ is such a PDU; once pynetdicom answered it (EVT_RELEASED), the
  studies this association filed go to :meth:`ScpHandlers.released`: a whole-study sender's
  studies complete then, without their quiet period.

The pynetdicom internals used here are listed, with every other one, in ``node.scp._pynetdicom``;
they are pinned to 3.0.x in pyproject.toml and covered by tests/scp/test_scp.py,
test_bad_input.py, test_access.py (TLS), test_crash.py, test_inbound.py and
test_hostile_peers.py.

The guarantees are the handler's and do not change: the response is sent only after it returned,
i.e. after the file is fsynced, renamed and its ledger row committed. pynetdicom's EVT_C_STORE,
EVT_PDU_RECV, EVT_DATA_RECV and EVT_DIMSE_RECV do not fire for these requests.
"""

from __future__ import annotations

import logging
import select
import ssl
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO, cast

from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

from node.core import metrics
from node.core.spool import start_writeback
from node.scp import _dimse_wire as wire
from node.scp.admission import PeerLog
from node.scp.exchange import Exchange
from node.scp.handlers import Received, ScpHandlers
from node.scp.status import Status

log = logging.getLogger("node.scp")

NEXT_PDU_WAIT_S = 0.005  # wait this long on the socket for the next PDU before yielding
#: A command set is a few hundred bytes; more than this is not one.
MAX_COMMAND_SET = 64 * 2**10
VERIFICATION = "1.2.840.10008.1.1"
_PDV = struct.Struct(">LBB")
_DATA_TRANSFER = "Sta6"
_AWAITING_CLOSE = "Sta13"  # after an A-ABORT or A-RELEASE-RP was sent


class Inbound:
    """One association's PDU reader and C-STORE receive state, hooked into its DUL."""

    def __init__(self, assoc: Any, handlers: ScpHandlers, peers: PeerLog) -> None:
        self._assoc = assoc
        self._dul = assoc.dul
        self._handlers = handlers
        self._incoming: Path = handlers.spool.incoming
        self._peers = peers
        self._peer = str(assoc.requestor.address)
        self._command = bytearray()
        self._command_context = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._draining = False  # a refused request's data set is being read and dropped
        self._requested = False  # an A-ASSOCIATE-RQ went to pynetdicom: its thread has work
        self._request: tuple[int, int, str, str] = (0, 0, "", "")  # context, msg id, class, inst
        self.exchange = Exchange(assoc, handlers)  # its audit records, written when it ends

    def attach(self) -> None:
        self._dul._read_pdu_data = self.read_pdu_data
        self._assoc.bind(evt.EVT_RELEASED, self._released)

    def _released(self, _event: Any) -> None:
        """The peer released the association: pynetdicom fires EVT_RELEASED on an accepted
        association for the peer's A-RELEASE-RQ (answered), never for an abort or a dropped
        connection (the node itself never releases an association it accepted). Every C-STORE
        was answered before: they are answered on the DUL thread before it reads the next PDU."""
        self._handlers.released(str(self._assoc.requestor.ae_title), self.exchange.studies)

    def read_pdu_data(self) -> None:
        """Called by the DUL thread when the socket is readable."""
        dul = self._dul
        while True:
            if not dul.event_queue.empty():
                return  # let the state machine act on what came before (the connection's Evt5)
            state = dul.state_machine.current_state
            if state == _AWAITING_CLOSE:
                self._drain()
                return
            pdu = self._read_pdu(state)
            if pdu is None:
                return
            pdu_type, body = pdu
            if pdu_type != wire.P_DATA_TF or state != _DATA_TRANSFER:
                self._to_pynetdicom(pdu_type, body)
                return
            if not self._p_data(body):
                return
            dul._idle_timer.restart()
            if dul.to_provider_queue.queue or not _readable(dul.socket.socket, NEXT_PDU_WAIT_S):
                return

    def _read_pdu(self, state: str) -> tuple[int, bytearray] | None:
        """The next whole PDU; None once the association is to be aborted or is closed."""
        within_s = self._deadline_s(state)
        pdu: tuple[int, bytearray] | None
        try:
            pdu = self._dul.socket.recv.read_pdu(self._assoc.acceptor.maximum_length, within_s)
        except wire.PduRefused as exc:
            self._abort("protocol", str(exc))
            return None
        except TimeoutError:
            self._peers.warning(self._peer, "timeout", "association from %s dropped: a PDU did "
                                "not arrive whole within %g s", self._peer, within_s)
            pdu = None
        except OSError:
            pdu = None
        if pdu is None:
            self._closed()
        return pdu

    def _drain(self) -> None:
        """Drop what a peer sends after the association ended, without reading it as PDUs.

        After an A-ABORT for a PDU the node refused, the rest of the stream is not aligned on
        PDUs any more; pynetdicom would parse it and answer every piece with another A-ABORT.
        Once nothing more is waiting, pynetdicom closes the connection.
        """
        try:
            if self._dul.socket.socket.recv(65536):
                return
        except OSError:
            pass
        self._closed()

    def _deadline_s(self, state: str) -> float | None:
        """A PDU must arrive whole within the network timeout (and the ACSE timeout before or
        after the data-transfer state)."""
        timeouts = [self._assoc.network_timeout]
        if state != _DATA_TRANSFER:
            timeouts.append(self._assoc.acse_timeout)
        given = [t for t in timeouts if t is not None]
        return min(given) if given else None

    def _to_pynetdicom(self, pdu_type: int, body: bytearray) -> None:
        """Give a whole PDU to pynetdicom's state machine, as its own reader would."""
        if pdu_type == 0x01:
            problem = wire.association_rq_problem(body)
            if problem is not None:
                self._abort("protocol", f"A-ASSOCIATE-RQ unfit to negotiate: {problem}")
                return
        data = bytearray(struct.pack(">BBL", pdu_type, 0, len(body))) + body
        try:
            pdu, event = self._dul._decode_pdu(data)
        except Exception as exc:  # noqa: BLE001 - its decoders raise whatever the bytes provoke
            self._abort("protocol", f"malformed {wire.PDU_NAMES[pdu_type]} PDU "
                                    f"({type(exc).__name__})")
            return
        if pdu_type == 0x01 and not (
            pdu.application_context_name and pdu.presentation_context and pdu.user_information
        ):  # PS3.8 9.3.2: all three are required; pynetdicom would accept the request without
            self._abort("protocol", "A-ASSOCIATE-RQ without an application context, "
                                    "presentation contexts or user information")
            return
        self._dul.event_queue.put(event)
        self._dul._recv_pdu.put(pdu)
        if pdu_type == 0x01:
            self._requested = True
        else:  # in Sta2 only an A-ASSOCIATE-RQ leads on; pynetdicom aborts on anything else
            self._release_unassociated()

    def _release_unassociated(self) -> None:
        """Let the association thread end now if the connection ended before any request.

        pynetdicom's acceptor thread waits ``acse_timeout`` for the A-ASSOCIATE-RQ even when
        the connection it waits on is already aborted or closed, holding its threads and its
        place under the caps; a None on its queue is what it gets when that wait times out.
        """
        if not self._requested:
            self._requested = True
            self._dul.to_user_queue.put(None)

    def _abort(self, kind: str, why: str) -> None:
        self._peers.warning(self._peer, kind, "association from %s aborted: %s", self._peer, why)
        self.discard()
        self._dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
        self._release_unassociated()

    def _closed(self) -> None:
        self.discard()
        self._dul.event_queue.put("Evt17")  # transport connection closed
        self._release_unassociated()

    def _p_data(self, body: bytearray) -> bool:
        """Handle one P-DATA-TF PDU's PDVs; False once the association is to be aborted."""
        view = memoryview(body)
        offset, end = 0, len(body)
        accepted = self._assoc._accepted_cx
        try:
            while offset < end:
                if offset + 6 > end:
                    raise wire.BadCommand("truncated PDV item")
                item_length, context_id, header = _PDV.unpack_from(body, offset)
                stop = offset + 4 + item_length
                if item_length < 2 or stop > end:
                    raise wire.BadCommand("PDV item past the end of the PDU")
                if context_id not in accepted:
                    raise wire.BadCommand(f"P-DATA for presentation context {context_id}, "
                                          "which was not accepted")
                self._pdv(context_id, header, view[offset + 6 : stop])
                offset = stop
        except wire.BadCommand as exc:
            self._abort("protocol", str(exc))
            return False
        except OSError as exc:
            self._abort("io", f"{type(exc).__name__} while receiving or answering")
            return False
        return True

    def _pdv(self, context_id: int, header: int, data: memoryview) -> None:
        if header & 1:
            self._command_fragment(context_id, header, data)
        elif self._file is not None or self._draining:
            if context_id != self._request[0]:
                raise wire.BadCommand("data set fragment in another presentation context")
            if self._file is not None:
                self._file.write(data)
                start_writeback(self._file.fileno())
            if header & 2:
                self._finish()
        else:
            raise wire.BadCommand("data set fragment without a command")

    def _command_fragment(self, context_id: int, header: int, data: memoryview) -> None:
        if self._file is not None or self._draining:
            raise wire.BadCommand("command fragment inside a data set")
        if not self._command:
            self._command_context = context_id
        elif context_id != self._command_context:
            raise wire.BadCommand("command fragments in two presentation contexts")
        if len(self._command) + len(data) > MAX_COMMAND_SET:
            raise wire.BadCommand(f"command set longer than {MAX_COMMAND_SET} bytes")
        self._command += data
        if header & 2:
            command, self._command = self._command, bytearray()
            self._on_command(context_id, command)

    def _on_command(self, context_id: int, command: bytearray) -> None:
        elements = wire.parse_command(command)
        field = wire.us_value(elements, wire.COMMAND_FIELD)
        message_id = wire.us_value(elements, wire.MESSAGE_ID)
        data_set_type = wire.us_value(elements, wire.DATA_SET_TYPE)
        if field is None or message_id is None or data_set_type is None:
            raise wire.BadCommand("command set without Command Field, Message ID or "
                                  "Command Data Set Type")
        has_data = data_set_type != wire.NO_DATA_SET
        if field == wire.C_ECHO_RQ:
            self._echo(context_id, message_id, elements, has_data)
            return
        if field != wire.C_STORE_RQ:
            raise wire.BadCommand(f"DIMSE command 0x{field:04X}, which this node does not serve")
        sop_class = wire.request_uid(elements, wire.AFFECTED_SOP_CLASS)
        sop_instance = wire.request_uid(elements, wire.AFFECTED_SOP_INSTANCE)
        self._request = (context_id, message_id, sop_class or "", sop_instance or "")
        if not has_data or sop_class is None or sop_instance is None:
            self._refuse(has_data, "it has no data set" if not has_data
                         else "its Affected SOP Class or Instance UID is missing or not a UID")
            return
        self._path = self._incoming / f"{uuid.uuid4().hex}.dcm"
        self._file = open(self._path, "xb")  # noqa: SIM115 - closed in _finish or discard
        self._file.write(wire.file_meta(
            sop_class, sop_instance, str(self._assoc._accepted_cx[context_id].transfer_syntax[0])
        ))

    def _refuse(self, has_data: bool, problem: str) -> None:
        """Answer a C-STORE request that cannot be filed with Cannot Understand (PS3.4 B.2.3),
        after reading and dropping its data set, if it has one."""
        self._peers.warning(self._peer, "request",
                            "C-STORE request from %s refused (Cannot Understand): %s",
                            self._peer, problem)
        metrics.instance_rejected(metrics.Rejection.BAD_REQUEST)
        self._draining = has_data
        if not has_data:
            self._respond(Status.CANNOT_UNDERSTAND)

    def _echo(self, context_id: int, message_id: int, elements: dict[int, bytes],
              has_data: bool) -> None:
        """Hand a well-formed C-ECHO request to pynetdicom (it answers it)."""
        sop_class = wire.request_uid(elements, wire.AFFECTED_SOP_CLASS)
        context = self._assoc._accepted_cx[context_id]
        if has_data or sop_class != VERIFICATION or context.abstract_syntax != VERIFICATION:
            raise wire.BadCommand("C-ECHO request with a data set or not for Verification")
        command = wire.command_set(
            wire.element(wire.AFFECTED_SOP_CLASS, wire.uid_bytes(VERIFICATION)),
            wire.element(wire.COMMAND_FIELD, wire.us(wire.C_ECHO_RQ)),
            wire.element(wire.MESSAGE_ID, wire.us(message_id)),
            wire.element(wire.DATA_SET_TYPE, wire.us(wire.NO_DATA_SET)),
        )
        primitive = P_DATA()
        # pynetdicom's setter wants [ID, PDV] lists, its annotation says tuples
        cast(Any, primitive).presentation_data_value_list = [[context_id, b"\x03" + command]]
        self._assoc.dimse.receive_primitive(primitive)

    def _finish(self) -> None:
        if self._draining:
            self._draining = False
            self._respond(Status.CANNOT_UNDERSTAND)
            return
        assert self._file is not None and self._path is not None
        self._file.close()
        path, self._file, self._path = self._path, None, None
        context_id, _, sop_class, sop_instance = self._request
        requestor = self._assoc.requestor
        status = self._handlers.store(Received(
            path=path, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
            transfer_syntax=str(self._assoc._accepted_cx[context_id].transfer_syntax[0]),
            calling=str(requestor.ae_title).strip(), peer=self._peer,
            on_stored=self.exchange.stored,
        ))
        path.unlink(missing_ok=True)  # not placed (refused, duplicate): pynetdicom deletes it too
        self._respond(status)

    def _respond(self, status: int) -> None:
        context_id, message_id, sop_class, sop_instance = self._request
        self._dul.socket.socket.sendall(
            wire.store_response_pdu(context_id, message_id, sop_class, sop_instance, status)
        )

    def discard(self, *_args: Any) -> None:
        """Drop a data set whose reception ended early: it was never acknowledged."""
        file, path, self._file, self._path = self._file, self._path, None, None
        self._draining = False
        self._command = bytearray()
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
