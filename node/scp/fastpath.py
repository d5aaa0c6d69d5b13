"""Small tunings of pynetdicom's acceptor for bulk C-STORE, and the hook of the lean path.

Measured on the 300-instance CT benchmark (see bench/README.md):

* ``AssociationSocket.recv`` reads a PDU in 4 KiB ``recv`` calls appended to a bytearray; for a
  128 KiB P-DATA PDU that is 32 calls and copies. Here one ``recv_into`` fills a buffer of the
  PDU's size (the kernel returns as much as it has; the loop continues until the PDU is whole).
  :class:`BulkRecv` also lets :mod:`node.scp.inbound` push a PDU header back.
* The DUL reactor sleeps 1 ms whenever it found nothing to do. On an idle-then-busy C-STORE
  stream that is up to 1 ms of added latency per instance; 0.2 ms keeps idle CPU low.
* Each association gets an :class:`node.scp.inbound.Inbound`, which receives, files and answers
  C-STOREs on the DUL thread. The association reactor (which polls its DIMSE queue every 1 ms)
  then only serves C-ECHO, release and abort, so its polling is left as pynetdicom has it: the
  0.2 ms polling used before cost wake-ups that competed with the DUL thread for the GIL.

``_create_association``, ``_run_loop_delay`` and the association's socket are pynetdicom
internals, pinned to 3.0.x in pyproject.toml and covered by the SCP tests.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler

from node.scp.inbound import Inbound

DUL_IDLE_SLEEP_S = 0.0002


class BulkRecv:
    """The association socket's ``recv``: whole PDU bodies in one buffer, with a push-back.

    :mod:`node.scp.inbound` reads a PDU header to decide who handles the PDU; when pynetdicom
    does, the header is pushed back and pynetdicom's reader gets it first.
    """

    def __init__(self, raw: socket.socket) -> None:
        self._raw = raw
        self._pushed = b""

    def push_back(self, data: bytes | bytearray) -> None:
        self._pushed = bytes(data) + self._pushed

    def __call__(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        got = 0
        if self._pushed:
            got = min(nr_bytes, len(self._pushed))
            buf[:got] = self._pushed[:got]
            self._pushed = self._pushed[got:]
        view = memoryview(buf)
        while got < nr_bytes:
            n = self._raw.recv_into(view[got:], nr_bytes - got)
            if n == 0:  # connection closed: return what arrived, as pynetdicom does
                view.release()
                del buf[got:]
                return buf
            got += n
        view.release()
        return buf


class NodeRequestHandler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        assoc_socket = assoc.dul.socket
        assert assoc_socket is not None and assoc_socket.socket is not None
        assoc_socket.recv = BulkRecv(assoc_socket.socket)  # type: ignore[method-assign]
        assoc.dul._run_loop_delay = DUL_IDLE_SLEEP_S
        handlers = getattr(self.server, "store_handlers", None)
        if handlers is not None:
            inbound = Inbound(assoc, handlers, handlers.spool.incoming)
            inbound.attach()
            assoc.bind(evt.EVT_CONN_CLOSE, inbound.discard)
        return assoc
