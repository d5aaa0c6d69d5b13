"""How sure the brain-mask model is: the spread of its test-time flip passes.

With ``[uncertainty] method = "flips"`` in the manifest, the network runs on the input and on its
seven mirror images (the passes ``postprocess.flip_probabilities`` gives, identity first); each
pass's probability is thresholded and post-processed exactly as the reported mask is, giving one
mask and one brain volume per pass. From those:

* **per voxel**: the passes *disagree* on a voxel when some but not all of them put it in the
  brain (binary disagreement of the eight masks);
* **the volume's interval**: the 2.5th and 97.5th percentiles of the eight pass volumes
  (``numpy.percentile``, linear interpolation; with eight values nearly their minimum and
  maximum). It is the spread of test-time augmentation, how much the answer moves when the
  same head is shown mirrored, not a confidence interval of the true volume;
* **the quality flag** "uncertain": when the voxels the passes disagree on exceed
  ``flag_above`` (default 0.10) of the reported mask's voxels.

Why 0.10 by default (reasoned, not tuned on Colin27): passes that agree up to the boundary
still differ by about one voxel of the network's 128^3 grid there, about 1.5 mm for an adult
head's 180-220 mm field. A brain of 1.2-1.9 L has the surface of a sphere of radius 66-77 mm
(area 55,000-75,000 mm^2; the mask's envelope, not the folded cortex), so a 1.5 mm band is 6-7 %
of its volume. Disagreement beyond that band means the passes differ by more than a grid voxel at
the boundary or disagree on whole regions; 0.10 allows the band and some sulci and flags more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from node.core.contract import Interval, QualityFlag

LEVEL = 0.95
METHOD = "flips"


@dataclass(frozen=True)
class Spread:
    """What the passes say: the volume's interval, the share of disagreement and the flag."""

    interval: Interval
    disagreement: float  # voxels the passes disagree on / voxels of the reported mask
    quality: QualityFlag | None


def disagreement_map(counts: np.ndarray, passes: int) -> np.ndarray:
    """Per voxel: True where some but not all of ``passes`` masks hold it (``counts``: how many
    masks hold each voxel)."""
    return np.asarray((counts > 0) & (counts < passes))


def volume_interval(volumes: Sequence[float], level: float = LEVEL,
                    method: str = METHOD) -> Interval:
    """The central ``level`` range of the pass volumes (percentiles, linear interpolation)."""
    tail = 100.0 * (1.0 - level) / 2.0
    lower, upper = np.percentile(np.asarray(volumes, dtype=np.float64), [tail, 100.0 - tail])
    return Interval(float(lower), float(upper), level, method, len(volumes))


def spread(volumes: Sequence[float], counts: np.ndarray, reported_voxels: int,
           flag_above: float) -> Spread:
    """The spread of the passes: ``volumes`` per pass (mL), ``counts`` per voxel (how many
    pass masks hold it), ``reported_voxels`` the reported mask's size."""
    passes = len(volumes)
    disagree = int(np.count_nonzero(disagreement_map(counts, passes)))
    if reported_voxels > 0:
        fraction = disagree / reported_voxels
    else:
        fraction = 1.0 if disagree else 0.0
    quality = None
    if fraction > flag_above:
        quality = QualityFlag("uncertain", (
            f"the {passes} flip passes disagree on {100.0 * fraction:.1f}% of the mask's voxels "
            f"(flagged above {100.0 * flag_above:g}%)"))
    return Spread(volume_interval(volumes), fraction, quality)
