"""Renaming a spool to the node's keyed names, at start-up, before anything receives or reads.

Nodes before keyed names called a study's folder and an instance's file by the plain BLAKE2b
digest of its UID (anyone who knew the UID could compute it), and a node whose key changed
names new files differently. At each start, unless ``spool/.names`` already records the names
key in use, every instance whose ledger path is not its keyed name is renamed, and so are the
study's folders under ``deid/``, ``results/`` and ``outbox/`` (with the outbox rows' paths).

Crash-safe and idempotent: files are renamed (and their folders synced) before the ledger rows
that name them are updated, one study per transaction; a rerun finds each file either at its
old path (renamed now) or at its new one (only the row is updated), and a folder already moved
is left as it is. The marker is written last, so an interrupted migration runs again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, bindparam, select, update

from node.core import db
from node.core.spool import Spool, fsync_dir

log = logging.getLogger("node.spool")

MARKER = ".names"
#: folders under var_dir named by study key (the spool itself is two levels: xx/<key>/)
STUDY_ROOTS = ("deid", "results", "outbox")


def legacy_key(uid: str) -> str:
    """The name older nodes gave a UID: a BLAKE2b digest without a key."""
    return hashlib.blake2b(uid.encode("ascii", "replace"), digest_size=12).hexdigest()


@dataclass
class Migrated:
    studies: int = 0
    files: int = 0
    folders: int = 0
    missing: int = 0


def migrate_names(spool: Spool, engine: Engine, *, force: bool = False) -> Migrated:
    """Rename what is not under its keyed name yet (see the module docstring)."""
    marker = spool.store / MARKER
    names_id = spool.keys.names_id
    if not force and _read(marker) == names_id:
        return Migrated()
    done = Migrated()
    with db.reader(engine) as conn:
        studies = list(conn.execute(select(db.studies.c.id, db.studies.c.study_instance_uid)))
    for study_id, study_uid in studies:
        _study(spool, engine, int(study_id), str(study_uid), done)
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(names_id + "\n", encoding="ascii")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, marker)
    fsync_dir(spool.store)
    return done


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _study(spool: Spool, engine: Engine, study_id: int, study_uid: str, done: Migrated) -> None:
    with db.reader(engine) as conn:
        rows = list(conn.execute(
            select(db.instances.c.id, db.instances.c.sop_instance_uid, db.instances.c.path)
            .where(db.instances.c.study_id == study_id)))
        outbox = list(conn.execute(
            select(db.outbox.c.id, db.outbox.c.path).where(db.outbox.c.study_id == study_id)))
    new_key = spool.key(study_uid)
    old_keys = {Path(str(path)).parts[1] for _, _, path in rows
                if len(Path(str(path)).parts) == 3} | {legacy_key(study_uid)}
    old_keys.discard(new_key)
    moved = _instances(spool, study_uid, rows, done)
    folders = _study_folders(spool.root, old_keys, new_key, done)
    outbox_paths = _outbox_paths(outbox, old_keys, new_key)
    if moved or outbox_paths:
        with engine.begin() as conn:
            if moved:
                conn.execute(update(db.instances).where(db.instances.c.id == bindparam("row"))
                             .values(path=bindparam("new_path")), moved)
            if outbox_paths:
                conn.execute(update(db.outbox).where(db.outbox.c.id == bindparam("row"))
                             .values(path=bindparam("new_path")), outbox_paths)
    if moved or folders or outbox_paths:
        done.studies += 1
    for key in old_keys:  # the old study folder, now empty (rmdir refuses otherwise)
        _remove_empty(spool.store / key[:2] / key, spool.store / key[:2])


def _instances(spool: Spool, study_uid: str, rows: Iterable[tuple[object, ...]],
               done: Migrated) -> list[dict[str, object]]:
    """Rename each file not under its keyed name; return the rows to update."""
    moved: list[dict[str, object]] = []
    synced: set[Path] = set()
    for row_id, sop_uid, path in rows:
        want = spool.relative_path(study_uid, str(sop_uid))
        if path == want:
            continue
        src, dst = spool.absolute(str(path)), spool.absolute(want)
        if src.exists():
            if not dst.parent.is_dir():
                dst.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(dst.parent.parent)
                fsync_dir(spool.store)
            os.replace(src, dst)
            synced.update({src.parent, dst.parent})
            done.files += 1
        elif not dst.exists():
            done.missing += 1  # neither here nor there: leave the row as it is
            continue
        moved.append({"row": row_id, "new_path": want})
    for folder in synced:
        if folder.is_dir():
            fsync_dir(folder)
    return moved


def _study_folders(var: Path, old_keys: set[str], new_key: str, done: Migrated) -> int:
    """Rename ``deid/<old>``, ``results/<old>``, ``outbox/<old>``; drop half-written copies."""
    renamed = 0
    for root in (var / name for name in STUDY_ROOTS):
        if not root.is_dir():
            continue
        for old in old_keys:
            for leftover in root.glob(f"{old}.g*.tmp"):  # an interrupted de-identification
                _rmtree(leftover)
            src, dst = root / old, root / new_key
            if src.is_dir() and not dst.exists():
                os.replace(src, dst)
                fsync_dir(root)
                renamed += 1
    done.folders += renamed
    return renamed


def _outbox_paths(rows: Iterable[tuple[object, ...]], old_keys: set[str],
                  new_key: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for row_id, path in rows:
        first, _, rest = str(path).partition("/")
        if first in old_keys:
            out.append({"row": row_id, "new_path": f"{new_key}/{rest}"})
    return out


def _remove_empty(*folders: Path) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty, or gone


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def log_migrated(done: Migrated) -> None:
    if done.studies or done.missing:
        log.info("spool names keyed: %d studies, %d files and %d folders renamed%s",
                 done.studies, done.files, done.folders,
                 f"; {done.missing} ledger paths had no file" if done.missing else "")
