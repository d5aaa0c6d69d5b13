"""A syslog sender (RFC 5424 messages) over UDP (RFC 5426) or TLS (RFC 5425): the network edge of
the audit forwarding.

:func:`format_message` is pure: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``.
The audit messages go with facility 10 (security/authorization, RFC 5424 6.2.1), severity 5
(notice) or 4 (warning) for alerts and failures, MSGID ``IHE+RFC-3881`` as IHE ITI TF-2 3.20.7
asks, no structured data, and the XML as UTF-8 after a BOM (RFC 5424 6.4).

:class:`SyslogSender` opens one connection for a batch of messages. TLS: the repository's
certificate is verified against the CA file and its host name checked; a client certificate is
presented when one is configured; each message is framed by octet counting
(``MSG-LEN SP SYSLOG-MSG``, RFC 5425 4.3). Every socket operation has a timeout. The node never
reads from the repository (RFC 5425 is one-way), so there is no read to bound. UDP: one
datagram per message (RFC 5426 3.1); it reports only errors the kernel sees (an ICMP port
unreachable on a connected socket), never a lost datagram.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from node.core.errors import ConfigError, TransientError

FACILITY_AUTH = 10  # RFC 5424 6.2.1: security/authorization messages
NOTICE, WARNING = 5, 4
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
#: RFC 5426 3.2: IPv4 UDP payloads are at most 65,507 bytes
MAX_DATAGRAM = 65507


class RepositoryUnreachable(TransientError):
    """The syslog receiver could not be reached, or the connection failed while sending."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    transport: str  # "udp" | "tls"
    timeout_s: float = 5.0
    ca_file: str = ""
    certificate: str = ""
    private_key: str = ""


def parse_address(text: str, where: str = "audit.repository") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ConfigError otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError([f"{where}: expected host:port, e.g. audit.hospital.org:6514"])
    return host, int(port)


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are PRINTUSASCII without spaces; "-" when empty."""
    kept = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return kept or "-"


def format_message(xml: bytes, *, app_name: str, hostname: str, procid: str,
                   at: datetime | None = None, severity: int = NOTICE) -> bytes:
    """One RFC 5424 message carrying ``xml``."""
    when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    header = (f"<{FACILITY_AUTH * 8 + severity}>1 {when.replace('+00:00', 'Z')} "
              f"{_printable(hostname, 255)} {_printable(app_name, 48)} "
              f"{_printable(procid, 128)} {MSGID} - ")
    return header.encode("ascii") + BOM + xml


def client_context(target: Target) -> ssl.SSLContext:
    """TLS 1.2+ that verifies the repository against ``ca_file`` (and its host name)."""
    if not target.ca_file:
        raise ConfigError(["audit.ca_file: required with transport = \"tls\""])
    try:
        context = ssl.create_default_context(cafile=target.ca_file)
        if target.certificate:
            context.load_cert_chain(target.certificate, target.private_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"audit: cannot use the TLS files ({type(exc).__name__}: "
                           f"{getattr(exc, 'strerror', None) or exc})"]) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SyslogSender:
    """Sends batches of RFC 5424 messages to one receiver; each batch on a fresh connection."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._context = client_context(target) if target.transport == "tls" else None
        self.hostname = socket.getfqdn() or socket.gethostname()
        self.procid = str(os.getpid())

    def send(self, messages: Sequence[bytes]) -> int:
        """Send ``messages`` in order; return how many were handed over before a failure.

        Raises RepositoryUnreachable when not even the connection could be made."""
        if not messages:
            return 0
        try:
            sock = self._connect()
        except OSError as exc:
            raise RepositoryUnreachable(_why(exc)) from None
        sent = 0
        with sock:
            for message in messages:
                try:
                    self._send_one(sock, message)
                except OSError:
                    break
                sent += 1
            if isinstance(sock, ssl.SSLSocket) and not _closed_in_order(sock):
                return 0  # not known to be read: sent again (twice rather than lost)
        return sent

    def _connect(self) -> socket.socket:
        t = self.target
        if self._context is None:
            family = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family[0], socket.SOCK_DGRAM)
            sock.settimeout(t.timeout_s)
            try:
                sock.connect(family[4])
            except OSError:
                sock.close()
                raise
            return sock
        raw = socket.create_connection((t.host, t.port), timeout=t.timeout_s)
        try:
            tls = self._context.wrap_socket(raw, server_hostname=t.host)
        except OSError:
            raw.close()
            raise
        tls.settimeout(t.timeout_s)
        return tls

    def _send_one(self, sock: socket.socket, message: bytes) -> None:
        if self._context is None:
            sock.send(message[:MAX_DATAGRAM])
        else:
            sock.sendall(str(len(message)).encode("ascii") + b" " + message)


def _closed_in_order(tls: ssl.SSLSocket) -> bool:
    """End the TLS session with close_notify and wait for the repository to end it too: it
    does so only after reading everything before it. A plain close instead can lose what the
    repository has not read yet: the kernel answers with a reset when the node closes with the
    repository's unread TLS 1.3 session tickets in its receive buffer, and the repository's
    kernel then drops what it still held. False: no answer within the timeout."""
    try:
        tls.unwrap()
    except TimeoutError:
        return False
    except (OSError, ValueError):  # it closed the connection without close_notify: also done
        return True
    return True


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or type(exc).__name__
