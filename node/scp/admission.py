"""Who gets a connection, and how misbehaving peers are logged: caps and one line per event.

A fuzz run against ``serve`` showed that a few dozen idle or hostile connections locked real
senders out (pynetdicom counted them against ``maximum_associations`` and answered the next real
A-ASSOCIATE-RQ with a rejection) and that every bad connection wrote its own log lines. Here:

* :class:`AdmissionGate` counts open connections per peer address and in all, and refuses the
  excess at accept, before a thread or an association exists for it (the socket is closed at
  once). Associations from other addresses are not affected by one peer's cap.
* :class:`PeerLog` writes a warning about a peer at most once a minute per peer and kind of
  problem; the next line says how many were left out. Refusals at the gate go through it too:
  a flood of connections is one line, not one per connection.

Nothing here carries patient data: lines name peer addresses, settings and counts only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger("node.scp")


class AdmissionGate:
    """Connection caps per peer address (``per_peer``; 0 = none) and in all (``total``)."""

    def __init__(self, total: int, per_peer: int, peers: PeerLog | None = None) -> None:
        self._total_cap = total
        self._peer_cap = per_peer
        self._peers = peers or PEERS
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._total = 0

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host``; False (and counted nowhere) when over a cap."""
        with self._lock:
            total, from_host = self._total, self._open[host]
            admitted = total < self._total_cap and not (self._peer_cap and
                                                        from_host >= self._peer_cap)
            if admitted:
                self._open[host] += 1
                self._total += 1
        if admitted:
            return True
        if total >= self._total_cap:
            self._peers.warning(
                "*", "total cap", "refusing connections (this one from %s): %d associations are "
                "open, the most this receiving process accepts (scp.max_associations)", host, total,
            )
        else:
            self._peers.warning(
                host, "peer cap", "refusing connections from %s: %d associations are already "
                "open from that address (scp.max_associations_per_peer)", host, from_host,
            )
        return False

    def release(self, host: str) -> None:
        """A connection admitted by :meth:`admit` has ended."""
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]
            self._total -= 1


class PeerLog:
    """Warnings about peers, at most one line per peer address and kind every ``interval_s``."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._log = logger
        self._interval = interval_s
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last line, left out)

    def warning(self, peer: str, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line of this ``kind`` about ``peer`` was just logged."""
        now = time.monotonic()
        key = (peer, kind)
        with self._lock:
            last, left_out = self._last.get(key, (-self._interval, 0))
            if now - last < self._interval:
                self._last[key] = (last, left_out + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # forget quiet peers; the map stays small
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self._interval}
        if left_out:
            message += f" ({left_out} more like it not logged in the last {self._interval:g} s)"
        self._log.warning(message, *args)


#: This process's one :class:`PeerLog` (the gate, the PDU reader and pynetdicom's lines use it).
PEERS = PeerLog(log)
