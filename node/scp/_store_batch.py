"""The C-STORE requests of one send() over one established association, and their responses.

``node.scp.sender`` opens and closes the association (through pynetdicom); the requests are
written by ``node.scp._store_wire``, and :class:`Batch` matches each to its response.
pynetdicom's ``send_c_store`` pauses and resumes the association's reactor around every request,
and the resumed reactor can take the next response off the DIMSE queue before ``send_c_store``
does, which then waits for the DIMSE timeout and reports no response (seen with the previous
sender in the benchmark, bench/send.py). Here the reactor is paused once for the whole batch, and
non-blocking reads of the DIMSE queue (the reactor's) get nothing, so a response only ever goes to
the request waiting for it. On the DUL thread, a response that is one whole command fragment is
read by ``store_wire.parse_store_response`` rather than decoded into a pydicom ``Dataset`` and a
primitive (about 0.6 ms a response); anything else still goes to pynetdicom.

A file goes out as it is, in the context accepted for its own transfer syntax; if there is none,
it is decoded and sent like a data set, which is encoded once in the accepted context's transfer
syntax (pynetdicom converts between uncompressed transfer syntaxes).

These use pynetdicom internals (listed in ``node.scp._pynetdicom``), pinned to 3.0.x in
pyproject.toml and covered by tests/scp/test_sender.py against dcmtk and Orthanc. pynetdicom's
``EVT_DIMSE_SENT`` and ``EVT_DIMSE_RECV`` do not fire for requests
and responses handled here (the sender binds none).

Details carry only AE titles, host, port, status codes, SOP class names and reasons: never
patient data (and no file names, which may carry some).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from node.scp._store_wire import (
    StoreResponse,
    Wire,
    fill_from,
    fill_from_file,
    parse_store_response,
    store_command,
)
from node.scp.store_items import (
    InstanceOutcome,
    OutcomeCallback,
    Prepared,
    classify_status,
    prepare_file,
)


def _sop_class_name(uid: str) -> str:
    return UID(uid).name or uid


class _AssociationLost(Exception):
    """The association cannot carry another request (no response, or a write failed)."""

    def __init__(self, outcome: InstanceOutcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class Batch:
    """The requests of one send() over one association."""

    def __init__(self, assoc: Any, where: str, timeout_s: float) -> None:
        self.assoc = assoc
        self.where = where
        self.wire = Wire(assoc, timeout_s)
        self.message_id = 0
        dimse = assoc.dimse
        dimse_get = dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            # the reactor polls without blocking; responses are for the request waiting here
            return dimse_get(block=True) if block else (None, None)

        dimse.get_msg = get_msg
        dimse_receive = dimse.receive_primitive

        def receive_primitive(primitive: Any) -> None:
            # on the DUL thread: a response that is one whole command fragment is read here;
            # pynetdicom decodes it into a pydicom Dataset first (about 0.6 ms a response)
            pdvs = primitive.presentation_data_value_list
            if dimse.message is None and len(pdvs) == 1 and pdvs[0][1][:1] == b"\x03":
                rsp = parse_store_response(memoryview(pdvs[0][1])[1:])
                if rsp is not None:
                    dimse.msg_queue.put((pdvs[0][0], rsp))
                    return
            dimse_receive(primitive)

        dimse.receive_primitive = receive_primitive

    def pause_reactor(self) -> None:
        self.assoc._reactor_checkpoint.clear()
        while not self.assoc._is_paused:
            time.sleep(0.0001)

    def resume_reactor(self) -> None:
        self.assoc._reactor_checkpoint.set()

    def _no_context(self, item: Prepared) -> InstanceOutcome:
        return InstanceOutcome(
            item.sop_instance, None, "permanent",
            f"{self.where}: no accepted presentation context for "
            f"{_sop_class_name(item.sop_class)} in {UID(item.tsyntax).name}")

    def store(self, item: Prepared) -> InstanceOutcome:
        """Send one item and wait for its response. Raises _AssociationLost."""
        path = item.path
        if path is not None:
            try:
                context = self.assoc._get_valid_context(
                    item.sop_class, item.tsyntax, "scu", allow_conversion=False)
            except ValueError:
                # no context in the file's own transfer syntax: decode it, let pynetdicom convert
                decoded = prepare_file(path, meta=False, uid=item.sop_instance)
                if isinstance(decoded, InstanceOutcome):
                    return decoded
                item = decoded
            else:
                return self._store_file(item, path, context.context_id)
        return self._store_dataset(item)

    def _store_file(self, item: Prepared, path: Path, context_id: Any) -> InstanceOutcome:
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below; the open is guarded)
        except OSError as exc:
            return InstanceOutcome(item.sop_instance, None, "permanent",
                                   f"file not readable: {type(exc).__name__}")
        with f:
            size = os.fstat(f.fileno()).st_size - item.offset
            f.seek(item.offset)
            command = store_command(self._next_id(), item.sop_class, item.sop_instance)
            fill = fill_from_file(f, size)
            # a deflated data set of odd length gets a trailing zero byte (PS3.5 A.5, and as
            # pynetdicom's encode() does); any other odd length is invalid DICOM already
            padded = size + size % 2
            return self._exchange(
                item, lambda: self.wire.send(context_id, command, padded, fill))

    def _store_dataset(self, item: Prepared) -> InstanceOutcome:
        assert item.dataset is not None
        try:
            context = self.assoc._get_valid_context(item.sop_class, item.tsyntax, "scu")
        except ValueError:
            return self._no_context(item)
        tsyntax = context.transfer_syntax[0]
        data = encode(item.dataset, tsyntax.is_implicit_VR, tsyntax.is_little_endian,
                      tsyntax.is_deflated)
        if data is None:
            return InstanceOutcome(item.sop_instance, None, "permanent",
                                   f"data set cannot be encoded in {tsyntax.name}")
        command = store_command(self._next_id(), item.sop_class, item.sop_instance)
        context_id = int(context.context_id)
        fill = fill_from(data)
        return self._exchange(item, lambda: self.wire.send(context_id, command, len(data), fill))

    def _next_id(self) -> int:
        self.message_id = self.message_id % 0xFFFF + 1
        return self.message_id

    def _exchange(self, item: Prepared, write: Callable[[], None]) -> InstanceOutcome:
        uid = item.sop_instance
        try:
            write()
        except EOFError:
            raise _AssociationLost(InstanceOutcome(
                uid, None, "transient", "file changed while being sent")) from None
        except OSError as exc:
            raise _AssociationLost(InstanceOutcome(
                uid, None, "transient", f"association failed: {type(exc).__name__}")) from None
        _, rsp = self.assoc.dimse.get_msg(block=True)
        if rsp is None:
            raise _AssociationLost(InstanceOutcome(
                uid, None, "transient", "no response (timeout or association aborted)"))
        if isinstance(rsp, C_STORE) and rsp.is_valid_response:
            rsp = StoreResponse(int(cast(int, rsp.MessageIDBeingRespondedTo)),
                                int(cast(int, rsp.Status)))
        if not isinstance(rsp, StoreResponse) or rsp.message_id != self.message_id:
            raise _AssociationLost(InstanceOutcome(
                uid, None, "transient", "invalid response to C-STORE"))
        status = rsp.status
        result, detail = classify_status(status)
        return InstanceOutcome(uid, status, result, detail)

    def run(self, items: list[Prepared | InstanceOutcome],
            on_outcome: OutcomeCallback | None) -> list[InstanceOutcome]:
        outcomes: list[InstanceOutcome] = []
        lost = False
        for index, item in enumerate(items):
            if isinstance(item, InstanceOutcome):
                outcome = item
            elif lost or not self.assoc.is_established:
                outcome = InstanceOutcome(item.sop_instance, None, "transient",
                                          "not sent: association ended")
            else:
                try:
                    outcome = self.store(item)
                except _AssociationLost as exc:
                    outcome = exc.outcome
                    lost = True
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(index, outcome)
        if lost:
            self.assoc.abort()
        return outcomes
