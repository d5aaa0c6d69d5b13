"""C-STORE on the wire: the request's command set, its P-DATA-TF framing, and simple responses.

pynetdicom 3.0's own path for these cost far more than the peer does (see ``node.scp.sender``):

* Each request's command set is a pydicom ``Dataset``, encoded twice (once for its group length).
  Here :func:`store_command` packs its seven elements with ``struct`` (``node.scp._dimse_wire``,
  shared with the receive path).
* Every P-DATA-TF PDU (16 KiB with dcmtk's and Orthanc's default maximum) is queued to the DUL
  thread, which sends one per turn of its loop. Here :class:`Wire` frames the command and the data
  set into PDUs of the peer's maximum length in one reused buffer (a file is read straight into it,
  per 4 MiB) and writes it with one ``sendall`` from the calling thread. Writes to the socket are
  serialised with the DUL thread's reads and sends by a lock.
* Each response is decoded into a pydicom ``Dataset`` and then a primitive on the DUL thread, about
  0.6 ms a response on the project's machines. Here a response that is one whole command fragment
  is read by :func:`parse_store_response` (``node.scp._store_batch`` hands it over; anything else
  still goes to pynetdicom).

:class:`Wire` uses pynetdicom internals (listed in ``node.scp._pynetdicom``), pinned to 3.0.x
in pyproject.toml and covered by tests/scp/test_sender.py against dcmtk and Orthanc. pynetdicom's
``EVT_PDU_SENT`` and ``EVT_DATA_SENT`` do not fire for what is written here.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from node.scp import _dimse_wire as dw

#: Data set bytes framed and written per ``sendall`` (bounds memory for large files).
WRITE_BLOCK = 4 * 1024 * 1024


# --- the request's command set ----------------------------------------------------------------


def store_command(message_id: int, sop_class: str, sop_instance: str, priority: int = 2) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian, a data set
    following (Command Data Set Type 0x0001)."""
    return dw.command_set(
        dw.element(dw.AFFECTED_SOP_CLASS, dw.uid_bytes(sop_class)),
        dw.element(dw.COMMAND_FIELD, dw.us(dw.C_STORE_RQ)),
        dw.element(dw.MESSAGE_ID, dw.us(message_id)),
        dw.element(dw.PRIORITY, dw.us(priority)),
        dw.element(dw.DATA_SET_TYPE, dw.us(dw.DATA_SET_FOLLOWS)),
        dw.element(dw.AFFECTED_SOP_INSTANCE, dw.uid_bytes(sop_instance)),
    )


# --- framing ------------------------------------------------------------------------------------

#: A P-DATA-TF PDU holding one PDV item: PDU type, reserved, PDU length; item length, context
#: ID, message control header (PS3.8 9.3.5 and E.2).
_PDU_HEADER = struct.Struct(">BBIIBB")

Fill = Callable[[memoryview], None]


def fill_from(data: bytes | bytearray | memoryview) -> Fill:
    """``data``, in the order asked for."""
    view, start = memoryview(data), 0

    def fill(dst: memoryview) -> None:
        nonlocal start
        dst[:] = view[start:start + len(dst)]
        start += len(dst)

    return fill


def fill_from_file(f: io.FileIO, size: int) -> Fill:
    """``size`` bytes from ``f``, then zeros (the padding of an odd length)."""
    left = size

    def fill(dst: memoryview) -> None:
        nonlocal left
        want, got = min(len(dst), left), 0
        while got < want:
            n = f.readinto(dst[got:want])
            if not n:
                raise EOFError("file shrank while being sent")
            got += n
        left -= want
        if want < len(dst):
            dst[want:] = bytes(len(dst) - want)

    return fill


class Wire:
    """Writes C-STORE requests onto an established association's socket, from this thread.

    A message goes out as P-DATA-TF PDUs of the peer's maximum length, one PDV each, framed in
    one reused buffer per WRITE_BLOCK bytes of data set and written with ``sendall``.
    """

    def __init__(self, assoc: Any, timeout_s: float) -> None:
        assoc_socket = assoc.dul.socket
        self.sock: socket.socket = assoc_socket.socket
        # The DUL thread reads (when select says there is data) and may send (an A-ABORT) while
        # this thread writes: one lock keeps them apart, which a TLS connection needs (one
        # OpenSSL connection must not be read and written from two threads at once).
        self.lock = threading.Lock()
        dul_send: Callable[[bytes], None] = assoc_socket.send
        dul_recv: Callable[[int], bytearray] = assoc_socket.recv

        def locked_send(data: bytes) -> None:
            with self.lock:
                dul_send(data)

        def locked_recv(nr_bytes: int) -> bytearray:
            with self.lock:
                return dul_recv(nr_bytes)

        assoc_socket.send = locked_send
        assoc_socket.recv = locked_recv
        # a peer that stops reading fails the write after timeout_s instead of hanging it
        self.sock.settimeout(timeout_s)
        max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        # PDU length = one PDV item: 4 (item length) + 1 (context ID) + 1 (control) + data
        # (even: dcmtk refuses odd fragments); 0 means no limit
        self.fragment = max(2, (max_pdu - 6) & ~1) if max_pdu else WRITE_BLOCK
        self.block = max(1, WRITE_BLOCK // self.fragment) * self.fragment
        self.buf = bytearray()

    def _frame(self, pos: int, context_id: int, control: int, size: int, last: bool,
               fill: Fill) -> int:
        """Frame ``size`` bytes from ``fill`` into the buffer at ``pos``; return the new end.
        ``last``: the final fragment of these is the last of the message (also if size 0)."""
        need = pos + size + _PDU_HEADER.size * (size // self.fragment + 1)
        if len(self.buf) < need:
            self.buf.extend(bytes(need - len(self.buf)))
        with memoryview(self.buf) as view:
            done = 0
            while True:
                n = min(self.fragment, size - done)
                end = done + n >= size
                flags = control | (0x02 if end and last else 0x00)
                _PDU_HEADER.pack_into(view, pos, 0x04, 0x00, n + 6, n + 2, context_id, flags)
                pos += _PDU_HEADER.size
                fill(view[pos:pos + n])
                pos += n
                done += n
                if end:
                    return pos

    def send(self, context_id: int, command: bytes, size: int, fill: Fill) -> None:
        """Send a command and a data set of ``size`` bytes that ``fill`` supplies."""
        pos = self._frame(0, context_id, 0x01, len(command), True, fill_from(command))
        left = size
        while True:
            n = min(self.block, left)
            left -= n
            pos = self._frame(pos, context_id, 0x00, n, left == 0, fill)
            with self.lock, memoryview(self.buf) as view:
                self.sock.sendall(view[:pos])
            if left == 0:
                return
            pos = 0


# --- the response -------------------------------------------------------------------------------


class StoreResponse(NamedTuple):
    """A C-STORE-RSP as read by :func:`parse_store_response`."""

    message_id: int
    status: int


def parse_store_response(command: bytes | memoryview) -> StoreResponse | None:
    """Read a whole C-STORE-RSP command set (Implicit VR Little Endian, PS3.7 9.3.1.2) with no
    data set following; None for anything else or anything malformed."""
    try:
        elements = dw.parse_command(command)
    except dw.BadCommand:
        return None
    fields = {tag: dw.us_value(elements, tag) for tag in
              (dw.COMMAND_FIELD, dw.MESSAGE_ID_RESPONDED_TO, dw.DATA_SET_TYPE, dw.STATUS)}
    if any(tag in elements and value is None for tag, value in fields.items()):
        return None  # one of them is not a 2-byte US
    message_id, status = fields[dw.MESSAGE_ID_RESPONDED_TO], fields[dw.STATUS]
    if (fields[dw.COMMAND_FIELD] != dw.C_STORE_RSP or fields[dw.DATA_SET_TYPE] != dw.NO_DATA_SET
            or message_id is None or status is None):
        return None
    return StoreResponse(message_id, status)
