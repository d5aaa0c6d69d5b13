"""A hospital's own TorchScript model, driven by its manifest alone (no code in its folder).

Pre-processing follows ``[input]``: intensity normalization (minmax, window, zscore, none) and
resizing to ``target_size`` (three values: one 3D pass; two values: the slices as a batch of 2D
images). Post-processing: one output channel is a sigmoid probability (> 0.5), several are
argmax labels; for classification, softmax probabilities per ``[[findings]]`` index. Masks are
resized back to the volume (nearest), volumes are measured per segment, triage follows
``[triage]``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from node.core.contract import Finding, Measurement, ModelResult, Segment, Triage, Volume
from node.core.manifest import Manifest

BATCH_2D = 16


def normalize(array: np.ndarray, manifest: Manifest) -> np.ndarray:
    spec = manifest.input
    x = array.astype(np.float32)
    if spec.normalization == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if spec.normalization == "window":
        center, width = spec.window
        lo = center - width / 2
        return np.asarray(np.clip((x - lo) / width, 0.0, 1.0), dtype=np.float32)
    if spec.normalization == "zscore":
        std = float(x.std())
        return (x - float(x.mean())) / std if std > 0 else np.zeros_like(x)
    return x


def triage_for(measurements: tuple[Measurement, ...], manifest: Manifest) -> Triage:
    spec = manifest.triage
    value = next((m.value for m in measurements if m.name == spec.measurement), None)
    if value is None:
        return Triage.ROUTINE
    if spec.urgent_above and value > spec.urgent_above:
        return Triage.URGENT
    if spec.priority_above and value > spec.priority_above:
        return Triage.PRIORITY
    return Triage.ROUTINE


class GenericTorchScriptModel:
    def __init__(self, manifest: Manifest, network: Any, device: str) -> None:
        self.manifest = manifest
        self.network = network
        self.device = device

    def predict(self, volume: Volume) -> ModelResult:
        import torch

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        x = torch.from_numpy(normalize(volume.array, self.manifest))
        timings["preprocess"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self._forward(x)
        timings["forward"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = (self._classify(out) if self.manifest.task == "classification"
                  else self._segment(out, volume))
        timings["postprocess"] = time.perf_counter() - t2
        return ModelResult(
            model_name=self.manifest.name, model_version=self.manifest.version,
            timings_s=timings, **result,
        )

    def _forward(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        size = self.manifest.input.target_size
        if len(size) == 3:
            inp = x[None, None].to(self.device)
            inp = F.interpolate(inp, size=size, mode="trilinear", align_corners=False)
            return self.network(inp).float().cpu()
        outs = []
        for start in range(0, x.shape[0], BATCH_2D):
            batch = x[start:start + BATCH_2D, None].to(self.device)
            if len(size) == 2:
                batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
            outs.append(self.network(batch).float().cpu())
        return torch.cat(outs)

    def _labels(self, out: Any, volume: Volume) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if out.ndim == 5:  # (1, C, D, H, W) -> (D, H, W)
            labels = ((out[0, 0] > 0).to(torch.uint8) if out.shape[1] == 1
                      else out[0].argmax(0).to(torch.uint8))
            labels = F.interpolate(labels[None, None].float(), size=volume.array.shape,
                                   mode="nearest")[0, 0]
        else:  # (S, C, H, W)
            labels = ((out[:, 0] > 0).to(torch.uint8) if out.shape[1] == 1
                      else out.argmax(1).to(torch.uint8))
            labels = F.interpolate(labels[:, None].float(), size=volume.array.shape[1:],
                                   mode="nearest")[:, 0]
        return labels.numpy().astype(np.uint8)

    def _segment(self, out: Any, volume: Volume) -> dict[str, Any]:
        labels = self._labels(out, volume)
        segments, measurements = [], []
        concepts = {m.name: m.concept for m in self.manifest.measurements}
        for spec in self.manifest.segments:
            mask = labels == spec.label
            segments.append(Segment(spec.label, spec.name, spec.category, spec.type, mask,
                                    volume.geometry))
            name = f"{spec.name} volume"
            measurements.append(Measurement(
                name, float(mask.sum()) * volume.geometry.voxel_volume_ml, "mL",
                concepts.get(name), spec.label))
        found = tuple(measurements)
        areas = [int(m.sum()) for m in (labels > 0)]
        key = (int(np.argmax(areas)),) if any(areas) else ()
        return {"segments": tuple(segments), "measurements": found,
                "triage": triage_for(found, self.manifest), "key_slices": key}

    def _classify(self, out: Any) -> dict[str, Any]:
        import torch

        probs = torch.softmax(out.reshape(-1, out.shape[-1]).mean(0), dim=0).numpy()
        findings = tuple(Finding(f.concept, float(probs[f.index])) for f in self.manifest.findings)
        return {"findings": findings}
