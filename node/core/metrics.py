"""The node's Prometheus metrics: one short call where each thing happens, gauges at scrape time.

Counters and histograms are counted where things happen, each by one call of this module
(``metrics.instance_received()`` on the wire, ``metrics.stage_done(...)`` in the flow ...), so
the places that count stay one line each and know nothing of Prometheus. What describes the
ledger (studies per state, live outbox items, free disk) is not counted at all: it is read
when Prometheus scrapes (:class:`LedgerGauges`), by a group-by over indexed columns.

Several receiving processes. ``serve`` with ``scp.receivers = 2`` receives in separate
processes, and a scrape must add their counts up. prometheus-client's multiprocess mode does
that: each process writes its values to a small mmap file in one folder, and the scrape merges
the folder (``MultiProcessCollector``). prometheus-client chooses between in-memory and mmap
values once, when ``prometheus_client.values`` is first imported, from the environment variable
``PROMETHEUS_MULTIPROC_DIR``. ``serve`` learns its folder (under var_dir) only after the
settings are read, which is after the node's modules, and so prometheus-client, were imported:
:func:`share_between_processes` sets the variable (the receiving processes, started later with
``spawn``, inherit it and import prometheus-client with it already set) and has this process
choose again, through the same function prometheus-client uses, before any metric exists
(metrics are made on first use, or by that call). Anywhere else (tests, the CLI, a worker) the
values stay in memory; workers expose nothing for now.

Labels come from fixed sets only: the rejection reasons and association outcomes below, the
flow's stage names, outbox kinds and outcomes, job and item states, configured model names.
Never a UID, AE title, address or anything about a patient.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from node.core import db, rollup
from node.core.jobstate import JobState
from node.core.outbox import ItemState, Kind, Outcome

#: the environment variable prometheus-client reads (see the module docstring)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: what :func:`exposition` returns, for the HTTP response
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Rejection(StrEnum):
    """Why a received instance was not filed (the ``reason`` label)."""

    #: free disk under var_dir below scp.min_free_disk_mb (Out of Resources)
    DISK_FULL = "disk_full"
    #: the ledger could not record it, or the spool could not place it (Out of Resources)
    NOT_RECORDED = "not_recorded"
    #: not a DICOM data set, or its identifying attributes missing or invalid (Cannot Understand)
    CANNOT_UNDERSTAND = "cannot_understand"
    #: the data set's SOP Class or Instance UID differs from the request's
    SOP_CLASS_MISMATCH = "sop_class_mismatch"
    #: a C-STORE request without a data set or without usable Affected SOP UIDs
    BAD_REQUEST = "bad_request"
    #: an unexpected error in the node (Processing Failure; the file is quarantined)
    INTERNAL_ERROR = "internal_error"


class Association(StrEnum):
    """What became of an association request (the ``outcome`` label)."""

    ACCEPTED = "accepted"
    #: refused by the node (caller or called AE title) or by pynetdicom (too many)
    REJECTED = "rejected"
    #: ended by an A-ABORT, from either side
    ABORTED = "aborted"


_OUTCOMES: tuple[Outcome, ...] = ("delivered", "transient", "permanent")
#: seconds: a stage takes from a few ms (completion) to minutes (a large model on a CPU)
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_INFERENCE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class _Metrics:
    received: Counter
    rejected: Counter
    associations: Counter
    stage_seconds: Histogram
    deliveries: Counter
    inference_seconds: Histogram

    def all(self) -> tuple[Counter | Histogram, ...]:
        return (self.received, self.rejected, self.associations, self.stage_seconds,
                self.deliveries, self.inference_seconds)


def _new_metrics() -> _Metrics:
    """The metrics, registered nowhere (each scrape builds its registry); every label value of
    a fixed set starts at 0, so that a series exists before its first event."""
    made = _Metrics(
        received=Counter("dicom_node_instances_received", "Instances received and filed "
                         "(Success answered).", registry=None),
        rejected=Counter("dicom_node_instances_rejected", "Instances answered with a failure "
                         "status, by reason.", ["reason"], registry=None),
        associations=Counter("dicom_node_associations", "Association requests to the node's "
                             "SCP, by outcome.", ["outcome"], registry=None),
        stage_seconds=Histogram("dicom_node_stage_seconds", "Seconds a stage of the flow took "
                                "for each job it moved on.", ["stage"], registry=None,
                                buckets=_STAGE_BUCKETS),
        deliveries=Counter("dicom_node_deliveries", "Outbox delivery attempts, by kind and "
                           "outcome.", ["kind", "outcome"], registry=None),
        inference_seconds=Histogram("dicom_node_model_inference_seconds", "Seconds a model's "
                                    "prediction took.", ["model"], registry=None,
                                    buckets=_INFERENCE_BUCKETS),
    )
    for reason in Rejection:
        made.rejected.labels(reason.value)
    for outcome in Association:
        made.associations.labels(outcome.value)
    for kind in Kind:
        for result in _OUTCOMES:
            made.deliveries.labels(kind.value, result)
    return made


_lock = threading.Lock()
_made: _Metrics | None = None
_shared: Path | None = None


def _metrics() -> _Metrics:
    made = _made
    return made if made is not None else _make()


def _make() -> _Metrics:
    global _made
    with _lock:
        if _made is None:
            _made = _new_metrics()
        return _made


# ------------------------------------------------------------------ the hooks


def instance_received() -> None:
    """An instance was filed and answered Success."""
    _metrics().received.inc()


def instance_rejected(reason: Rejection) -> None:
    """An instance was answered with a failure status."""
    _metrics().rejected.labels(reason.value).inc()


def association(outcome: Association) -> None:
    """An association request was accepted or rejected, or an association aborted."""
    _metrics().associations.labels(outcome.value).inc()


def stage_done(stage: str, seconds: float) -> None:
    """A stage of the flow (one of ``node.pipeline.flow.Stage``) moved a job on."""
    _metrics().stage_seconds.labels(stage).observe(seconds)


def delivery(kind: Kind, outcome: Outcome) -> None:
    """One delivery attempt of an outbox item ended."""
    _metrics().deliveries.labels(kind.value, outcome).inc()


def inference(model: str, seconds: float) -> None:
    """A configured model predicted on one series."""
    _metrics().inference_seconds.labels(model).observe(seconds)


# ------------------------------------------------------------------ several processes


def share_between_processes(folder: Path) -> None:
    """Count in ``folder``, with every process started from here on (``serve``).

    Empties the folder (counts start at zero with each run, as the in-memory ones would), sets
    ``PROMETHEUS_MULTIPROC_DIR`` for the children and makes prometheus-client choose its value
    class again (it chose at import, when the variable was not set yet); then makes this
    process's metrics, so that every series exists from the start.
    """
    global _made, _shared
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):
        old.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)
    with _lock:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _made, _shared = None, folder
    _make()


# ------------------------------------------------------------------ the scrape


def exposition(*collectors: Collector) -> bytes:
    """The Prometheus text of this node's counters and histograms (all its processes' when
    shared) and of ``collectors`` (the ledger's gauges)."""
    registry = CollectorRegistry()
    if _shared is not None:
        MultiProcessCollector(registry, str(_shared))  # type: ignore[no-untyped-call]
    else:
        for metric in _metrics().all():
            registry.register(metric)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


@dataclass(frozen=True)
class LedgerGauges:
    """The ledger's gauges, read at each scrape: studies per state (the kept state counts), the
    outbox's live items (PENDING, FAILED: the index on state; delivered ones are history,
    counted by ``dicom_node_deliveries_total``) and the free disk under var_dir."""

    engine: Engine
    var_path: Path

    def collect(self) -> Iterable[Metric]:
        studies = GaugeMetricFamily("dicom_node_studies", "Jobs (studies) in the ledger, by "
                                    "state.", labels=["state"])
        counts = study_counts(self.engine)
        for state in JobState:
            studies.add_metric([state.value], counts.get(state.value, 0))
        yield studies
        items = GaugeMetricFamily("dicom_node_outbox_items", "Outbox items waiting (PENDING) "
                                  "or dead-lettered (FAILED), by kind.", labels=["kind", "state"])
        live = live_outbox_counts(self.engine)
        for kind in Kind:
            for item_state in _LIVE:
                items.add_metric([kind.value, item_state.value],
                                 live.get((kind.value, item_state.value), 0))
        yield items
        yield GaugeMetricFamily("dicom_node_spool_free_bytes", "Free bytes on the file system "
                                "of var_dir (the spool).", value=_free_bytes(self.var_path))


_LIVE = (ItemState.PENDING, ItemState.FAILED)


def study_counts(engine: Engine) -> dict[str, int]:
    """Jobs per state, from the counts the ledger keeps with every transition (``state_counts``,
    one row a state): a group-by over the studies would grow with the history."""
    with db.reader(engine) as conn:
        return rollup.states(conn)


def live_outbox_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """PENDING and FAILED outbox items per (kind, state), found through the index on state."""
    o = db.outbox.c
    query = (select(o.kind, o.state, func.count())
             .where(o.state.in_([x.value for x in _LIVE])).group_by(o.kind, o.state))
    with db.reader(engine) as conn:
        return {(str(kind), str(state)): int(n) for kind, state, n in conn.execute(query)}


def _free_bytes(path: Path) -> float:
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return float("nan")
