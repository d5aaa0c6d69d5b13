"""The build stage: a study's stored model results become files and outbox items.

For each model that ran on the study's current generation: the result objects (SEG, SR, SC,
Encapsulated PDF, KOS) are built against the ORIGINAL source instances, so they belong to the
patient's own study; one ORU^R01 per HL7 destination; one notification per alert target when
the triage reaches ``delivery.alert_on``. Every file is written and fsynced under
``<var_dir>/outbox/<study key>/g<generation>/<model>/`` before the caller commits the outbox
rows, so a committed row always has its file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from node.core import at_rest
from node.core.contract import ResultContext
from node.core.errors import PermanentError
from node.core.manifest import Manifest
from node.core.outbox import Kind, NewItem
from node.core.settings import Settings
from node.hl7.oru import build_oru, message_header
from node.pipeline.build.alerts import alert_payload, dumps, should_alert
from node.pipeline.infer.stored import has_result, load_result
from node.sr_writer.bundle import ResultObjects, build_all

#: original source instances for the volume's pseudonymous slice UIDs, in the same order
SourceLookup = Callable[[tuple[str, ...]], tuple[Dataset, ...]]

#: values longer than this many bytes (the pixel data) are read from the file only when used
SOURCE_DEFER_BYTES = 16384


def read_source(path: Path) -> Dataset:
    """An original instance as the writers need it: its header now, its pixel data later.

    SEG, SR, KOS and the PDF use the sources' attributes only; the SC overlays use the pixels
    of a few slices. pydicom's deferred reading leaves every value longer than
    SOURCE_DEFER_BYTES in the file until it is accessed, so the writers build the same objects
    as from fully read instances, without loading the 150 MB of pixel data of a 300-slice CT.
    """
    return at_rest.dcmread(path, defer_size=SOURCE_DEFER_BYTES)


@dataclass(frozen=True)
class Job:
    id: int
    study_instance_uid: str
    generation: int


def build_outputs(
    job: Job, results: Path, out: Path, outbox_root: Path, manifests: dict[str, Manifest],
    sources: SourceLookup, settings: Settings, created: datetime,
) -> list[NewItem]:
    """Build and write every output of the job's model results; return the items to queue."""
    shutil.rmtree(out, ignore_errors=True)
    items: list[NewItem] = []
    folders = sorted(p for p in results.iterdir() if has_result(p)) if results.is_dir() else []
    for folder in folders:
        manifest = manifests.get(folder.name)
        if manifest is None:
            raise PermanentError(f"model {folder.name} is no longer enabled; its result cannot "
                                 "be built (enable it again, or force-complete the study)")
        result, slice_uids = load_result(folder)
        ctx = ResultContext(sources=sources(slice_uids), result=result, manifest=manifest,
                            job_key=f"{job.study_instance_uid}/{job.generation}/{folder.name}",
                            created=created)
        writer = _Writer(out / folder.name, outbox_root, manifest.name)
        objects = build_all_checked(ctx)
        items += _dicom(writer, objects, settings)
        items += _hl7(writer, ctx, settings, objects.pdf)
        items += _alerts(writer, ctx, job, settings)
        writer.sync()
    return items


def build_all_checked(ctx: ResultContext) -> ResultObjects:
    try:
        return build_all(ctx)
    except (ValueError, TypeError, KeyError) as exc:
        raise PermanentError(f"result objects of {ctx.manifest.name} cannot be built "
                             f"({type(exc).__name__})") from exc


class _Writer:
    """Writes one model's files, fsyncs them, and names them relative to the outbox root."""

    def __init__(self, folder: Path, root: Path, model: str) -> None:
        self.folder, self.root, self.model = folder, root, model
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        at_rest.write_bytes(path, data)
        self.files.append(path)
        return str(path.relative_to(self.root))

    def dataset(self, name: str, ds: Dataset) -> str:
        path = self.folder / name
        at_rest.save_dataset(ds, path)
        self.files.append(path)
        return str(path.relative_to(self.root))

    def sync(self) -> None:
        for path in self.files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in {self.folder, self.folder.parent, self.folder.parent.parent}:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _dicom(writer: _Writer, objects: ResultObjects, settings: Settings) -> list[NewItem]:
    items = []
    for stem, ds in objects.named():
        relative = writer.dataset(f"{stem}.dcm", ds)
        uid = str(ds.SOPInstanceUID)
        items += [NewItem(writer.model, Kind.DICOM, d.name, uid, stem, relative)
                  for d in settings.delivery.dicom]
        items += [NewItem(writer.model, Kind.STOW, d.name, uid, stem, relative)
                  for d in settings.delivery.stow]
    writer.write("report.pdf", objects.pdf)
    return items


def _hl7(writer: _Writer, ctx: ResultContext, settings: Settings, pdf: bytes) -> list[NewItem]:
    items = []
    for dest in settings.delivery.hl7:
        header = message_header(settings.hl7, dest, ctx.job_key, ctx.created)
        message = build_oru(ctx, header, settings.hl7, pdf if dest.include_pdf else None)
        relative = writer.write(f"oru-{dest.name}.hl7", message.encode("utf-8"))
        items.append(NewItem(writer.model, Kind.HL7, dest.name, header.control_id, "oru", relative))
    return items


def _alerts(writer: _Writer, ctx: ResultContext, job: Job, settings: Settings) -> list[NewItem]:
    if not should_alert(ctx.result.triage, settings.delivery.alert_on):
        return []
    items = []
    targets = [(Kind.WEBHOOK, t.name, t.include_identifiers) for t in settings.delivery.webhooks]
    targets += [(Kind.EMAIL, t.name, t.include_identifiers) for t in settings.delivery.email]
    for kind, name, identifiers in targets:
        payload = alert_payload(ctx, job.id, settings.node.ae_title, identifiers)
        relative = writer.write(f"alert-{name}.json", dumps(payload).encode("utf-8"))
        uid = "alert-" + hashlib.sha256(f"{ctx.job_key}|{name}".encode()).hexdigest()[:40]
        items.append(NewItem(writer.model, kind, name, uid, "alert", relative))
    return items
