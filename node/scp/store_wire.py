"""C-STORE on the wire: the request's command set, its P-DATA-TF framing, and simple responses.

pynetdicom 3.0's own path for these cost far more than the peer does (see ``node.scp.sender``):

* Each request's command set is a pydicom ``Dataset``, encoded twice (once for its group length).
  Here :func:`store_command` packs its seven elements with ``struct``.
* Every P-DATA-TF PDU (16 KiB with dcmtk's and Orthanc's default maximum) is queued to the DUL
  thread, which sends one per turn of its loop. Here :class:`Wire` frames the command and the data
  set into PDUs of the peer's maximum length in one reused buffer (a file is read straight into it,
  per 4 MiB) and writes it with one ``sendall`` from the calling thread. Writes to the socket are
  serialised with the DUL thread's reads and sends by a lock.
* Each response is decoded into a pydicom ``Dataset`` and then a primitive on the DUL thread, about
  0.6 ms a response on the project's machines. Here a response that is one whole command fragment
  is read by :func:`parse_store_response` (``node.scp.store_batch`` hands it over; anything else
  still goes to pynetdicom).

:class:`Wire` uses pynetdicom internals (``DIMSEServiceProvider.maximum_pdu_size``; the DUL's
socket), pinned to 3.0.x in pyproject.toml and covered by tests/test_sender.py against dcmtk and
Orthanc. pynetdicom's ``EVT_PDU_SENT`` and ``EVT_DATA_SENT`` do not fire for what is written here.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

#: Data set bytes framed and written per ``sendall`` (bounds memory for large files).
WRITE_BLOCK = 4 * 1024 * 1024


# --- the request's command set ----------------------------------------------------------------


def _uid_element(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_command(message_id: int, sop_class: str, sop_instance: str, priority: int = 2) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian, a data set
    following (Command Data Set Type 0x0001)."""
    body = b"".join((
        _uid_element(0x0002, sop_class),                       # Affected SOP Class UID
        struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x0001),       # Command Field: C-STORE-RQ
        struct.pack("<HHIH", 0x0000, 0x0110, 2, message_id),   # Message ID
        struct.pack("<HHIH", 0x0000, 0x0700, 2, priority),     # Priority
        struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0001),       # Command Data Set Type
        _uid_element(0x1000, sop_instance),                    # Affected SOP Instance UID
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


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


# Command Field, Message ID Being Responded To, Command Data Set Type, Status
_RSP_FIELDS = (0x0100, 0x0120, 0x0800, 0x0900)


def parse_store_response(command: bytes | memoryview) -> StoreResponse | None:
    """Read a whole C-STORE-RSP command set (Implicit VR Little Endian, PS3.7 9.3.1.2) with no
    data set following; None for anything else or anything malformed."""
    fields: dict[int, int] = {}
    pos, size = 0, len(command)
    while pos + 8 <= size:
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if group != 0x0000 or pos + length > size:
            return None
        if element in _RSP_FIELDS:
            if length != 2:
                return None
            (fields[element],) = struct.unpack_from("<H", command, pos)
        pos += length
    if (pos != size or fields.get(0x0100) != 0x8001 or fields.get(0x0800) != 0x0101
            or 0x0120 not in fields or 0x0900 not in fields):
        return None
    return StoreResponse(fields[0x0120], fields[0x0900])
