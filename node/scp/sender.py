"""A C-STORE SCU: send a batch of instances to one destination over one association.

Items are data sets in memory (``pydicom.Dataset``) or DICOM Part 10 files (``pathlib.Path``).
Each item gets an :class:`InstanceOutcome` that says whether it was delivered, delivered with a
warning, or failed for a reason worth retrying (``transient``) or not (``permanent``). A file that
is not readable DICOM is a permanent outcome, not an exception. A destination that cannot be
associated with raises :class:`DestinationUnavailable` (transient) or
:class:`DestinationRejected` (permanent).

Files are sent as they are on disk. Only their File Meta Information is read (by hand: SOP Class,
SOP Instance and Transfer Syntax UIDs, and where the data set starts); for each SOP class and
transfer syntax found, a presentation context with exactly that transfer syntax is proposed, and
the bytes after the meta group go out unchanged in that context. If the peer accepted no such
context, the file is decoded and sent like a data set (pynetdicom converts between uncompressed
transfer syntaxes). Data sets are encoded once, in the accepted context's transfer syntax.

pynetdicom still negotiates, releases and aborts the association. The C-STORE requests and their
responses are handled here, because pynetdicom's way cost far more than the peer does: on the
300-instance CT benchmark (bench/send.py, bench/README.md) its ``send_c_store`` reached about a
third of dcmtk storescu's rate. In pynetdicom 3.0:

* Each request's command set is a pydicom ``Dataset``, encoded twice (once for its group length).
  Here :func:`store_command` packs its seven elements with ``struct``.
* Every P-DATA-TF PDU (16 KiB with dcmtk's and Orthanc's default maximum) is queued to the DUL
  thread, which sends one per turn of its loop. Here :class:`_Wire` frames the command and the data
  set into PDUs of the peer's maximum length in one reused buffer (a file is read straight into it,
  per 4 MiB) and writes it with one ``sendall`` from the calling thread. Writes to the socket are
  serialised with the DUL thread's reads and sends by a lock.
* Each response is decoded into a pydicom ``Dataset`` and then a primitive on the DUL thread, about
  0.6 ms a response on the project's machines. Here a response that is one whole command fragment
  is read by :func:`parse_store_response` (anything else still goes to pynetdicom).
* ``send_c_store`` pauses and resumes the association's reactor around every request, and the
  resumed reactor can take the next response off the DIMSE queue before ``send_c_store`` does,
  which then waits for the DIMSE timeout and reports no response (seen with the previous sender in
  the benchmark). Here the reactor is paused once for the whole batch, and non-blocking reads of
  the DIMSE queue (the reactor's) get nothing, so a response only ever goes to the request waiting
  for it.

These use pynetdicom internals (``Association._reactor_checkpoint``/``_is_paused``/
``_get_valid_context``; ``DIMSEServiceProvider.get_msg``/``receive_primitive``/``message``/
``msg_queue``/``maximum_pdu_size``; the DUL's socket), pinned to 3.0.x in pyproject.toml and
covered by tests/test_sender.py against dcmtk and Orthanc. pynetdicom's ``EVT_PDU_SENT``,
``EVT_DATA_SENT``, ``EVT_DIMSE_SENT`` and ``EVT_DIMSE_RECV`` do not fire for requests and responses
handled here (the sender binds none).

pynetdicom never sets TCP_NODELAY on its sockets; with Nagle's algorithm on, pynetdicom's own small
PDUs waited for delayed ACKs and its bulk C-STORE ran about three times slower. The
``EVT_CONN_OPEN`` handler sets it on the association's socket as soon as it is connected (before
the A-ASSOCIATE-RQ is written); with whole messages written at once it no longer changes the
benchmark, but costs nothing. The same handler lowers the DUL reactor's idle sleep, the latency
with which a response is picked up, as the SCP does (see ``node.scp.fastpath``).

Messages and details carry only AE titles, host, port, status codes, SOP class names and reasons:
never patient data (and no file names, which may carry some).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

from node.errors import PermanentError, TransientError
from node.scp.fastpath import DUL_IDLE_SLEEP_S

log = logging.getLogger("node.sender")

#: Set TCP_NODELAY on the association's socket (off only to measure its effect).
TCP_NODELAY = True

#: A-ASSOCIATE-RJ has at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS = 128

#: Data set bytes framed and written per ``sendall`` (bounds memory for large files).
WRITE_BLOCK = 4 * 1024 * 1024

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})

Result = Literal["delivered", "warning", "transient", "permanent"]
Item = pydicom.Dataset | Path


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
    """What became of one item. ``sop_instance_uid`` is empty for a file that is not DICOM."""

    sop_instance_uid: str
    status: int | None
    result: Result
    detail: str


OutcomeCallback = Callable[[int, InstanceOutcome], None]


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


# --- what is sent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One item ready to send: its UIDs, and either a data set or a file's data set bytes."""

    sop_class: str
    sop_instance: str
    tsyntax: str
    dataset: pydicom.Dataset | None = None
    path: Path | None = None
    #: where the data set (after the File Meta Information) starts in ``path``
    offset: int = 0


class NotPart10(ValueError):
    """The file has no usable File Meta Information (PS3.10 7.1)."""


# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_META_UIDS = {0x0002: "sop_class", 0x0003: "sop_instance", 0x0010: "tsyntax"}
_META_MAX = 1 << 16


def read_file_meta(path: Path) -> Prepared:
    """Read a Part 10 file's File Meta Information: its three UIDs and where the data set starts.

    The meta group follows a 128-byte preamble and ``DICM``, in Explicit VR Little Endian, and
    starts with its group length (PS3.10 7.1). Raises NotPart10 if it is missing, malformed or
    lacks one of the UIDs (pydicom may still read such a file); OSError if unreadable.
    """
    with open(path, "rb") as f:
        head = f.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            raise NotPart10("no DICM prefix or no File Meta Information Group Length")
        (group_length,) = struct.unpack_from("<I", head, 140)
        if group_length > _META_MAX:
            raise NotPart10("File Meta Information Group Length too large")
        meta = f.read(group_length + 2)
    if len(meta) < group_length or meta[group_length:group_length + 2] == b"\x02\x00":
        raise NotPart10("File Meta Information Group Length does not match the group")
    found = _meta_uids(memoryview(meta)[:group_length])
    missing = [name for name in _META_UIDS.values() if not found.get(name)]
    if missing:
        raise NotPart10(f"File Meta Information lacks {', '.join(missing)}")
    return Prepared(found["sop_class"], found["sop_instance"], found["tsyntax"],
                    path=path, offset=144 + group_length)


def _meta_uids(meta: memoryview) -> dict[str, str]:
    pos, found = 0, {}
    while pos < len(meta):
        if pos + 8 > len(meta):
            raise NotPart10("File Meta Information ends inside an element")
        group, element = struct.unpack_from("<HH", meta, pos)
        if group != 0x0002:
            raise NotPart10("File Meta Information Group Length does not match the group")
        if bytes(meta[pos + 4:pos + 6]) in _LONG_VRS:
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            pos += 8
        if pos + length > len(meta):
            raise NotPart10("File Meta Information ends inside an element")
        if element in _META_UIDS:
            value = bytes(meta[pos:pos + length]).rstrip(b"\x00 ").decode("ascii", "replace")
            found[_META_UIDS[element]] = value
        pos += length
    return found


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else False
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return UID(str(tsyntax))


def _from_dataset(ds: pydicom.Dataset) -> Prepared:
    """Raises AttributeError/KeyError if the data set lacks its SOP Class or Instance UID."""
    return Prepared(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(_transfer_syntax(ds)),
                    dataset=ds)


def _read_file(path: Path, *, meta: bool = True, uid: str = "") -> Prepared | InstanceOutcome:
    """A file as it is (``meta``: from its File Meta Information), else decoded whole; or a
    permanent outcome if it is neither."""
    try:
        if meta:
            try:
                return read_file_meta(path)
            except NotPart10:
                pass  # e.g. no Transfer Syntax UID in the meta group: pydicom may still read it
        return _from_dataset(pydicom.dcmread(path))
    except OSError as exc:
        return InstanceOutcome(uid, None, "permanent",
                               f"file not readable: {type(exc).__name__} ({exc.strerror})")
    except Exception:  # noqa: BLE001 (pydicom raises many kinds on damaged data; none retryable)
        return InstanceOutcome(uid, None, "permanent", "not a readable DICOM file")


def prepare(item: Item) -> Prepared | InstanceOutcome:
    """What send() needs of an item, or a permanent outcome for one that cannot be sent."""
    if isinstance(item, pydicom.Dataset):
        try:
            return _from_dataset(item)
        except (AttributeError, KeyError):
            return InstanceOutcome("", None, "permanent",
                                   "data set lacks its SOP Class UID or SOP Instance UID")
    return _read_file(Path(item))


def build_contexts(items: Sequence[Prepared]) -> list[Any]:
    """The presentation contexts to propose for ``items``.

    Per SOP class: one context for each transfer syntax its files are in (exactly that one, so
    the file can go out as it is) and data sets are in (if not uncompressed little endian), plus
    one offering Explicit and Implicit VR Little Endian.
    """
    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        if item.path is not None or item.tsyntax not in UNCOMPRESSED:
            pairs[(item.sop_class, item.tsyntax)] = None
        pairs[(item.sop_class, "")] = None
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentError(
            f"{len(pairs)} presentation contexts needed, at most {MAX_CONTEXTS}: split the batch"
        )
    return [
        build_context(sop_class, [tsyntax] if tsyntax else list(UNCOMPRESSED))
        for sop_class, tsyntax in pairs
    ]


# --- the wire -------------------------------------------------------------------------------


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


#: A P-DATA-TF PDU holding one PDV item: PDU type, reserved, PDU length; item length, context
#: ID, message control header (PS3.8 9.3.5 and E.2).
_PDU_HEADER = struct.Struct(">BBIIBB")

Fill = Callable[[memoryview], None]


def _fill_from(data: bytes | bytearray | memoryview) -> Fill:
    view, start = memoryview(data), 0

    def fill(dst: memoryview) -> None:
        nonlocal start
        dst[:] = view[start:start + len(dst)]
        start += len(dst)

    return fill


def _fill_from_file(f: io.FileIO, size: int) -> Fill:
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


class _Wire:
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
        pos = self._frame(0, context_id, 0x01, len(command), True, _fill_from(command))
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


# --- the association ------------------------------------------------------------------------


def _on_conn_open(event: evt.Event) -> None:
    dul = event.assoc.dul
    raw = dul.socket.socket if dul.socket is not None else None
    if raw is not None and TCP_NODELAY:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dul._run_loop_delay = DUL_IDLE_SLEEP_S


def _sop_class_name(uid: str) -> str:
    return UID(uid).name or uid


def _association_error(assoc: Any, where: str, connected: bool) -> Exception:
    """The exception for an association that was not established."""
    if not connected:  # pynetdicom reports a refused connection as an aborted association
        return DestinationUnavailable(
            f"{where}: no connection (refused, unreachable or timed out)")
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
    return DestinationUnavailable(f"{where}: association not established")


class _AssociationLost(Exception):
    """The association cannot carry another request (no response, or a write failed)."""

    def __init__(self, outcome: InstanceOutcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


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


class _Batch:
    """The requests of one send() over one association."""

    def __init__(self, assoc: Any, where: str, timeout_s: float) -> None:
        self.assoc = assoc
        self.where = where
        self.wire = _Wire(assoc, timeout_s)
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
                decoded = _read_file(path, meta=False, uid=item.sop_instance)
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
            fill = _fill_from_file(f, size)
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
        fill = _fill_from(data)
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


def send(
    destination: Destination,
    items: Sequence[Item],
    timeout_s: float = 30,
    *,
    on_outcome: OutcomeCallback | None = None,
) -> list[InstanceOutcome]:
    """Send ``items`` (data sets or Part 10 files) over one association; return one outcome
    per item, in order.

    ``on_outcome(index, outcome)``, if given, is called for each item in order as soon as its
    outcome is known (on this thread, between requests), so that a caller can record deliveries
    one by one and a crash mid-batch leaves at most the request in flight unrecorded. If it
    raises, the association is released and the exception propagates.

    Raises DestinationRejected or DestinationUnavailable when no association can be made
    (not when no item is readable: then nothing is sent and every outcome is permanent).
    """
    prepared = [prepare(item) for item in items]
    sendable = [p for p in prepared if isinstance(p, Prepared)]
    if not sendable:
        outcomes = [p for p in prepared if isinstance(p, InstanceOutcome)]
        for index, outcome in enumerate(outcomes):
            if on_outcome is not None:
                on_outcome(index, outcome)
        return outcomes
    ae = AE(ae_title=destination.calling_ae_title)
    ae.requested_contexts = build_contexts(sendable)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    tls_args = (destination.tls, destination.host) if destination.tls is not None else None
    connected = False

    def on_conn_open(event: evt.Event) -> None:
        nonlocal connected
        connected = True
        _on_conn_open(event)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)],
    )
    where = destination.describe()
    if not assoc.is_established:
        raise _association_error(assoc, where, connected)
    batch = _Batch(assoc, where, timeout_s)
    batch.pause_reactor()
    try:
        return batch.run(prepared, on_outcome)
    finally:
        batch.resume_reactor()
        if assoc.is_established:
            assoc.release()
