"""A model result kept on disk between inference (INFERRED) and building the outputs (BUILT).

One folder per model run: ``result.json`` (everything but the arrays, with the volume's
pseudonymous slice UIDs), ``masks.npz`` (segment masks and heatmaps) and ``summary.json`` (the
human-readable summary). A restarted node builds from these files, not from memory. The files
hold de-identified data only: references are pseudonymous UIDs.

Segment masks are stored bit-packed (``np.packbits``, 8 voxels a byte; their shape is in
``result.json``) before the npz's deflate: two 300x512x512 lung masks then take about 0.15 s to
save and 0.1 s to load, where deflating the boolean arrays took 1 s each way. Format 1 results
(boolean masks) are still read. Format 3 keeps each heatmap's method and strongest regions and
stores heatmaps by their position in the result (``heatmap_at_<n>``: several methods may map the
same slice); format 2's heatmaps (``heatmap_<slice>``) are still read. Format 4 adds a
measurement's ``interval`` and the result's ``quality`` flag; a result without them (formats
1-3) reads back with none.

The files are written and read through ``node.core.at_rest``: encrypted with ``[storage] encrypt``
(the masks are image data), plain otherwise; either kind reads back.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from node.core import at_rest
from node.core.contract import (
    Finding,
    Geometry,
    Heatmap,
    HeatmapRegion,
    Interval,
    Measurement,
    ModelResult,
    QualityFlag,
    Segment,
    Triage,
)
from node.core.errors import PermanentError
from node.core.manifest import CodedConcept
from node.pipeline.infer.registry import LoadedModel
from node.pipeline.infer.summary import result_summary

FORMAT = 4


def save_result(
    folder: Path, loaded: LoadedModel, result: ModelResult, series_uid: str,
    slice_uids: tuple[str, ...],
) -> None:
    """Write the run's files; ``result.json`` last, so its presence means the run is whole."""
    folder.mkdir(parents=True, exist_ok=True)
    at_rest.write_bytes(folder / "summary.json", (
        json.dumps(result_summary(loaded, result, series_uid), indent=2) + "\n").encode())
    arrays = {f"segment_{s.label}": np.packbits(s.mask.astype(bool, copy=False), axis=None)
              for s in result.segments}
    arrays.update({f"heatmap_at_{n}": h.values for n, h in enumerate(result.heatmaps)})
    if arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        at_rest.write_bytes(folder / "masks.npz", buffer.getbuffer())
    record = {
        "format": FORMAT,
        "model": loaded.manifest.name,
        "series_instance_uid": series_uid,
        "slice_uids": list(slice_uids),
        "model_name": result.model_name,
        "model_version": result.model_version,
        "triage": result.triage.value,
        "key_slices": list(result.key_slices),
        "timings_s": result.timings_s,
        "segments": [_segment_record(s) for s in result.segments],
        "measurements": [asdict(m) for m in result.measurements],
        "findings": [asdict(f) for f in result.findings],
        "heatmaps": [{"slice_index": h.slice_index, "method": h.method,
                      "regions": [asdict(r) for r in h.regions]} for h in result.heatmaps],
        "quality": None if result.quality is None else asdict(result.quality),
    }
    tmp = folder / "result.json.tmp"
    at_rest.write_bytes(tmp, (json.dumps(record, indent=1) + "\n").encode())
    os.replace(tmp, folder / "result.json")


def _segment_record(s: Segment) -> dict[str, Any]:
    return {"label": s.label, "name": s.name, "category": asdict(s.category),
            "type": asdict(s.type), "geometry": asdict(s.geometry), "shape": list(s.mask.shape)}


def has_result(folder: Path) -> bool:
    return (folder / "result.json").is_file()


def load_result(folder: Path) -> tuple[ModelResult, tuple[str, ...]]:
    """The stored result and the volume's pseudonymous slice UIDs, in slice order."""
    try:
        record = json.loads(at_rest.read_bytes(folder / "result.json").decode("utf-8"))
        arrays = _arrays(folder)
        result = ModelResult(
            model_name=record["model_name"],
            model_version=record["model_version"],
            segments=tuple(_segment(s, arrays, packed=record["format"] >= 2)
                           for s in record["segments"]),
            measurements=tuple(_measurement(m) for m in record["measurements"]),
            findings=tuple(Finding(CodedConcept(**f["concept"]), float(f["probability"]))
                           for f in record["findings"]),
            heatmaps=tuple(_heatmap(n, h, arrays) for n, h in enumerate(record["heatmaps"])),
            triage=Triage(record["triage"]),
            key_slices=tuple(int(i) for i in record["key_slices"]),
            timings_s={k: float(v) for k, v in record["timings_s"].items()},
            quality=QualityFlag(**record["quality"]) if record.get("quality") else None,
        )
        return result, tuple(record["slice_uids"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PermanentError(
            f"stored model result in {folder.name} cannot be read ({type(exc).__name__})"
        ) from exc


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    path = folder / "masks.npz"
    if not path.is_file():
        return {}
    with at_rest.open_plain(path) as f, np.load(f, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _segment(s: dict[str, Any], arrays: dict[str, np.ndarray], *, packed: bool) -> Segment:
    g = s["geometry"]
    geometry = Geometry(
        origin=tuple(g["origin"]), row_direction=tuple(g["row_direction"]),
        column_direction=tuple(g["column_direction"]), normal=tuple(g["normal"]),
        spacing=tuple(g["spacing"]), sop_instance_uids=tuple(g["sop_instance_uids"]),
    )
    stored = arrays[f"segment_{s['label']}"]
    if packed:
        shape = tuple(int(n) for n in s["shape"])
        voxels = int(np.prod(shape))
        if stored.dtype != np.uint8 or stored.shape != (-(-voxels // 8),):
            raise ValueError("a packed mask does not match its shape")
        bits = np.unpackbits(stored, count=voxels)
        mask = bits.reshape(shape).view(bool)  # unpackbits gives 0 and 1 only
    else:
        mask = stored.astype(bool)
    return Segment(label=int(s["label"]), name=s["name"], category=CodedConcept(**s["category"]),
                   type=CodedConcept(**s["type"]), mask=mask, geometry=geometry)


def _heatmap(n: int, h: dict[str, Any] | int, arrays: dict[str, np.ndarray]) -> Heatmap:
    if isinstance(h, int):  # format 2: the slice index alone
        return Heatmap(h, arrays[f"heatmap_{h}"])
    return Heatmap(int(h["slice_index"]), arrays[f"heatmap_at_{n}"], str(h["method"]),
                   tuple(HeatmapRegion(**r) for r in h["regions"]))


def _measurement(m: dict[str, Any]) -> Measurement:
    concept = CodedConcept(**m["concept"]) if m.get("concept") else None
    interval = Interval(**m["interval"]) if m.get("interval") else None
    return Measurement(name=m["name"], value=float(m["value"]), unit=m["unit"], concept=concept,
                       segment_label=m.get("segment_label"), interval=interval)
