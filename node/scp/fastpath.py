"""Three small tunings of pynetdicom's acceptor for bulk C-STORE.

Measured on the 300-instance CT benchmark (see bench/README.md), each one is a plain speed-up
with unchanged behaviour:

* ``AssociationSocket.recv`` reads a PDU in 4 KiB ``recv`` calls appended to a bytearray; for a
  128 KiB P-DATA PDU that is 32 calls and copies. Here one ``recv_into`` fills a buffer of the
  PDU's size (the kernel returns as much as it has; the loop continues until the PDU is whole).
* The DUL reactor sleeps 1 ms whenever it found nothing to do. On an idle-then-busy C-STORE
  stream that is up to 1 ms of added latency per instance; 0.2 ms keeps idle CPU low.
* The association reactor polls its DIMSE queue every 1 ms (``time.sleep(0.001)`` in
  ``pynetdicom.association``): a received C-STORE waits 0.5 ms on average before its handler
  runs, which at about 5 ms per instance is a tenth of the time. ``poll_faster()`` gives that
  module a ``time`` whose ``sleep`` waits at most 0.2 ms. The cost is more wake-ups of idle
  associations (5,000 instead of 1,000 a second each); associations from modalities are short.

The first two go through the server's ``request_handler`` and the association's socket;
``_create_association``, ``_run_loop_delay`` and the association module's ``time`` are
pynetdicom internals, pinned to 3.0.x in pyproject.toml and covered by the SCP tests.
"""

from __future__ import annotations

import socket
import time
import types
from typing import Any

import pynetdicom.association
from pynetdicom.transport import RequestHandler

DUL_IDLE_SLEEP_S = 0.0002
REACTOR_POLL_S = 0.0002


def poll_faster() -> None:
    """Cap the association reactor's polling sleep at REACTOR_POLL_S (process-wide)."""
    module: Any = pynetdicom.association
    if getattr(module.time, "_dicom_node", False):
        return
    fast = types.ModuleType("time")
    fast.__dict__.update(time.__dict__)
    fast.sleep = lambda seconds: time.sleep(min(seconds, REACTOR_POLL_S))  # type: ignore[attr-defined]
    fast._dicom_node = True  # type: ignore[attr-defined]
    module.time = fast


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
