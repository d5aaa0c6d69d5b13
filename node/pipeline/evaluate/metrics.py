"""Evaluation metrics: pure functions of arrays, no I/O.

Segmentation (one boolean mask against a reference mask on the same voxel grid):

* :func:`dice`: 2|A and B| / (|A| + |B|); 1.0 when both are empty.
* :func:`hd95`: the 95th percentile Hausdorff distance in mm, as MedPy's ``hd95`` defines it:
  the surface voxels of each mask (the mask less its erosion by a 6-connected cross), the
  distance from every surface voxel of one to the nearest surface voxel of the other in both
  directions (exact Euclidean distances between voxel centres, in mm with the voxel spacing),
  pooled, and their 95th percentile. None when either mask is empty (no surface: the distance
  is not defined).
* volume error: the mask's volume less the reference's, in mL and in % of the reference.

Classification (true class indices, the predicted probabilities of every class):

* :func:`accuracy`, :func:`confusion_matrix`; per class, one against the rest:
  :func:`sensitivity`, :func:`specificity` and :func:`roc_auc` (the Mann-Whitney statistic: the
  probability that a positive case scores above a negative one, ties counted half). A rate whose
  denominator is zero (no positive case, no negative case) is None, never a made-up 0 or 1.

Intervals: :func:`bootstrap_ci` resamples the cases with replacement (2,000 times, a fixed
seed, so a rerun gives the same interval) and takes the 2.5th and 97.5th percentiles of the
statistic (the percentile bootstrap; Efron & Tibshirani 1993, ch. 13). Resamples on which the
statistic is not defined (e.g. no positive case drawn) are left out; None when none is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial import cKDTree

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

Interval = tuple[float, float]


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    a, b = np.asarray(mask, dtype=bool), np.asarray(reference, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return np.asarray(mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0))


def surface_distances(mask: np.ndarray, reference: np.ndarray,
                      spacing: Sequence[float]) -> np.ndarray | None:
    """Distances (mm) from every surface voxel of each mask to the other's surface, pooled.

    The nearest surface voxel is found with a k-d tree of the surface voxels' centres in mm:
    the same exact Euclidean distances as a distance transform of the other surface's
    complement (MedPy's way; the result agrees to 1e-14 on Colin27's mask), without a transform
    of the whole volume: about 5 times faster on its 7 M voxels.
    """
    a, b = np.asarray(mask, dtype=bool), np.asarray(reference, dtype=bool)
    if not a.any() or not b.any():
        return None
    scale = np.asarray(spacing, dtype=float)
    pa = np.argwhere(_surface(a)) * scale
    pb = np.argwhere(_surface(b)) * scale
    to_b, _ = cKDTree(pb).query(pa)
    to_a, _ = cKDTree(pa).query(pb)
    return np.concatenate([np.asarray(to_b), np.asarray(to_a)])


def hd95(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th percentile Hausdorff distance in mm (None when a mask is empty)."""
    distances = surface_distances(mask, reference, spacing)
    return None if distances is None else float(np.percentile(distances, 95))


def volume_error(mask_ml: float, reference_ml: float) -> tuple[float, float | None]:
    """(mask - reference in mL, the same in % of the reference; None for an empty reference)."""
    diff = mask_ml - reference_ml
    return diff, (100.0 * diff / reference_ml if reference_ml > 0 else None)


def confusion_matrix(truth: ArrayLike, predicted: ArrayLike, classes: int) -> np.ndarray:
    """counts[t, p]: cases of true class t predicted as p."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return counts


def accuracy(truth: ArrayLike, predicted: ArrayLike) -> float | None:
    t, p = np.asarray(truth), np.asarray(predicted)
    return float(np.mean(t == p)) if t.size else None


def sensitivity(truth: ArrayLike, predicted: ArrayLike, positive: int) -> float | None:
    """Of the cases of class ``positive``, the fraction predicted as it."""
    t, p = np.asarray(truth), np.asarray(predicted)
    pos = t == positive
    return float(np.mean(p[pos] == positive)) if pos.any() else None


def specificity(truth: ArrayLike, predicted: ArrayLike, positive: int) -> float | None:
    """Of the cases of any other class, the fraction not predicted as ``positive``."""
    t, p = np.asarray(truth), np.asarray(predicted)
    neg = t != positive
    return float(np.mean(p[neg] != positive)) if neg.any() else None


def roc_auc(is_positive: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    y, s = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def bootstrap_ci(cases: int, statistic: Callable[[np.ndarray], float | None],
                 resamples: int = RESAMPLES, seed: int = SEED) -> Interval | None:
    """Percentile bootstrap interval (``LEVEL``) of ``statistic(indices)`` over the cases.

    ``statistic`` receives an index array (a resample of ``range(cases)``) and returns the
    statistic on those cases, or None where it is not defined for that resample.
    """
    if cases == 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, cases, size=cases))
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = 100.0 * (1.0 - LEVEL) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def mean_with_ci(values: Sequence[float]) -> dict[str, object]:
    """``{"mean", "ci95", "n"}`` of per-case values (the interval: bootstrap of the mean)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    ci = bootstrap_ci(v.size, lambda idx: float(v[idx].mean()))
    return {"mean": float(v.mean()), "ci95": list(ci) if ci else None, "n": int(v.size)}
