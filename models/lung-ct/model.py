"""The lung-ct model: classical lung segmentation, lung volumes and the emphysema index.

Segmentation is ``lungs.py`` (Hu et al. 2001, threshold and connected components; no weights).
Measurements: right, left and total lung volume (mL) and LAA%-950, the percentage of lung
voxels below -950 HU (Gevenois et al. 1996; the Fleischner Society's statement on CT-definable
subtypes of COPD, Lynch et al. 2015). The lung masks hold the vessels and airways
inside the lungs and exclude the trachea and the main bronchi outside them. Triage follows the
manifest's ``[triage]`` thresholds on the emphysema index.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from node.core.errors import ConfigError, PermanentError
from node.pipeline.infer.generic import triage_for
from node.pipeline.infer.loaders import import_from
from node.core.manifest import Manifest
from node.core.contract import Measurement, ModelResult, Segment
from node.core.contract import Volume

#: LAA%-950: voxels below this are low-attenuation areas, HU
LAA_THRESHOLD_HU = -950.0

RIGHT_VOLUME = "Right lung volume"
LEFT_VOLUME = "Left lung volume"
TOTAL_VOLUME = "Total lung volume"
EMPHYSEMA_INDEX = "Emphysema index LAA%-950"
_MEASUREMENTS = (RIGHT_VOLUME, LEFT_VOLUME, TOTAL_VOLUME, EMPHYSEMA_INDEX)


_HERE = Path(__file__).parent
# a model folder is not a Python package: its sibling module comes through the registry's import
segment_lungs = import_from(_HERE, "lungs.py:segment_lungs", "lung-ct")
RIGHT: int = import_from(_HERE, "lungs.py:RIGHT", "lung-ct")
LEFT: int = import_from(_HERE, "lungs.py:LEFT", "lung-ct")


class Model:
    """Built by the node's model registry from ``manifest.toml`` (no weights: loader none)."""

    def __init__(self, folder: Path, device: str, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.device = device  # numpy/scipy on the CPU whatever the setting
        self.manifest = manifest
        self.segments = {s.label: s for s in manifest.segments}
        self.measurements = {m.name: m for m in manifest.measurements}
        tri = manifest.triage
        problems = [f"models/{self.folder.name}: manifest lacks segment {label}"
                    for label in (RIGHT, LEFT) if label not in self.segments]
        problems += [f"models/{self.folder.name}: manifest lacks measurement {name!r}"
                     for name in _MEASUREMENTS if name not in self.measurements]
        if tri.measurement != EMPHYSEMA_INDEX:
            problems.append(f"models/{self.folder.name}: [triage] must use {EMPHYSEMA_INDEX!r}")
        if tri.urgent_above < tri.priority_above:
            problems.append(f"models/{self.folder.name}: urgent_above < priority_above")
        if problems:
            raise ConfigError(problems)

    def predict(self, volume: Volume) -> ModelResult:
        if volume.modality != "CT":
            raise PermanentError(f"lung-ct needs CT, got modality {volume.modality or 'none'}")
        geometry = volume.geometry
        found = segment_lungs(
            np.asarray(volume.array),
            tuple(float(s) for s in geometry.spacing),
            left_is_high_column=geometry.row_direction[0] >= 0,  # DICOM +x: patient's left
            superior_last=geometry.normal[2] >= 0,  # DICOM +z: patient's head
        )
        start = time.perf_counter()
        parts = self._measure(volume, found.labels)
        timings = {**found.timings_s, "measure": time.perf_counter() - start}
        return ModelResult(
            model_name=self.manifest.name,
            model_version=self.manifest.version,
            timings_s=timings,
            **parts,
        )

    def _measurement(self, name: str, value: float, label: int | None = None) -> Measurement:
        spec = self.measurements[name]
        return Measurement(name, float(value), spec.unit, spec.concept, label)

    def _measure(self, volume: Volume, labels: np.ndarray) -> dict[str, Any]:
        voxel_ml = volume.geometry.voxel_volume_ml
        masks = {label: labels == label for label in (RIGHT, LEFT)}
        counts = {label: int(np.count_nonzero(mask)) for label, mask in masks.items()}
        lung = labels > 0
        per_slice_lung = lung.sum(axis=(1, 2))
        per_slice_laa = (lung & (np.asarray(volume.array) < LAA_THRESHOLD_HU)).sum(axis=(1, 2))
        total = counts[RIGHT] + counts[LEFT]
        measurements = [
            self._measurement(RIGHT_VOLUME, counts[RIGHT] * voxel_ml, RIGHT),
            self._measurement(LEFT_VOLUME, counts[LEFT] * voxel_ml, LEFT),
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
            Segment(label, spec.name, spec.category, spec.type, masks[label], volume.geometry)
            for label, spec in sorted(self.segments.items())
        )
        return {
            "segments": segments,
            "measurements": tuple(measurements),
            "triage": triage_for(tuple(measurements), self.manifest),
            "key_slices": key,
        }
