"""Tables the stages read on first use, loaded when a process that runs the stages starts.

De-identification asks which sequences an IOD requires (node.pipeline.deid.iod: about 0.6 s of
CPU to read highdicom's tables of PS3.3) and every SEG or SR that highdicom builds checks its
attributes against highdicom's own copy of those tables (about 0.3 s). Both are read once per
process and cached; without this, the first study after a start waits for them (measured with
bench/e2e.py, where every run starts a fresh node). :func:`start` reads them on a thread of
their own, so neither the start-up nor a study that arrives meanwhile waits for the whole of it
(a stage that needs a table before the thread has it reads it itself; both get equal tables).
"""

from __future__ import annotations

import logging
import threading
import time

from highdicom import _standard_utils as highdicom_tables  # internal: the cached loaders below

from node.pipeline.deid import iod

log = logging.getLogger("node.pipeline")


def preload() -> None:
    """Read and cache the tables (idempotent: a second call finds them cached)."""
    started = time.perf_counter()
    iod.sequence_types("")  # reads the tables; an unknown SOP Class gets no Types
    highdicom_tables.get_sop_class_iod_map()
    highdicom_tables.get_iod_module_map()
    highdicom_tables.get_module_attribute_map()
    log.debug("IOD tables loaded in %.2f s", time.perf_counter() - started)


def start() -> threading.Thread:
    """:func:`preload` on a daemon thread; returns the thread."""
    thread = threading.Thread(target=preload, name="preload-tables", daemon=True)
    thread.start()
    return thread
