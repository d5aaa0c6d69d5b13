"""Who gets a connection, and how misbehaving peers are logged: caps and one line per event.

A fuzz run against ``serve`` showed that a few dozen idle or hostile connections locked real
senders out (pynetdicom counted them against ``maximum_associations`` and answered the next real
A-ASSOCIATE-RQ with a rejection) and that every bad connection wrote its own log lines. Here:

* :class:`AdmissionGate` counts open connections per peer address and in all, and refuses the
  excess at accept, before a thread or an association exists for it (the socket is closed at
  once). A refusal episode is logged once when it starts and once, with its count, when the
  peer is back under its cap. Associations from other addresses are not affected by one peer's
  cap.
* :class:`PeerLog` writes a warning about a peer at most once a minute per peer and kind of
  problem; the next line says how many were left out.

Nothing here carries patient data: lines name peer addresses, settings and counts only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger("node.scp")

_ALL = "*"  # the refusal episode of the cap on all associations


class AdmissionGate:
    """Connection caps per peer address (``per_peer``; 0 = none) and in all (``total``)."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total_cap = total
        self._peer_cap = per_peer
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._total = 0
        self._refused: dict[str, int] = {}  # open refusal episodes: host or _ALL -> refusals

    def admit(self, host: str) -> bool:
        """Count a new connection from ``host``; False (and counted nowhere) when over a cap."""
        with self._lock:
            if self._total >= self._total_cap:
                key = _ALL
                why = (f"{self._total} associations are open, the most this receiving process "
                       "accepts (scp.max_associations)")
            elif self._peer_cap and self._open[host] >= self._peer_cap:
                key = host
                why = (f"{self._open[host]} associations are already open from that address "
                       "(scp.max_associations_per_peer)")
            else:
                self._open[host] += 1
                self._total += 1
                return True
            first = key not in self._refused
            self._refused[key] = self._refused.get(key, 0) + 1
        if first:
            log.warning("refusing connections from %s: %s", host, why)
        return False

    def release(self, host: str) -> None:
        """A connection admitted by :meth:`admit` has ended."""
        ended: list[tuple[str, int]] = []
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]
            self._total -= 1
            if host in self._refused and self._open[host] < self._peer_cap:
                ended.append((host, self._refused.pop(host)))
            if _ALL in self._refused and self._total < self._total_cap:
                ended.append(("any address", self._refused.pop(_ALL)))
        for who, count in ended:
            log.info("accepting connections from %s again (%d refused while over the cap)",
                     who, count)

    def open_connections(self) -> int:
        with self._lock:
            return self._total


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
            message += f" ({left_out} more like it from this address not logged)"
        self._log.warning(message, *args)
