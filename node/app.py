"""Composition root: wires settings, ledger, spool, receivers and timers into a running node."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node import __version__
from node.core import audit_forward, metrics
from node.core.errors import ConfigError, NodeError
from node.core.keys import KEY_ENV, DeidKeys, key_file_for, load_keys, write_key_file
from node.core.ledger import Ledger, open_ledger
from node.core.pseudonyms import PseudonymStore
from node.core.settings import Settings
from node.core.spool import open_spool
from node.core.spool_migration import log_migrated, migrate_names
from node.pipeline import preload
from node.pipeline.celery_runner import CeleryRunner, ReceiverRunner, make_app, queue_name, register
from node.pipeline.context import StageContext
from node.pipeline.deid.profile import Profile, load_profile
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.embedded import EmbeddedRunner
from node.pipeline.flow import Flow, Stage
from node.pipeline.infer.registry import LoadedModel, load_models
from node.preflight import check_port_free, preflight
from node.scp.recovery import begin_run, end_run, reconcile
from node.scp.server import spawn_receivers, start_receiver
from node.web.context import WebContext
from node.web.server import WebServer

log = logging.getLogger("node")


@dataclass
class _Lock:
    handle: IO[str]


def _lock_var_dir(var: Path) -> _Lock:
    try:
        var.mkdir(parents=True, exist_ok=True)
        handle = (var / "node.lock").open("a+")
    except OSError as exc:
        raise ConfigError([f"node.var_dir: cannot use {var} ({exc.strerror})"]) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise NodeError(f"another node is already running on {var}") from None
    return _Lock(handle)


def open_deid(settings: Settings, *, create_default_key: bool) -> tuple[Profile, DeidKeys]:
    """The de-identification profile and keys; a clear ConfigError when the key is missing.

    On the embedded default (no key file configured, no key in the environment) ``serve``
    creates ``<var_dir>/deid.key`` once, readable by its owner only, and says so; production
    settings name a key file kept outside var_dir (and backed up: without it, results cannot be
    mapped back to their patients).
    """
    if not settings.deid.key_file and not os.environ.get(KEY_ENV):
        default = settings.var_path / "deid.key"
        if create_default_key and not default.exists():
            write_key_file(default)
            log.warning(
                "created a de-identification key at %s: back it up, or set deid.key_file", default
            )
    key_file = key_file_for(settings.deid.key_file, settings.var_path)
    return load_profile(settings.deid), load_keys(key_file)


def _checked_models(settings: Settings, *, load: bool = True,
                    names: tuple[str, ...] | None = None) -> dict[str, LoadedModel]:
    """The enabled models (or ``names``), loaded once every settings problem has been ruled
    out; else one ConfigError with all of them (the models' among them). ``load=False``: the
    settings only (a receiving node whose workers run the models)."""
    problems = preflight(settings, models=False)
    models: dict[str, LoadedModel] = {}
    try:
        if load:
            models = load_models(settings.models_path,
                                 settings.models.enabled if names is None else names,
                                 settings.models.device)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return models


class _NoWeb:
    """Stands in for the web server when ``web.enabled`` is false."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _web_server(settings: Settings, ledger: Ledger, models: dict[str, LoadedModel],
                queued: bool) -> WebServer | _NoWeb:
    """The HTTP API (not started yet), its port checked like the DICOM one; where workers
    run the models, this process loads none and ``/readyz`` expects none."""
    if not settings.web.enabled:
        return _NoWeb()
    check_port_free(settings.web.host, settings.web.port)
    return WebServer(WebContext.of(ledger, settings, models, () if queued else None))


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the node until SIGTERM/SIGINT (or ``stop`` is set).

    Settings problems (``node.preflight``: var_dir, database, de-identification, models,
    address, certificates) are all found before anything starts and raised as one ConfigError.
    """
    queued = settings.workers.enabled
    models = _checked_models(settings, load=not queued)
    audit_sender = audit_forward.sender_of(settings)  # a settings problem stops us here
    lock = _lock_var_dir(settings.var_path)
    # before any metric is made here and before the receiving processes start (they inherit it)
    metrics.share_between_processes(settings.var_path / "metrics")
    profile, keys = open_deid(settings, create_default_key=True)
    spool = open_spool(settings)
    leftovers = spool.prepare()
    if leftovers:
        log.info("removed %d unacknowledged partial receptions from incoming/", leftovers)
    ledger = open_ledger(settings, create=True)
    check_port_free(settings.node.host, settings.node.port)
    stop_auditing = audit_forward.start(ledger.engine, settings, audit_sender)
    web = _web_server(settings, ledger, models, queued)
    # keyed names before anything reads the spool; again for files recovery recorded
    migrated = migrate_names(spool, ledger.engine)
    if begin_run(settings.var_path):
        restored = reconcile(spool, ledger, settings.completion.required_series)
        log.warning(
            "the previous run did not stop cleanly; %d spool files were missing from the "
            "ledger and were recorded again", restored,
        )
        if restored:
            migrated = migrate_names(spool, ledger.engine, force=True)
    log_migrated(migrated)
    receiver = start_receiver(settings, ledger, spool)
    children = spawn_receivers(settings, settings.scp.receivers - 1)
    ctx = StageContext(ledger, spool, profile, keys, PseudonymStore(ledger.engine, keys), models,
                       settings)
    preload.start()  # for the stages here; with workers, a second of CPU once, in vain
    flow = Flow(ledger, settings, Deliverer(ctx.outbox, Peers(settings, ctx.outbox_root)),
                None if queued else ctx)
    scheduler: EmbeddedRunner | ReceiverRunner = (
        ReceiverRunner(flow, spool, settings) if queued else EmbeddedRunner(flow, spool, settings))
    scheduler.start()
    web.start()
    log.info(
        "dicom-node %s listening as %s on %s:%d%s, %d receiving process(es), ledger %s%s",
        __version__, settings.node.ae_title, settings.node.host, settings.node.port,
        " (TLS)" if settings.scp.tls.enabled else "", settings.scp.receivers,
        ledger.engine.dialect.name,
        f"; stages on workers (queues {settings.workers.queue_prefix}.*)" if queued else "",
    )
    stop = stop or threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        stop.wait()
    finally:
        log.info("stopping: no new associations; waiting for running ones")
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        web.stop()
        stop_auditing()
        scheduler.shutdown(wait=False)
        receiver.stop()
        for child in children:
            child.join(timeout=15)
            if child.is_alive():
                child.kill()
        ledger.engine.dispose()
        end_run(settings.var_path)
        lock.handle.close()
        log.info("stopped")


def work(settings: Settings, stages: Collection[Stage],
         model_names: tuple[str, ...] | None = None) -> None:
    """Run one Celery worker (``dicom-node worker``) until SIGTERM: the given stages' queues,
    one task at a time, on the shared var_dir and ledger. Inference only with ``model_names``
    (default: the enabled models) loaded, and only from the de-identified copies."""
    names = settings.models.enabled if model_names is None else model_names
    # the build stage needs the models' manifests (their codes and result templates) too
    models = _checked_models(settings, load=bool({Stage.INFER, Stage.BUILD} & set(stages)),
                             names=names)
    profile, keys = open_deid(settings, create_default_key=False)
    spool = open_spool(settings)
    ledger = open_ledger(settings)
    ctx = StageContext(ledger, spool, profile, keys, PseudonymStore(ledger.engine, keys), models,
                       settings)
    preload.start()
    app = make_app(settings)
    flow = Flow(ledger, settings, Deliverer(ctx.outbox, Peers(settings, ctx.outbox_root)), ctx,
                CeleryRunner(app, settings))
    register(app, flow)
    queues = [queue_name(settings, stage, names) for stage in stages]
    log.info("dicom-node %s worker: queues %s, ledger %s", __version__, ", ".join(queues),
             ledger.engine.dialect.name)
    # a lost broker connection is one line, not Celery's traceback (it reconnects by itself)
    logging.getLogger("celery.worker.consumer.consumer").addFilter(_no_traceback)
    # the node's own line per task says which worker took which job; not Celery's two more
    for chatty in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    worker = app.Worker(hostname=f"dicom-node-{os.getpid()}@%h",
                        queues=queues, pool="solo", concurrency=1,
                        loglevel=settings.node.log_level,
                        without_heartbeat=True, without_mingle=True, without_gossip=True,
                        quiet=True)
    try:
        worker.start()
    finally:
        ledger.engine.dispose()
        log.info("worker stopped")


def _no_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True
