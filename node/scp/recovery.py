"""Start-up recovery after an unclean stop (crash, kill -9, power loss).

Acknowledged instances are always fsynced files in the spool before the ledger commit. With
SQLite in WAL mode and ``synchronous = NORMAL`` a commit survives a crash of the node but the
last commits may roll back on power loss; and a crash between rename and commit leaves a file
that was never acknowledged. Either way the spool is the ground truth: every spool file missing
from the ledger is read and recorded again. This runs only when the previous run did not stop
cleanly (its ``running`` marker is still there).

The scan costs what the last hour of receiving cost, not the history: a file missing from the
ledger was renamed into its study folder shortly before a commit that was lost, after the
newest commit that was kept, and a rename updates the folder's modification time. So only
study folders changed since an hour before the newest receipt in the ledger are listed, and each
is compared with that study's rows (read through the index on the study), never with every path
of the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pydicom

from node.core import at_rest
from node.core.errors import UnidentifiableInstance, UnknownStudy
from node.core.ledger import Ledger, ReceivedInstance
from node.core.series_rules import matching_rules
from node.core.settings import RequiredSeries
from node.core.spool import Spool, fsync_dir
from node.scp.identify import identify

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


#: how far before the newest receipt in the ledger a lost commit's file may have been written:
#: the wait for the ledger's lock (ledger.busy_timeout_s) and the file's sync, with room to spare
SLACK_S = 3600.0


def reconcile(spool: Spool, ledger: Ledger, rules: tuple[RequiredSeries, ...]) -> int:
    """Record every recent spool file the ledger does not know; return how many were added."""
    newest = ledger.newest_receipt()
    cutoff = (-math.inf if newest is None
              else newest.replace(tzinfo=UTC).timestamp() - SLACK_S)
    added = 0
    for folder in _changed_folders(spool.store, cutoff):
        added += _reconcile_folder(spool, ledger, rules, folder)
    return added


def _changed_folders(store: Path, cutoff: float) -> Iterator[Path]:
    """Folders below ``store`` holding files, changed at or after ``cutoff`` (epoch seconds).

    Every folder is visited (a study folder's parent does not change when a file is added to
    it), but only those changed since the cutoff are listed.
    """
    pending = [store]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            subfolders = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        pending.extend(subfolders)
        if folder != store and folder.stat().st_mtime >= cutoff:
            yield folder


def _reconcile_folder(spool: Spool, ledger: Ledger, rules: tuple[RequiredSeries, ...],
                      folder: Path) -> int:
    """Record the folder's files that its study's rows do not name; return how many."""
    files = sorted(folder.glob("*.dcm"))
    known: set[str] = set()
    with contextlib.suppress(UnidentifiableInstance, UnknownStudy):
        if files:  # a folder holds one study (its key): one file says which
            study = ledger.study(_describe(spool, files[0], rules).study_instance_uid)
            known = set(ledger.instance_paths(study.id))
    added, studies = 0, set()
    for path in files:
        relative = path.relative_to(spool.store).as_posix()
        if relative in known:
            continue
        try:
            instance = _describe(spool, path, rules)
        except UnidentifiableInstance as exc:  # cannot happen for files the SCP placed
            log.error("spool file %s cannot be read back: %s", relative, exc)
            continue
        ledger.record_instance(instance, relative, place=lambda: None)
        added += 1
        studies.add(instance.study_instance_uid)
    for uid in studies:
        # the count on the study row follows its instance rows, whatever was lost
        ledger.recount(ledger.study(uid).id)
    return added


def _describe(spool: Spool, stored: Path, rules: tuple[RequiredSeries, ...]) -> ReceivedInstance:
    try:
        with at_rest.plain_file(stored, spool.incoming) as path:  # decrypted if encrypted
            meta = pydicom.filereader.read_file_meta_info(path)
            ident = identify(
                path,
                str(meta.MediaStorageSOPClassUID),
                str(meta.MediaStorageSOPInstanceUID),
                str(meta.TransferSyntaxUID),
            )
            size = path.stat().st_size
    except at_rest.SealedFileError as exc:
        raise UnidentifiableInstance(str(exc)) from None
    return ReceivedInstance(
        sop_instance_uid=ident.sop_instance_uid,
        sop_class_uid=ident.sop_class_uid,
        study_instance_uid=ident.study_instance_uid,
        series_instance_uid=ident.series_instance_uid,
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        modality=ident.modality,
        matched_rules=matching_rules(rules, ident.modality, ident.series_description),
        size_bytes=size,
        calling_ae_title="",
    )
