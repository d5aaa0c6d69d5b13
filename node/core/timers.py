"""Timers on APScheduler: work that runs now, then again after an interval or when woken.

The embedded runner (``node.pipeline.embedded``) runs the flow's loops on these: a run can never
overlap the next one, and a wake-up during a run makes the work run again right after it:
nothing is skipped and nothing is lost. A :class:`Doorbell` wakes a timer from another process
of the node (a receiving process tells the completion sweep that an association was released).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from node.core.errors import NodeError

log = logging.getLogger("node.completion")


class Timer:
    """Run ``work`` now (or after one interval), then again ``interval_s`` after each run ends,
    or as soon as ``wake`` is called. A node error is logged and the next run retries; so is any
    other error (with its traceback: that is a bug), and the timer lives on.

    The timer is one APScheduler job with a one-shot date trigger that the run itself schedules
    again when it ends: there is never a second instance to start while one runs (so never
    APScheduler's "maximum number of running instances" warning, which an interval trigger gave
    for every tick during a long inference: 32 lines in one demo), and a wake-up during a run
    makes the work run again right after it instead of being skipped.
    """

    def __init__(self, name: str, work: Callable[[], object], interval_s: float, *,
                 at_once: bool = True) -> None:
        self.name, self._work, self.interval_s = name, work, interval_s
        self._at_once = at_once
        self._lock = threading.Lock()
        self._running = self._again = self._stopped = False
        self._scheduler: BackgroundScheduler | None = None

    def attach(self, scheduler: BackgroundScheduler) -> None:
        self._scheduler = scheduler
        with self._lock:
            self._schedule(0.0 if self._at_once else self.interval_s)

    def wake(self) -> None:
        """Run as soon as possible: now if idle, right after the current run otherwise."""
        with self._lock:
            if self._running or self._scheduler is None or self._stopped:
                self._again = True
                return
            # JobLookupError: APScheduler has just taken the job to run it; that run is the wake-up
            with contextlib.suppress(JobLookupError):
                self._scheduler.modify_job(self.name, next_run_time=_now())

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def _schedule(self, delay_s: float) -> None:
        """Called with the lock held."""
        assert self._scheduler is not None
        self._scheduler.add_job(
            self._run, "date", run_date=_now() + timedelta(seconds=delay_s), id=self.name,
            name=self.name, replace_existing=True, misfire_grace_time=None)

    def _run(self) -> None:
        with self._lock:
            self._running, self._again = True, False
        try:
            self._work()
        except NodeError as exc:
            log.error("%s failed, will retry: %s", self.name, exc)
        except Exception:
            log.exception("%s failed unexpectedly, will retry", self.name)
        finally:
            with self._lock:
                self._running = False
                if not self._stopped:
                    self._schedule(0.0 if self._again else self.interval_s)


def _now() -> datetime:
    return datetime.now(UTC)


class Timers:
    """The node's timers on one APScheduler, started together and stopped together."""

    def __init__(self, timers: list[Timer]) -> None:
        self.by_name = {t.name: t for t in timers}
        # one worker per timer: a long inference never delays the completion sweep or delivery
        self._scheduler = BackgroundScheduler(
            timezone="UTC", executors={"default": ThreadPoolExecutor(max(1, len(timers)))})

    def start(self) -> None:
        self._scheduler.start()
        for timer in self.by_name.values():
            timer.attach(self._scheduler)

    def shutdown(self, wait: bool = True) -> None:
        for timer in self.by_name.values():
            timer.stop()
        self._scheduler.shutdown(wait=wait)


class Doorbell:
    """Wakes a timer of the node's main process from any of its processes, at once.

    A datagram on an abstract Unix socket (Linux: no file, gone with the process that bound it)
    named after the node's var_dir, so two nodes on one machine never ring each other. Ringing
    never blocks and never fails: with nobody listening (the main process is starting or gone),
    or the socket's buffer full (a wake-up is pending anyway), the timer's own interval still
    runs the work. A ring carries no data: what to do is in the ledger, committed before it.
    """

    def __init__(self, var_path: Path, name: str) -> None:
        digest = hashlib.sha256(f"{var_path.resolve()}\0{name}".encode()).hexdigest()[:24]
        self.address = f"\0dicom-node-{digest}"
        self._sender = _datagram_socket()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def ring(self) -> None:
        with contextlib.suppress(OSError):
            self._sender.sendto(b"\1", socket.MSG_DONTWAIT, self.address)

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on a thread of its own) after each ring until :meth:`close`."""
        sock = _datagram_socket()
        try:
            sock.bind(self.address)
        except OSError as exc:  # only another node on this var_dir, which its lock prevents
            sock.close()
            log.warning("wake-ups from other processes are off (%s): the timer's interval "
                        "applies", type(exc).__name__)
            return
        self._listener = sock

        def answer() -> None:
            while True:
                try:
                    sock.recv(16)
                except OSError:
                    return
                if self._stopped.is_set():
                    return
                wake()

        threading.Thread(target=answer, name="doorbell", daemon=True).start()

    def close(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self.ring()  # ends the listening thread's wait
            self._listener.close()
        self._sender.close()


def _datagram_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


def completion_doorbell(var_path: Path) -> Doorbell:
    """The bell of the completion sweep: rung by the receive path once a whole-study sender's
    association was released (its mark committed in the ledger)."""
    return Doorbell(var_path, "completion sweep")
