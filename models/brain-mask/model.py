"""The brain-mask model: deepbrain 0.1's brain extraction on a T1 MR volume, in PyTorch.

Preprocessing follows deepbrain's ``Extractor.run``: skimage ``resize`` to 128^3 (Gaussian
anti-aliasing with sigma = (in/out - 1) / 2 per axis, zero outside, then linear interpolation on
pixel centres), division by the maximum; the probability is resized back the same way (no
smoothing when enlarging) and thresholded at 0.5. Here the intensities are first shifted so that
their minimum is 0, which changes nothing for MR stored from 0 up. Resizing uses torch's
``interpolate`` (trilinear, ``align_corners=False``: the same pixel-centre mapping).

Post-processing (``postprocess.py``, switched in the manifest's ``[postprocess]``): the
probability may be averaged over the input's eight mirrorings before thresholding, and the mask
reduced to its largest connected component and its holes filled after.

Uncertainty (``[uncertainty] method = "flips"``, ``uncertainty.py``): the eight flip passes each
give a mask and a volume; the volume gets the passes' 95% range, the result the quality flag
"uncertain" when the passes disagree on too many voxels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from node.core.contract import Measurement, ModelResult, Segment, Volume
from node.core.manifest import Manifest
from node.pipeline.infer.loaders import import_from

_HERE = Path(__file__).resolve().parent
read_postprocess = import_from(_HERE, "postprocess.py:read_postprocess", "brain-mask")
flip_averaged = import_from(_HERE, "postprocess.py:flip_averaged", "brain-mask")
flip_probabilities = import_from(_HERE, "postprocess.py:flip_probabilities", "brain-mask")
pass_spread = import_from(_HERE, "uncertainty.py:spread", "brain-mask")
apply_mask_steps = import_from(_HERE, "postprocess.py:apply_mask_steps", "brain-mask")

_THRESHOLD = 0.5
_GAUSSIAN_TRUNCATE = 4.0  # skimage/scipy's gaussian_filter default


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so that the stage timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gaussian_1d(sigma: float) -> torch.Tensor:
    radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _anti_alias(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Gaussian smoothing of (1, 1, D, H, W) before shrinking to ``size``, zero outside.

    A weighted sum of shifted copies per axis: for these few-tap kernels much faster on a CPU
    than a one-channel convolution.
    """
    for axis, (n_in, n_out) in enumerate(zip(x.shape[2:], size, strict=True)):
        sigma = max(0.0, (n_in / n_out - 1.0) / 2.0)
        if sigma == 0.0:
            continue
        kernel = _gaussian_1d(sigma).tolist()
        radius, dim = len(kernel) // 2, 2 + axis
        padding = [0] * 6  # F.pad lists the last axis first
        padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = radius
        padded = F.pad(x, padding)
        out = kernel[0] * padded.narrow(dim, 0, n_in)
        for offset, weight in enumerate(kernel[1:], start=1):
            out += weight * padded.narrow(dim, offset, n_in)
        x = out
    return x


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """skimage ``resize(..., order=1, anti_aliasing=True)`` for a (1, 1, D, H, W) tensor."""
    return F.interpolate(_anti_alias(x, size), size=size, mode="trilinear", align_corners=False)


class Model:
    """Built by the node's model registry, which has checked the weights' sha256 and loaded
    them into ``network`` (``state_dict`` loader, ``network.py:BrainUNet3D``)."""

    def __init__(self, folder: Path, device: str, network: nn.Module, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.network = network
        self.manifest = manifest
        self.size = tuple(manifest.input.target_size)
        self.postprocess = read_postprocess(self.folder)

    def predict(self, volume: Volume) -> ModelResult:
        timings: dict[str, float] = {}
        with torch.inference_mode():
            start = time.perf_counter()
            x = torch.as_tensor(np.asarray(volume.array, dtype=np.float32), device=self.device)
            shape = tuple(x.shape)
            x = (x - x.min())[None, None]
            x = _resize(x, self.size)
            peak = float(x.max())
            x = x / peak if peak > 0 else x
            _sync(self.device)
            timings["preprocess"] = time.perf_counter() - start

            if self.manifest.uncertainty.method == "flips":
                mask, spread = self._flip_passes(x, shape, volume.geometry.voxel_volume_ml,
                                                 timings)
                return self._result(volume, mask, timings, spread)

            start = time.perf_counter()
            if self.postprocess.flip_average:
                prob = flip_averaged(self.network, x)
            else:
                prob = self.network(x)
            _sync(self.device)
            timings["forward"] = time.perf_counter() - start

            start = time.perf_counter()
            mask = self._mask(prob, shape)
            timings["postprocess"] = time.perf_counter() - start
        return self._result(volume, mask, timings)

    def _mask(self, prob: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        """The (1, 1, 128^3) probability on the input's grid, thresholded, post-processed."""
        prob = F.interpolate(prob, size=shape, mode="trilinear", align_corners=False)
        return apply_mask_steps((prob[0, 0] > _THRESHOLD).cpu().numpy(), self.postprocess)

    def _flip_passes(self, x: torch.Tensor, shape: tuple[int, ...], voxel_ml: float,
                     timings: dict[str, float]) -> tuple[np.ndarray, Any]:
        """The reported mask and the spread of the 8 flip passes (``uncertainty.py``).

        The reported mask is what ``[postprocess]`` asks for (the identity pass alone, or the
        mean of the passes), so switching uncertainty on changes no result, only adds its
        spread. Every pass mask is thresholded and post-processed as the reported one is."""
        forward = steps = 0.0
        counts = np.zeros(shape, dtype=np.uint8)
        volumes: list[float] = []
        total: torch.Tensor | None = None
        reported: np.ndarray | None = None
        passes = flip_probabilities(self.network, x)
        while True:
            start = time.perf_counter()
            prob = next(passes, None)
            _sync(self.device)
            forward += time.perf_counter() - start
            if prob is None:
                break
            start = time.perf_counter()
            mask = self._mask(prob, shape)
            counts += mask
            volumes.append(int(np.count_nonzero(mask)) * voxel_ml)
            if self.postprocess.flip_average:
                total = prob.clone() if total is None else total.add_(prob)
            elif reported is None:
                reported = mask
            steps += time.perf_counter() - start
        start = time.perf_counter()
        if total is not None:
            reported = self._mask(total / len(volumes), shape)
        assert reported is not None  # the identity pass always runs
        spread = pass_spread(volumes, counts, int(np.count_nonzero(reported)),
                             self.manifest.uncertainty.flag_above)
        timings["forward"] = forward
        timings["postprocess"] = steps + time.perf_counter() - start
        return reported, spread

    def _result(self, volume: Volume, mask: np.ndarray, timings: dict[str, float],
                spread: Any = None) -> ModelResult:
        spec = self.manifest.segments[0]
        segment = Segment(spec.label, spec.name, spec.category, spec.type, mask, volume.geometry)
        meas = self.manifest.measurements[0]
        measurement = Measurement(
            name=meas.name,
            value=float(int(mask.sum()) * volume.geometry.voxel_volume_ml),
            unit=meas.unit,
            concept=meas.concept,
            segment_label=segment.label,
            interval=None if spread is None else spread.interval,
        )
        return ModelResult(
            model_name=self.manifest.name,
            model_version=self.manifest.version,
            segments=(segment,),
            measurements=(measurement,),
            key_slices=(int(np.argmax(mask.sum(axis=(1, 2)))),),
            timings_s=timings,
            quality=None if spread is None else spread.quality,
        )
