"""Two small tunings of pynetdicom's acceptor for bulk C-STORE, applied per association.

Measured on the 300-instance CT benchmark (see bench/README.md), each one is a plain speed-up
with unchanged behaviour:

* ``AssociationSocket.recv`` reads a PDU in 4 KiB ``recv`` calls appended to a bytearray; for a
  128 KiB P-DATA PDU that is 32 calls and copies. Here one ``recv_into`` fills a buffer of the
  PDU's size (the kernel returns as much as it has; the loop continues until the PDU is whole).
* The DUL reactor sleeps 1 ms whenever it found nothing to do. On an idle-then-busy C-STORE
  stream that is up to 1 ms of added latency per instance; 0.2 ms keeps idle CPU low.

Both go through public objects (the server's ``request_handler``, the association's socket);
``_create_association`` and ``_run_loop_delay`` are pynetdicom internals, pinned to 3.0.x in
pyproject.toml and covered by the SCP tests.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import RequestHandler

DUL_IDLE_SLEEP_S = 0.0002


def _bulk_recv(raw: socket.socket) -> Any:
    def recv(nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = raw.recv_into(view[got:], nr_bytes - got)
            if n == 0:  # connection closed: return what arrived, as pynetdicom does
                view.release()
                del buf[got:]
                return buf
            got += n
        view.release()
        return buf

    return recv


class NodeRequestHandler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        assoc_socket = assoc.dul.socket
        assert assoc_socket is not None and assoc_socket.socket is not None
        assoc_socket.recv = _bulk_recv(assoc_socket.socket)  # type: ignore[method-assign]
        assoc.dul._run_loop_delay = DUL_IDLE_SLEEP_S
        return assoc
