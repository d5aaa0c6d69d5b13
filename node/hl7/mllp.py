"""MLLP (HL7 v2 Minimal Lower Layer Protocol): framing, a reader, and a one-message client.

A message travels as ``0x0B`` + message (UTF-8) + ``0x1C 0x0D``. :func:`send_message` sends one
framed message on a fresh connection and waits for the framed ACK; whatever keeps it from
getting a well-formed ACK for that very message (refused, timed out, dropped, garbled, another
message's ACK) is :class:`Hl7Unavailable`, a transient error whose text names the peer and the
reason, never anything of the message. What the ACK means for the delivery is :func:`classify`.

ACKs are read with a small ER7 reader (:class:`Er7`) rather than a full HL7 parser: an EMR's
ACK may be of any v2 version and carry segments no profile lists, and only MSH, MSA and ERR
matter here.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal

from node.core.errors import NodeError, PermanentError, TransientError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: the largest message a reader accepts (an ORU with a PDF report stays far below)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: the largest ACK the client accepts
MAX_ACK_BYTES = 1024 * 1024
_CHUNK = 65536
ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
Outcome = Literal["delivered", "transient", "permanent"]
_SEGMENT_SEPARATORS = re.compile(r"\r\n|\r|\n")
_WHITESPACE = b" \t\r\n"
_REASONS: tuple[tuple[type[OSError], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset by the peer"),
    (BrokenPipeError, "connection closed by the peer"),
)


class Hl7Unavailable(TransientError):
    """No valid ACK for the message from the HL7 destination: worth retrying later."""


class MllpError(NodeError):
    """A peer broke MLLP framing or sent something that is not an HL7 v2 message."""


@dataclass(frozen=True)
class Ack:
    """MSA-1, the text of MSA-3 (or of ERR), MSA-2 (the acknowledged message's MSH-10).

    ``text`` comes from the peer: it may quote the message, so it is not for logs.
    """

    code: str
    text: str
    control_id: str


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


class FrameReader:
    """Reads framed messages off a connection, one at a time, keeping what follows a frame.

    Bounded: it never holds more than ``max_bytes`` of a message plus one read (whitespace
    between frames is dropped as it comes; anything else outside a frame is an error at once),
    and each byte is searched once, so a peer that streams without an end block costs neither
    memory nor time beyond the limit.
    """

    def __init__(self, sock: socket.socket, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._sock = sock
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._in_frame = False  # the start block was read: the buffer holds the message so far
        self._searched = 0  # where the search for the end block goes on

    def read(self, deadline: float | None = None) -> bytes | None:
        """The next message (without its frame); None if the peer closed between messages.

        ``deadline`` (``time.monotonic()``) bounds the whole wait: past it, TimeoutError.
        """
        while True:
            message = self._take()
            if message is not None:
                return message
            if deadline is not None:
                self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = self._sock.recv(_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise MllpError("the connection closed in the middle of a message")
                return None
            self._buffer += chunk

    def _take(self) -> bytes | None:
        if not self._in_frame:
            start = self._buffer.find(START_BLOCK)
            # at most one read's worth: whitespace read before is not kept
            if self._buffer[:start if start >= 0 else None].strip(_WHITESPACE):
                raise MllpError("data outside an MLLP frame")
            if start < 0:
                self._buffer.clear()
                return None
            del self._buffer[:start + len(START_BLOCK)]
            self._in_frame, self._searched = True, 0
        end = self._buffer.find(END_BLOCK, self._searched)
        if end < 0:
            if len(self._buffer) > self._max_bytes + len(END_BLOCK):
                raise MllpError(f"message longer than {self._max_bytes} bytes")
            self._searched = max(len(self._buffer) - len(END_BLOCK) + 1, 0)
            return None
        if end > self._max_bytes:
            raise MllpError(f"message longer than {self._max_bytes} bytes")
        message = bytes(self._buffer[:end])
        del self._buffer[:end + len(END_BLOCK)]
        self._in_frame, self._searched = False, 0
        return message


# --------------------------------------------------------------------------------------------
# reading ER7


class Er7:
    """The segments of an ER7 message, with field access by HL7 position (MSH-10 = field 10)."""

    def __init__(self, text: str) -> None:
        lines = [s for s in _SEGMENT_SEPARATORS.split(text) if s]
        if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
            raise MllpError("not an HL7 v2 message (no MSH segment first)")
        header = lines[0]
        self.field_separator = header[3]
        self.component: str = header[4]
        self.repetition: str = header[5]
        self.escape_char: str = header[6]
        self.subcomponent: str = header[7]
        self.segments: list[list[str]] = []
        for line in lines:
            fields = line.split(self.field_separator)
            if line.startswith("MSH"):
                fields.insert(1, self.field_separator)  # MSH-1 is the separator itself
            self.segments.append(fields)

    def value(self, segment: str, field: int, component: int = 1, subcomponent: int = 1) -> str:
        """The unescaped value at SEG-field.component.subcomponent of the first repetition of
        the first such segment; '' where absent."""
        fields = next((s for s in self.segments if s[0] == segment), None)
        if fields is None or field >= len(fields):
            return ""
        if segment == "MSH" and field in (1, 2):
            return fields[field]
        parts = fields[field].split(self.repetition)[0].split(self.component)
        if component > len(parts):
            return ""
        subparts = parts[component - 1].split(self.subcomponent)
        return self.unescape(subparts[subcomponent - 1]) if subcomponent <= len(subparts) else ""

    def unescape(self, value: str) -> str:
        """Replace \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (and \\.br\\); other sequences are dropped."""
        esc = re.escape(self.escape_char)
        table = {"F": self.field_separator, "S": self.component, "T": self.subcomponent,
                 "R": self.repetition, "E": self.escape_char, ".br": "\n"}
        return re.sub(f"{esc}([^{esc}]*){esc}", lambda m: table.get(m.group(1), ""), value)


def parse_ack(text: str) -> Ack:
    """The acknowledgment in an ACK message; MllpError if it has no valid MSA."""
    message = Er7(text)
    code = message.value("MSA", 1)
    if code not in ACK_CODES:
        raise MllpError("the answer has no MSA segment with an acknowledgment code")
    text = message.value("MSA", 3) or _error_text(message)
    return Ack(code=code, text=text, control_id=message.value("MSA", 2))


def _error_text(message: Er7) -> str:
    """ERR's user message, diagnostic, or error code text (v2.5+), or ERR-1's (before 2.5)."""
    return (message.value("ERR", 8) or message.value("ERR", 7) or message.value("ERR", 3, 2)
            or message.value("ERR", 1, 4, 2))


def classify(ack: Ack, on_error: str, on_reject: str) -> Outcome:
    """What an ACK means for the delivery: AA/CA delivered; AE/CE and AR/CR per policy."""
    if ack.code in ("AA", "CA"):
        return "delivered"
    if ack.code in ("AE", "CE"):
        policy = on_error
    elif ack.code in ("AR", "CR"):
        policy = on_reject
    else:
        raise ValueError(f"unknown acknowledgment code {ack.code!r}")
    return "transient" if policy == "retry" else "permanent"


# --------------------------------------------------------------------------------------------
# the client


def send_message(host: str, port: int, message: str, *, timeout_s: float,
                 tls: ssl.SSLContext | None = None) -> Ack:
    """Send ``message`` on a new connection and return its ACK (MSA-2 = the message's MSH-10).

    Hl7Unavailable when there is no such ACK within ``timeout_s`` (for the connection, and
    again for sending and the ACK). Line feeds between segments (a message file read back in
    text mode) are sent as the carriage returns HL7 requires; values never hold raw ones.
    """
    where = f"HL7 destination {host}:{port}"
    message = _SEGMENT_SEPARATORS.sub("\r", message)
    expected = _control_id_of(message)
    conversation = _Conversation(host, port, timeout_s, tls)
    try:
        answer = conversation.exchange(frame(message))
    except MllpError as exc:
        raise Hl7Unavailable(f"{where}: garbled answer ({exc})") from None
    except OSError as exc:
        raise Hl7Unavailable(
            f"{where}: {_reason(exc, timeout_s)} while {conversation.step}") from None
    if answer is None:
        raise Hl7Unavailable(f"{where}: the connection closed without an ACK")
    try:
        ack = parse_ack(answer.decode("utf-8"))
    except (UnicodeDecodeError, MllpError) as exc:
        raise Hl7Unavailable(f"{where}: garbled ACK ({_brief(exc)})") from None
    if ack.control_id != expected:
        raise Hl7Unavailable(f"{where}: the ACK is for another message (MSA-2 is not MSH-10)")
    return ack


def _control_id_of(message: str) -> str:
    try:
        return Er7(message).value("MSH", 10)
    except MllpError as exc:
        raise PermanentError(f"the message to send is not HL7 v2 ({exc})") from None


class _Conversation:
    """One connection, one message, one ACK; ``step`` says how far it got."""

    def __init__(self, host: str, port: int, timeout_s: float,
                 tls: ssl.SSLContext | None) -> None:
        self.host, self.port, self.timeout_s, self.tls = host, port, timeout_s, tls
        self.step = "connecting"

    def exchange(self, data: bytes) -> bytes | None:
        with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = raw
            if self.tls is not None:
                self.step = "negotiating TLS"
                sock = self.tls.wrap_socket(raw, server_hostname=self.host)
            with sock:
                self.step = "sending"
                sock.sendall(data)
                self.step = "waiting for the ACK"
                deadline = time.monotonic() + self.timeout_s
                return FrameReader(sock, max_bytes=MAX_ACK_BYTES).read(deadline)


def _reason(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return exc.strerror or exc.__class__.__name__


def _brief(exc: Exception) -> str:
    """The reason of a decoding error, without the bytes it quotes."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    return str(exc)
