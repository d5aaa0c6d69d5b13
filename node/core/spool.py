"""The spool: received objects on local disk, placed durably and named without patient data.

Layout under ``var_dir``::

    incoming/    data being received (pynetdicom streams each data set here); never acknowledged
    spool/ab/<study key>/<instance key>.dcm    acknowledged instances, stored as received
    quarantine/<time>-<random>.dcm             objects kept for inspection, reason in the ledger

Keys are BLAKE2b digests of the UIDs keyed with a key derived from the node's secret
(``node.core.at_rest``), so no UID or other identifier appears in a path, and knowing a UID does not
tell which folder holds it. Placement is: fsync the file, rename it into place (atomic on one
file system), fsync the directory. Only then is the ledger row committed and the sender told
"success". With ``[storage] encrypt`` the file is encrypted at placement instead (written
encrypted and synced beside the received one, renamed into place, the plain one removed).

Every reader of stored files goes through :meth:`Spool.read_bytes` / :meth:`Spool.open_dataset`
or ``node.core.at_rest`` (``read_bytes``, ``dcmread``), which decrypt what is encrypted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

from node.core import at_rest
from node.core.at_rest import StorageKeys
from node.core.errors import OutOfResources
from node.core.keys import key_file_for, load_secret
from node.core.settings import Settings


def fsync_file(path: Path) -> None:
    """Flush a file's data (and the size needed to read it back) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _libc_sync_file_range() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return func


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux).

    Called while a data set is still arriving, so that the fdatasync before the answer has
    little left to write. Durability still rests on that fdatasync; this is only a head start
    (a no-op where the call is missing).
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sealed(received: Path) -> Path:
    """Where a received file's encrypted copy is written, beside it in incoming/."""
    return received.with_name(received.name + ".sealed")


def open_spool(settings: Settings) -> Spool:
    """The node's spool with its keys, and this process set up to read (and, with
    ``[storage] encrypt``, write) encrypted files. Every process of the node calls this: the
    keys come from the same key file (``deid.key_file``, ``$DICOM_NODE_DEID_KEY`` or the
    embedded default ``<var_dir>/deid.key``). Raises ConfigError without a key."""
    secret = load_secret(key_file_for(settings.deid.key_file, settings.var_path))
    keys = StorageKeys.from_secret(secret)
    at_rest.configure(keys.files, encrypt=settings.storage.encrypt)
    return Spool(settings.var_path, settings.scp.min_free_disk_mb * 2**20, keys)


@dataclass(frozen=True)
class Spool:
    root: Path  # var_dir
    min_free_bytes: int
    keys: StorageKeys

    def key(self, uid: str) -> str:
        """A folder or file name for a UID (keyed: see the module docstring)."""
        return self.keys.name(uid)

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def store(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def deid_dir(self, study_uid: str) -> Path:
        """The study's de-identified copy (written by the de-identification stage, read by the
        models and by the console's key images)."""
        return self.root / "deid" / self.key(study_uid)

    def prepare(self) -> int:
        """Create the directories; remove leftovers of interrupted receptions. Returns their count.

        A file still in ``incoming/`` was never acknowledged to its sender (acknowledgement
        happens only after it was renamed out), so the sender will send it again.
        """
        for d in (self.incoming, self.store, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.incoming.iterdir():
            if leftover.is_file():
                leftover.unlink()
                removed += 1
        return removed

    def remove_stale_incoming(self, max_age_s: float) -> int:
        """Delete receptions abandoned mid-transfer (the sender aborted or vanished).

        pynetdicom keeps writing a file while its data set arrives; one untouched for
        ``max_age_s`` belongs to an association that is gone. Nothing in incoming/ was ever
        acknowledged.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        for path in self.incoming.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # placed or removed meanwhile
        return removed

    def check_free_space(self) -> None:
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise OutOfResources(
                f"free disk space {free // 2**20} MiB is below the configured "
                f"minimum of {self.min_free_bytes // 2**20} MiB"
            )

    def relative_path(self, study_uid: str, sop_uid: str) -> str:
        study = self.key(study_uid)
        return f"{study[:2]}/{study}/{self.key(sop_uid)}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.store / relative

    def read_bytes(self, relative: str) -> bytes:
        """A spool file's bytes as received (decrypted if it is stored encrypted)."""
        return at_rest.read_bytes(self.store / relative)

    def open_dataset(self, relative: str, **kwargs: Any) -> pydicom.Dataset:
        """``pydicom.dcmread`` of a spool file, encrypted or not (keyword arguments as there)."""
        return at_rest.dcmread(self.store / relative, **kwargs)

    def place(self, received: Path, relative: str) -> None:
        """Durably move an already fsynced file to ``spool/<relative>`` (encrypted on the way
        when storage encryption is on)."""
        dest = self.store / relative
        parent = dest.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(parent.parent)
            fsync_dir(parent.parent.parent)
        self._move(received, dest)

    def settle(self, received: Path) -> None:
        """Make a received file durable for placement: fsync it, or with encryption write its
        encrypted copy beside it and sync that (the plain one need not survive a crash).

        The receive path runs this beside the header read and the ledger statements, so
        encrypting costs the answer little more than the fsync it replaces.
        """
        if not at_rest.encrypting():
            fsync_file(received)
            return
        sealed = _sealed(received)
        sealed.unlink(missing_ok=True)
        at_rest.seal_file(received, sealed)

    def _move(self, received: Path, dest: Path) -> None:
        """Rename ``received`` to ``dest`` and sync the folder; with encryption, rename its
        encrypted copy (written now unless :meth:`settle` did) and remove the plain one (a
        crash in between leaves it in incoming/, cleared at the next start)."""
        sealed = _sealed(received)
        if not at_rest.encrypting() and not sealed.exists():
            os.replace(received, dest)
            fsync_dir(dest.parent)
            return
        if not sealed.exists():
            at_rest.seal_file(received, sealed)
        os.replace(sealed, dest)
        fsync_dir(dest.parent)
        received.unlink()

    def quarantined(self, name: str) -> Path:
        """The file of a quarantined object (``name`` as the ledger's quarantine row holds it;
        a bare file name, never a path that leaves quarantine/)."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError("a quarantined object's name is a bare file name")
        return self.quarantine_dir / name

    def remove_quarantined(self, name: str) -> None:
        """Delete a quarantined object's file, durably (gone already is fine)."""
        self.quarantined(name).unlink(missing_ok=True)
        fsync_dir(self.quarantine_dir)

    def discard(self, received: Path) -> None:
        """Remove a file in incoming/ that was not placed, and its encrypted copy if any."""
        received.unlink(missing_ok=True)
        _sealed(received).unlink(missing_ok=True)

    def quarantine(self, received: Path) -> str:
        """Durably move a received file into ``quarantine/``; return its new name."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}.dcm"
        if not at_rest.encrypting():
            fsync_file(received)
        self._move(received, self.quarantine_dir / name)
        return name
