"""Why a classifier said what it said: class activation maps of one image, in plain torch.

Three methods, chosen per model (``[explain] methods`` in its manifest), each a map over the
target layer's (h, w) grid, then brought to the image's size by :func:`to_image`:

- **Grad-CAM** (Selvaraju et al., ICCV 2017): channel weights = the spatial mean of the class
  score's gradient with respect to the activation A; map = ReLU(sum_k w_k A_k).
- **Grad-CAM++** (Chattopadhyay et al., WACV 2018): the gradient at each position weighted by
  alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), the closed form of the second and third derivatives
  of exp(score) (the exponential's factor cancels), and only positive gradients counted:
  w_k = sum_ij alpha_ij ReLU(g_ij). Several instances of a class each get their share.
- **Score-CAM** (Wang et al., CVPR Workshops 2020): no gradient. Each activation channel,
  upsampled to the input and scaled to 0..1, masks the input; the channel's weight is its
  "increase of confidence": the class's softmax probability on the masked input minus that on
  a black image (the paper's baseline), so that channels which do not raise the class count
  against it. One forward pass per channel, so the channels are BOUNDED: at most
  ``max_channels`` of them, those with the largest mean activation (channels that are zero
  everywhere carry no mask), run in batches of ``SCORE_CAM_BATCH``.

The target layer is found, not named: :func:`find_target` runs the network once on an example
input with a forward hook on every module and takes the last ``Conv2d`` called, followed
through the element-wise modules right after it (its ReLU or batch norm: Grad-CAM's feature
maps are the rectified activation); a network without a convolution gives the last module whose
output is a spatial (N, C, h, w) map with h, w > 1. A module that runs several times in one
pass (one ReLU shared by all layers) is told apart by its call number.

:func:`strongest_regions` turns a map into boxes: the pixels at or above a fraction of its
maximum, 8-connected components, the ``count`` components with the largest heat mass.

Pure functions of tensors and modules; nothing is registered on a network beyond one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from node.core.contract import HeatmapRegion
from node.core.manifest import EXPLAIN_METHODS

Run = Callable[[torch.Tensor], torch.Tensor]
#: element-wise modules that belong to a convolution's output (followed after the last Conv2d)
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.PReLU,
                nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.Identity)
SCORE_CAM_BATCH = 16  # masked images per forward pass


@dataclass(frozen=True)
class Target:
    """The explained activation: module ``name``'s output at its ``call``-th call (from 0) in
    one forward pass; ``shape`` its (C, h, w) on the example input."""

    name: str
    call: int
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Split:
    """A network cut at its target layer: one image's ``activation`` (1, C, h, w) and ``head``,
    the rest of the network from that activation to the class scores (logits)."""

    activation: torch.Tensor
    head: Run


def find_target(network: nn.Module, example: torch.Tensor, run: Run | None = None) -> Target:
    """The target layer of ``network``, found by one hooked pass of ``run`` (default: the
    network itself) over ``example``."""
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def record(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            calls.append((name, module, shape))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in network.named_modules()
               if n and not list(m.children())]
    try:
        with torch.inference_mode():
            (run or network)(example)
    finally:
        for h in handles:
            h.remove()
    index = _last_conv(calls)
    if index is None:
        raise ValueError("explain: the network has no layer with a spatial (N, C, h, w) output")
    name, _module, shape = calls[index]
    call = sum(1 for n, _m, _s in calls[:index] if n == name)
    return Target(name, call, (shape[1], shape[2], shape[3]))


def _spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] > 1 and shape[3] > 1


def _last_conv(calls: list[tuple[str, nn.Module, tuple[int, ...]]]) -> int | None:
    convs = [i for i, (_n, m, s) in enumerate(calls) if isinstance(m, nn.Conv2d) and _spatial(s)]
    if not convs:
        spatial = [i for i, (_n, _m, s) in enumerate(calls) if _spatial(s)]
        return spatial[-1] if spatial else None
    index = convs[-1]
    while (index + 1 < len(calls) and isinstance(calls[index + 1][1], _ELEMENTWISE)
           and calls[index + 1][2] == calls[index][2]):
        index += 1
    return index


@contextmanager
def _at_target(network: nn.Module, target: Target,
               replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While inside, the target's output passes through ``replace`` (captured or swapped)."""
    module = dict(network.named_modules())[target.name]
    seen = [0]

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        seen[0] += 1
        return replace(output) if seen[0] == target.call + 1 else output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def split(network: nn.Module, target: Target, image: torch.Tensor, run: Run | None = None) -> Split:
    """Any network cut at ``target`` with hooks: the head runs the whole network again and
    swaps the target's output for the activation it is given (for a network that offers no
    features/head of its own). The hook lives on the network while a pass runs: a network that
    two threads explain at once needs a features/head split of its own (:class:`Split`)."""
    forward = run or network
    kept: list[torch.Tensor] = []

    def keep(a: torch.Tensor) -> torch.Tensor:
        kept.append(a.detach())
        return a

    with torch.inference_mode(), _at_target(network, target, keep):
        forward(image)

    def head(activation: torch.Tensor) -> torch.Tensor:
        with _at_target(network, target, lambda _a: activation):
            return forward(image.expand(activation.shape[0], *image.shape[1:]))

    return Split(kept[0].clone(), head)


def ends_at(network: nn.Module, target: Target, run: Run, example: torch.Tensor) -> bool:
    """Whether ``run`` (e.g. a network's own ``features``) returns the target's output itself,
    so that its activations serve as the explained ones: checked on ``example`` (any size
    ``run`` accepts; a fully convolutional ``run`` takes a small one)."""
    kept: list[torch.Tensor] = []

    def keep(a: torch.Tensor) -> torch.Tensor:
        kept.append(a)
        return a

    with torch.inference_mode(), _at_target(network, target, keep):
        out = run(example)
    return len(kept) == 1 and kept[0] is out


def _gradient(cut: Split, cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation (a leaf) and d score[cls] / d activation."""
    with torch.inference_mode(False), torch.enable_grad():
        a = cut.activation.clone().requires_grad_(True)
        score = cut.head(a)[0, cls]
        (grad,) = torch.autograd.grad(score, a)
    return a.detach(), grad


def grad_cam(cut: Split, cls: int) -> torch.Tensor:
    """Grad-CAM map (h, w) of class ``cls``."""
    a, grad = _gradient(cut, cls)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * a).sum(dim=1))[0]


def grad_cam_pp(cut: Split, cls: int) -> torch.Tensor:
    """Grad-CAM++ map (h, w) of class ``cls``."""
    a, grad = _gradient(cut, cls)
    g2 = grad * grad
    denominator = 2.0 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * grad
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1.0),
                        torch.zeros_like(g2))
    weights = (alpha * torch.relu(grad)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((weights * a).sum(dim=1))[0]


def score_cam(cut: Split, cls: int, image: torch.Tensor, run: Run,
              max_channels: int) -> torch.Tensor:
    """Score-CAM map (h, w) of class ``cls`` for ``image`` (1, ...); ``run`` maps images to
    logits. At most ``max_channels`` channels (largest mean activation) are used."""
    with torch.inference_mode():
        a = cut.activation[0]
        means = a.mean(dim=(1, 2))
        k = min(max_channels, int((a.flatten(1).amax(dim=1) > 0).sum()))
        if k == 0:
            return torch.zeros(a.shape[1:], dtype=a.dtype, device=a.device)
        chosen = torch.topk(means, k).indices
        maps = a[chosen]
        masks = F.interpolate(maps[:, None], size=image.shape[-2:], mode="bilinear",
                              align_corners=False)
        lo = masks.amin(dim=(2, 3), keepdim=True)
        span = masks.amax(dim=(2, 3), keepdim=True) - lo
        masks = torch.where(span > 0, (masks - lo) / span.clamp_min(1e-12), 0.0)
        baseline = torch.softmax(run(torch.zeros_like(image)), dim=1)[0, cls]
        weights = torch.cat([
            torch.softmax(run(image * masks[s:s + SCORE_CAM_BATCH]), dim=1)[:, cls]
            for s in range(0, k, SCORE_CAM_BATCH)]) - baseline
        return torch.relu((weights[:, None, None] * maps).sum(dim=0))


def explain(method: str, cut: Split, cls: int, image: torch.Tensor, run: Run,
            max_channels: int) -> torch.Tensor:
    """The map (h, w) of ``method`` (a key of ``EXPLAIN_METHODS``)."""
    if method == "grad-cam":
        return grad_cam(cut, cls)
    if method == "grad-cam++":
        return grad_cam_pp(cut, cls)
    if method == "score-cam":
        return score_cam(cut, cls, image, run, max_channels)
    raise ValueError(f"explain: unknown method {method!r} (one of {', '.join(EXPLAIN_METHODS)})")


def to_image(cam: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A map (h, w) bilinearly upsampled to ``shape``, divided by its maximum (all zero when
    nothing is positive), float32 in 0..1."""
    with torch.no_grad():
        up = F.interpolate(cam[None, None].float(), size=shape, mode="bilinear",
                           align_corners=False)[0, 0]
        peak = up.max()
        up = up / peak if peak > 0 else torch.zeros_like(up)
    return up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def strongest_regions(heat: np.ndarray, fraction: float = 0.5,
                      count: int = 3) -> tuple[HeatmapRegion, ...]:
    """Boxes around the ``count`` regions of ``heat`` (rows, columns) with the largest heat
    mass, a region being an 8-connected set of pixels at or above ``fraction`` of the maximum;
    largest first. Coordinates are pixel rows and columns of ``heat``, both ends included."""
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0.0 or count < 1:
        return ()
    labels, n = ndimage.label(heat >= fraction * peak, structure=np.ones((3, 3), dtype=bool))
    index = np.arange(1, n + 1)
    mass = np.asarray(ndimage.sum_labels(heat, labels, index), dtype=np.float64)
    total = float(heat.sum())
    slices = ndimage.find_objects(labels)
    order = np.argsort(-mass, kind="stable")[:count]
    return tuple(
        HeatmapRegion(top=slices[i][0].start, left=slices[i][1].start,
                      bottom=slices[i][0].stop - 1, right=slices[i][1].stop - 1,
                      share=float(mass[i]) / total)
        for i in (int(j) for j in order))
