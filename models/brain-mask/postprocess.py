"""The brain-mask model's post-processing: flip averaging, largest component, hole filling.

Three standard steps of skull-stripping pipelines, each switched in ``[postprocess]`` of the
model's ``manifest.toml`` so that what runs is visible. They were chosen as the usual defaults,
not tuned on Colin27 (the test set), and take no threshold of their own:

* ``flip_average``: the network runs on the input and on its mirror images along every
  combination of the three axes (2^3 = 8 passes, as nnU-Net mirrors 3D inputs); each sigmoid
  probability is flipped back and the eight are averaged before the usual 0.5 threshold. The
  network was trained with orientation augmentation, so every mirrored view is in its domain.
* ``largest_component``: only the largest 3D connected component of the mask is kept, with
  26-connectivity (voxels touching by a face, an edge or a corner are connected; the default of
  scikit-image's ``label`` and of nnU-Net's post-processing). A brain is one object: islands in
  the scalp, eyes or neck are not brain.
* ``fill_holes``: background that the mask encloses is filled, first in 3D, then per 2D slice
  along each of the three array axes (the union of the three; orientation-independent, as the
  model is). ``scipy.ndimage.binary_fill_holes`` with its default structure: background
  connected to the border by faces (6-connectivity in 3D, 4 in 2D) stays background. A brain mask
  in the BET sense includes the ventricles and deep sulci, which the network sometimes leaves out.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from node.core.errors import ConfigError

_KEYS = ("flip_average", "largest_component", "fill_holes")


@dataclass(frozen=True)
class Postprocess:
    """Which steps run; ``[postprocess]`` in the manifest, every key a boolean."""

    flip_average: bool = False
    largest_component: bool = False
    fill_holes: bool = False


def read_postprocess(folder: Path) -> Postprocess:
    """``[postprocess]`` of ``folder``'s manifest (all off when the section is absent).

    The node's manifest reader keeps only the sections every model shares, so the model reads
    its own section here; a misspelt key or a non-boolean value is an error, not a silent off.
    """
    where = f"models/{folder.name}/manifest.toml [postprocess]"
    try:
        data = tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: unreadable ({exc})"]) from None
    section = data.get("postprocess", {})
    if not isinstance(section, dict):
        raise ConfigError([f"{where}: must be a table"])
    problems = [f"{where}: unknown key {key!r} (known: {', '.join(_KEYS)})"
                for key in section if key not in _KEYS]
    problems += [f"{where}.{key}: must be true or false"
                 for key in _KEYS if key in section and not isinstance(section[key], bool)]
    if problems:
        raise ConfigError(problems)
    return Postprocess(**{key: section[key] for key in _KEYS if key in section})


def flip_probabilities(network: Callable[[torch.Tensor], torch.Tensor],
                       x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The sigmoid probability of a (1, 1, D, H, W) input and of its 7 mirror images, each
    flipped back onto the input's grid: the identity pass first (the plain network's answer).

    Run one at a time: a batch of eight would hold eight times the activations for no gain on
    a CPU.
    """
    yield network(x)
    for n in range(1, 4):
        for axes in itertools.combinations((2, 3, 4), n):
            yield torch.flip(network(torch.flip(x, axes)), axes)


def flip_averaged(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid probability over the 8 mirrorings of a (1, 1, D, H, W) input."""
    passes = flip_probabilities(network, x)
    total = next(passes)
    for p in passes:
        total += p
    return total / 8.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 3D boolean mask (the mask itself if empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background in 3D, then per slice along each axis (union of the three)."""
    filled = ndimage.binary_fill_holes(mask)
    per_slice = filled.copy()
    for axis in range(3):
        planes = np.moveaxis(filled, axis, 0)
        out = np.moveaxis(per_slice, axis, 0)  # a view: writing it writes per_slice
        for i, plane in enumerate(planes):
            if plane.any():
                out[i] |= ndimage.binary_fill_holes(plane)
    return np.asarray(per_slice, dtype=bool)


def apply_mask_steps(mask: np.ndarray, steps: Postprocess) -> np.ndarray:
    """The mask steps in their order: largest component first, then hole filling."""
    if steps.largest_component:
        mask = largest_component(mask)
    if steps.fill_holes:
        mask = fill_holes(mask)
    return mask
