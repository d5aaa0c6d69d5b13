"""The lung-ct model: classical lung segmentation, lung volumes and the emphysema index.

Segmentation is ``lungs.py`` (Hu et al. 2001, threshold and connected components; no weights).
Measurements: right, left and total lung volume (mL) and LAA%-950, the percentage of lung
voxels below -950 HU (Gevenois et al. 1996; the Fleischner Society's statement on CT-definable
subtypes of COPD, Lynch et al. 2015). The lung masks hold the vessels and airways
inside the lungs and exclude the trachea and the main bronchi outside them. Triage follows the
manifest's ``[triage]`` thresholds on the emphysema index.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from node.errors import ConfigError, PermanentError
from node.pipeline.results import CodedConcept, Measurement, ModelResult, Segment, Triage
from node.pipeline.volume import Volume

#: LAA%-950: voxels below this are low-attenuation areas, HU
LAA_THRESHOLD_HU = -950.0

RIGHT_VOLUME = "Right lung volume"
LEFT_VOLUME = "Left lung volume"
TOTAL_VOLUME = "Total lung volume"
EMPHYSEMA_INDEX = "Emphysema index LAA%-950"
_MEASUREMENTS = (RIGHT_VOLUME, LEFT_VOLUME, TOTAL_VOLUME, EMPHYSEMA_INDEX)


def _sibling(name: str) -> ModuleType:
    """Import a module of this folder (a model folder is not a Python package)."""
    module_name = f"dicom_node_models.lung_ct.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError([f"models/lung-ct: cannot import {path.name}"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


lungs = _sibling("lungs")


def _concept(values: list[str]) -> CodedConcept:
    return CodedConcept(value=values[0], scheme=values[1], meaning=values[2])


def triage(value: float | None, priority_above: float, urgent_above: float) -> Triage:
    if value is None:
        return Triage.ROUTINE
    if value > urgent_above:
        return Triage.URGENT
    if value > priority_above:
        return Triage.PRIORITY
    return Triage.ROUTINE


class Model:
    def __init__(self, folder: Path, device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.device = device  # numpy/scipy on the CPU whatever the setting
        with (self.folder / "manifest.toml").open("rb") as f:
            self.manifest: dict[str, Any] = tomllib.load(f)
        self.segments = {int(s["label"]): s for s in self.manifest.get("segments", [])}
        self.measurements = {str(m["name"]): m for m in self.manifest.get("measurements", [])}
        tri = self.manifest.get("triage", {})
        self.priority_above = float(tri.get("priority_above", 0.0))
        self.urgent_above = float(tri.get("urgent_above", 0.0))
        problems = [f"models/{self.folder.name}: manifest lacks segment {label}"
                    for label in (lungs.RIGHT, lungs.LEFT) if label not in self.segments]
        problems += [f"models/{self.folder.name}: manifest lacks measurement {name!r}"
                     for name in _MEASUREMENTS if name not in self.measurements]
        if tri.get("measurement") != EMPHYSEMA_INDEX:
            problems.append(f"models/{self.folder.name}: [triage] must use {EMPHYSEMA_INDEX!r}")
        if self.urgent_above < self.priority_above:
            problems.append(f"models/{self.folder.name}: urgent_above < priority_above")
        if problems:
            raise ConfigError(problems)

    def predict(self, volume: Volume) -> ModelResult:
        if volume.modality != "CT":
            raise PermanentError(f"lung-ct needs CT, got modality {volume.modality or 'none'}")
        geometry = volume.geometry
        found = lungs.segment_lungs(
            np.asarray(volume.array),
            tuple(float(s) for s in geometry.spacing),
            left_is_high_column=geometry.row_direction[0] >= 0,  # DICOM +x: patient's left
            superior_last=geometry.normal[2] >= 0,  # DICOM +z: patient's head
        )
        start = time.perf_counter()
        parts = self._measure(volume, found.labels)
        timings = {**found.timings_s, "measure": time.perf_counter() - start}
        return ModelResult(
            model_name=str(self.manifest["name"]),
            model_version=str(self.manifest["version"]),
            timings_s=timings,
            **parts,
        )

    def _measurement(self, name: str, value: float, label: int | None = None) -> Measurement:
        spec = self.measurements[name]
        concept = _concept(spec["concept"]) if spec.get("concept") else None
        return Measurement(name, float(value), str(spec["unit"]), concept, label)

    def _measure(self, volume: Volume, labels: np.ndarray) -> dict[str, Any]:
        voxel_ml = volume.geometry.voxel_volume_ml
        masks = {label: labels == label for label in (lungs.RIGHT, lungs.LEFT)}
        counts = {label: int(np.count_nonzero(mask)) for label, mask in masks.items()}
        lung = labels > 0
        per_slice_lung = lung.sum(axis=(1, 2))
        per_slice_laa = (lung & (np.asarray(volume.array) < LAA_THRESHOLD_HU)).sum(axis=(1, 2))
        total = counts[lungs.RIGHT] + counts[lungs.LEFT]
        measurements = [
            self._measurement(RIGHT_VOLUME, counts[lungs.RIGHT] * voxel_ml, lungs.RIGHT),
            self._measurement(LEFT_VOLUME, counts[lungs.LEFT] * voxel_ml, lungs.LEFT),
            self._measurement(TOTAL_VOLUME, total * voxel_ml),
        ]
        index = None
        if total:
            index = 100.0 * float(per_slice_laa.sum()) / total
            measurements.append(self._measurement(EMPHYSEMA_INDEX, index))
        if per_slice_laa.any():
            key: tuple[int, ...] = (int(np.argmax(per_slice_laa)),)
        elif total:
            key = (int(np.argmax(per_slice_lung)),)
        else:
            key = ()
        segments = tuple(
            Segment(label, str(spec["name"]), _concept(spec["category"]), _concept(spec["type"]),
                    masks[label], volume.geometry)
            for label, spec in sorted(self.segments.items())
        )
        return {
            "segments": segments,
            "measurements": tuple(measurements),
            "triage": triage(index, self.priority_above, self.urgent_above),
            "key_slices": key,
        }
