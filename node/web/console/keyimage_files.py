"""Key images from the node's own stored data, cached on disk (the I/O around ``keyimages``).

A model run's key images are its key slices and heatmap slices (``result.json`` in its result
folder names them, by their index in the volume and the volume's pseudonymous slice UIDs).
Their pixels come from the study's de-identified copy (``<var_dir>/deid/<study key>/``, the
data the model saw), their overlay from the run's stored masks and heatmaps. Nothing is read
from the original instances, so no image carries more than the model saw.

Each rendered PNG is kept under ``<var_dir>/cache/key-images/<job id>/`` named by the run's
id, the slice's index and the preset (or ``overlay``): numbers and preset names, nothing about
the patient. A request renders at most one slice (one file read), or, for an overlay, the
overlays of its run's key images at once (one read of the run's masks); every later request
for the same image reads the cached file. Files go through ``node.core.at_rest``: encrypted
on disk when ``[storage] encrypt`` is on. The folder where the de-identified copy's slices are
found is cached too (``slices-g<generation>.json``: pseudonymous UIDs to file names), so the
copy's headers are read once per generation.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from sqlalchemy import func, select, true

from node.core import at_rest, db
from node.core.errors import ConfigError, PermanentError
from node.core.ledger import StudyRow
from node.core.spool import open_spool
from node.pipeline.infer.stored import load_result
from node.web.console import keyimages
from node.web.console.keyimages import Preset
from node.web.context import WebContext

#: segment types that make a CT run open in the lung window (SNOMED CT: lung, right, left)
_LUNG_CODES = {("SCT", "39607008"), ("SCT", "3341006"), ("SCT", "44029006")}
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, InvalidDicomError, PermanentError,
                ConfigError, AttributeError)


class NotAvailable(Exception):
    """The image cannot be shown: no such run or slice, or its data is no longer on disk.
    The message names job, run and slice numbers only."""


@dataclass(frozen=True)
class Run:
    id: int
    model: str
    version: str
    generation: int
    folder: Path
    record: dict[str, Any]

    @property
    def slices(self) -> list[int]:
        """The run's key images: its key slices, then its heatmap slices, at most MAX_IMAGES."""
        count = len(self.record.get("slice_uids", []))
        heatmaps = [h["slice_index"] if isinstance(h, dict) else h  # format 3, format 2
                    for h in self.record.get("heatmaps", [])]
        wanted = [*self.record.get("key_slices", []), *heatmaps]
        found = [int(i) for i in dict.fromkeys(wanted) if 0 <= int(i) < count]
        return found[:keyimages.MAX_IMAGES]

    @property
    def lung(self) -> bool:
        return any((s["type"]["scheme"], s["type"]["value"]) in _LUNG_CODES
                   for s in self.record.get("segments", []))


def _record(folder: Path) -> dict[str, Any]:
    value = json.loads(at_rest.read_bytes(folder / "result.json").decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("result.json is not an object")
    return value


def _runs(ctx: WebContext, study_id: int, run_id: int | None = None) -> list[Run]:
    r = db.results.c
    query = (select(r.id, r.model, r.model_version, r.generation, r.folder)
             .where(r.study_id == study_id, r.current == true()).order_by(r.model))
    if run_id is not None:
        query = query.where(r.id == run_id)
    with db.reader(ctx.ledger.engine) as conn:
        rows = list(conn.execute(query))
    out = []
    for row in rows:
        folder = ctx.settings.var_path / row.folder
        try:
            record = _record(folder)
        except _READ_ERRORS:
            continue  # a run whose files are gone has no key images; its row still shows
        out.append(Run(row.id, row.model, row.model_version, row.generation, folder, record))
    return out


def modality(ctx: WebContext, study_id: int) -> str:
    """The modality of most of the job's instances ("" when none is recorded)."""
    i = db.instances.c
    query = (select(i.modality).where(i.study_id == study_id).group_by(i.modality)
             .order_by(func.count().desc()).limit(1))
    with db.reader(ctx.ledger.engine) as conn:
        return str(conn.execute(query).scalar() or "")


def _legend(run: Run) -> list[dict[str, Any]]:
    record = run.record
    entries = []
    for n, s in enumerate(record.get("segments", [])):
        values = [(m["value"], m["unit"]) for m in record.get("measurements", [])
                  if m.get("segment_label") == s["label"]]
        entries.append({"name": s["name"], "colour": n % len(keyimages.PALETTE),
                        "values": values})
    return entries


def panel(ctx: WebContext, row: StudyRow, preset_name: str) -> list[dict[str, Any]]:
    """The Study page's key images: per current run with key slices, its presets, the one
    chosen (``preset_name`` where it suits the modality, else the run's default) and the URL
    of each layer of each image."""
    kind = modality(ctx, row.id)
    presets = keyimages.presets_for(kind)
    available = _copy_on_disk(ctx, row)
    out = []
    for run in _runs(ctx, row.id):
        if not run.slices:
            continue
        chosen = next((p for p in presets if p.name == preset_name),
                      keyimages.default_preset(kind, run.lung))
        count = len(run.record["slice_uids"])
        base = f"/studies/{row.id}/key-images/{run.id}"
        out.append({
            "id": run.id, "model": run.model, "version": run.version, "presets": presets,
            "preset": chosen, "legend": _legend(run), "heatmap": bool(run.record.get("heatmaps")),
            "available": available,
            "images": [{"index": i, "number": i + 1, "count": count,
                        "key": i in run.record.get("key_slices", []),
                        "base": f"{base}/{i}/image.png?preset=",
                        "overlay": f"{base}/{i}/overlay.png"} for i in run.slices]})
    return out


def _copy_on_disk(ctx: WebContext, row: StudyRow) -> bool:
    """Whether the study's de-identified copy, which the images are drawn from, is still kept
    (retention removes it; the page then says so instead of showing broken images)."""
    try:
        spool = open_spool(ctx.settings)
    except ConfigError:
        return False
    folder = spool.deid_dir(row.study_instance_uid)
    return folder.is_dir() and next(folder.glob("*.dcm"), None) is not None


def _run(ctx: WebContext, row: StudyRow, run_id: int, index: int) -> Run:
    found = _runs(ctx, row.id, run_id)
    if not found:
        raise NotAvailable(f"job #{row.id} has no current model run #{run_id} with stored "
                           "results")
    if index not in found[0].slices:
        raise NotAvailable(f"slice {index} is not a key image of model run #{run_id}")
    return found[0]


def _cache(ctx: WebContext, row: StudyRow) -> Path:
    folder = ctx.settings.var_path / "cache" / "key-images" / str(row.id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _put(path: Path, data: bytes) -> None:
    """Write a cache file whole or not at all (a reader never sees half a PNG)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    at_rest.write_bytes(tmp, data)
    os.replace(tmp, path)


def _cached(path: Path) -> bytes | None:
    try:
        return at_rest.read_bytes(path)
    except (OSError, PermanentError):
        return None


def _slice_files(ctx: WebContext, row: StudyRow, run: Run) -> dict[str, str]:
    """Pseudonymous SOP Instance UID -> file name in the de-identified copy (cached)."""
    cache = _cache(ctx, row) / f"slices-g{run.generation}.json"
    known = _cached(cache)
    if known is not None:
        value = json.loads(known)
        if isinstance(value, dict):
            return value
    try:
        spool = open_spool(ctx.settings)
    except ConfigError as exc:
        raise NotAvailable(f"the de-identified copy of job #{row.id} cannot be read "
                           "(no storage key)") from exc
    folder = spool.deid_dir(row.study_instance_uid)
    files: dict[str, str] = {}
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
        try:
            ds = at_rest.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except _READ_ERRORS:
            continue
        files[str(ds.SOPInstanceUID)] = path.name
    if not files:
        raise NotAvailable(f"the de-identified copy of job #{row.id} is no longer on disk")
    _put(cache, json.dumps(files).encode())
    return files


def _slice(ctx: WebContext, row: StudyRow, run: Run, index: int) -> tuple[np.ndarray, str, bool]:
    """The de-identified slice's values in physical units, its modality, and whether it is
    MONOCHROME1."""
    uid = run.record["slice_uids"][index]
    name = _slice_files(ctx, row, run).get(uid)
    if name is None:
        raise NotAvailable(f"slice {index} of model run #{run.id} is not in the de-identified "
                           f"copy of job #{row.id}")
    spool = open_spool(ctx.settings)
    path = spool.deid_dir(row.study_instance_uid) / name
    try:
        ds = at_rest.dcmread(path)
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError("a multi-frame image")
        values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    except _READ_ERRORS as exc:
        raise NotAvailable(f"slice {index} of model run #{run.id} cannot be read "
                           f"({type(exc).__name__})") from exc
    if values.ndim != 2:
        raise NotAvailable(f"slice {index} of model run #{run.id} is not a grey image")
    return (values, str(ds.get("Modality", "")),
            ds.get("PhotometricInterpretation") == "MONOCHROME1")


class WrongPreset(Exception):
    """The preset does not suit the slice's modality."""


def image(ctx: WebContext, row: StudyRow, run_id: int, index: int, preset: Preset) -> bytes:
    """The grey layer of a key image under ``preset`` (from the cache when rendered before)."""
    run = _run(ctx, row, run_id, index)
    path = _cache(ctx, row) / f"r{run.id}-{index}-{preset.name}.png"
    if (found := _cached(path)) is not None:
        return found
    values, kind, inverted = _slice(ctx, row, run, index)
    if preset not in keyimages.presets_for(kind):
        raise WrongPreset(f"the {preset.name} preset does not suit a {kind or 'non-CT'} image")
    data = keyimages.base_png(values, preset, inverted=inverted)
    _put(path, data)
    return data


def overlay(ctx: WebContext, row: StudyRow, run_id: int, index: int) -> bytes:
    """The transparent layer of a key image; the first request renders the overlays of all
    the run's key images (one read of its masks)."""
    run = _run(ctx, row, run_id, index)
    cache = _cache(ctx, row)
    path = cache / f"r{run.id}-{index}-overlay.png"
    if (found := _cached(path)) is not None:
        return found
    try:
        result, _uids = load_result(run.folder)
    except PermanentError as exc:
        raise NotAvailable(f"the stored result of model run #{run.id} cannot be read") from exc
    rendered: dict[int, bytes] = {}
    for i in run.slices:
        heat = next((h.values for h in result.heatmaps if h.slice_index == i), None)
        masks = [s.mask[i] for s in result.segments]
        shapes = {m.shape for m in masks} | ({heat.shape} if heat is not None else set())
        if not shapes:  # a classifier's key slice without a heatmap: the banner alone
            shapes = {_slice(ctx, row, run, i)[0].shape}
        if len(shapes) != 1:
            raise NotAvailable(f"the masks of model run #{run.id} do not match slice {i}")
        rendered[i] = keyimages.overlay_png(shapes.pop(), masks, heat,
                                            f"{run.model} {run.version}")
        _put(cache / f"r{run.id}-{i}-overlay.png", rendered[i])
    return rendered[index]
