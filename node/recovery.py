"""Start-up recovery after an unclean stop (crash, kill -9, power loss).

Acknowledged instances are always fsynced files in the spool before the ledger commit. With
SQLite in WAL mode and ``synchronous = NORMAL`` a commit survives a crash of the node but the
last commits may roll back on power loss; and a crash between rename and commit leaves a file
that was never acknowledged. Either way the spool is the ground truth: every spool file missing
from the ledger is read and recorded again. This runs only when the previous run did not stop
cleanly (its ``running`` marker is still there).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from node.config import RequiredSeries
from node.errors import UnidentifiableInstance
from node.ledger import Ledger, ReceivedInstance
from node.pipeline.completion import matching_rules
from node.scp.identify import identify
from node.spool import Spool, fsync_dir

log = logging.getLogger("node.recovery")

MARKER = "running"


def begin_run(var: Path) -> bool:
    """Mark this run as started; return True if the previous one did not stop cleanly."""
    marker = var / MARKER
    unclean = marker.exists()
    marker.touch()
    fsync_dir(var)
    return unclean


def end_run(var: Path) -> None:
    (var / MARKER).unlink(missing_ok=True)


def reconcile(spool: Spool, ledger: Ledger, rules: tuple[RequiredSeries, ...]) -> int:
    """Record every spool file the ledger does not know; return how many were added."""
    known = ledger.known_paths()
    added = 0
    for path in spool.store.rglob("*.dcm"):
        relative = path.relative_to(spool.store).as_posix()
        if relative in known:
            continue
        try:
            instance = _describe(path, rules)
        except UnidentifiableInstance as exc:  # cannot happen for files the SCP placed
            log.error("spool file %s cannot be read back: %s", relative, exc)
            continue
        ledger.record_instance(instance, relative, place=lambda: None)
        added += 1
    return added


def _describe(path: Path, rules: tuple[RequiredSeries, ...]) -> ReceivedInstance:
    meta = pydicom.filereader.read_file_meta_info(path)
    ident = identify(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )
    return ReceivedInstance(
        sop_instance_uid=ident.sop_instance_uid,
        sop_class_uid=ident.sop_class_uid,
        study_instance_uid=ident.study_instance_uid,
        series_instance_uid=ident.series_instance_uid,
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        modality=ident.modality,
        matched_rules=matching_rules(rules, ident.modality, ident.series_description),
        size_bytes=path.stat().st_size,
        calling_ae_title="",
    )
