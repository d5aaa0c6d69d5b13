"""Classical lung segmentation on chest CT (no weights): threshold, components, airway, sides.

The method follows Hu, Hoffman & Reinhardt, "Automatic lung segmentation for accurate
quantitation of volumetric X-ray CT images", IEEE TMI 20(6):490-498, 2001:

1. an optimal (iterative intermeans) threshold separates low-density from body voxels;
2. low-density regions outside the body are discarded: per slice, only regions enclosed by the
   body outline (the largest dense region, holes filled) are kept, plus regions touching the
   image edge that are not air-like (lung cut by a cropped field of view; the air outside the
   body and foam pads are air-like);
3. 3D connected components keep those that can be lung: large enough, not gas (bowel, sinus), and
   in their widest slice a sizeable fraction of the body's cross-section;
4. the trachea and the main bronchi outside the lungs are found from a seed in the upper slices
   and removed by 3D region growing below -950 HU, kept to trachea-sized air regions of each slice
   and a corridor around the trachea, with explosion control (lower thresholds, else nothing);
   airways inside the lungs stay lung;
5. left and right lungs are separated: two components by the side of the body midline they lie
   on, or, where they touch, by a cut per slice at the sagittal column of least lung area;
6. vessels are included by per-slice hole filling and a small closing of each lung.

The topology (steps 2-6) runs on a coarse grid of block means of about 1.4 mm; the lung boundary
is then refined at full resolution: voxels deep inside a coarse lung keep its label, voxels in a
one-coarse-voxel band around its edge are lung where they are below the threshold.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: in-plane and slice step of the coarse grid, mm (block means of about this size)
COARSE_MM = 1.4
#: the optimal threshold is kept within this range, HU
THRESHOLD_RANGE_HU = (-600.0, -250.0)
#: "air-like": below this, HU (the LAA threshold; lung parenchyma is about -850 HU)
AIR_HU = -950.0
#: a low region touching the image edge is air outside the body (or a foam pad) when more than
#: this fraction of it is air-like; otherwise it is lung cut by a cropped field of view
EXTERIOR_AIR_FRACTION = 0.3
#: a 3D component more air-like than this is gas (bowel, a trachea alone), not lung
GAS_AIR_FRACTION = 0.6
#: smallest 3D component kept as lung, mL
MIN_COMPONENT_ML = 5.0
#: a lung's largest cross-section is at least this fraction of the body's in that slice (bowel
#: gas, sinus and scalp air stay far below it; a lung in a chest CT is 15-35 %)
MIN_SECTION_FRACTION = 0.05
#: region-growing thresholds tried in turn for the airway, HU
AIRWAY_HU = (-950.0, -975.0, -990.0)
#: air regions are told apart from the lungs below this (so that thin airway walls separate), HU
AIRWAY_WALL_HU = -700.0
#: the airway "explodes" (leaks into lung) above this volume, mL, or this fraction of the lungs
AIRWAY_MAX_ML = 150.0
AIRWAY_MAX_FRACTION = 0.1
#: the airway grows only this far left and right of the trachea seed, mm (trachea, main and
#: proximal lobar bronchi; a leak into the lung further out is cut off)
AIRWAY_CORRIDOR_MM = 45.0
#: the trachea seed: cross-section area range, mm², searched in this top fraction of lung slices
TRACHEA_AREA_MM2 = (30.0, 1000.0)
TRACHEA_SEARCH_FRACTION = 0.3
#: a component with at least this fraction on each side of the midline holds both lungs
MERGED_SIDE_FRACTION = 0.15
#: per-slice closing of each lung (iterations of a 3x3 cross on the coarse grid)
CLOSING_ITERATIONS = 2

RIGHT, LEFT = 1, 2

_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = ndi.generate_binary_structure(2, 1)  # 4-connectivity within a slice only


@dataclass(frozen=True)
class Lungs:
    """Full-resolution labels (0 background, RIGHT, LEFT) and how they were found."""

    labels: np.ndarray
    threshold_hu: float
    airway_found: bool
    split_at_midline: bool
    timings_s: dict[str, float]


def coarse_strides(
    spacing: tuple[float, float, float], shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """Block size per axis for blocks of about COARSE_MM (at most the array's extent)."""
    steps = [max(1, min(n, int(COARSE_MM / s + 1e-6))) if s > 0 else 1
             for s, n in zip(spacing, shape, strict=True)]
    return steps[0], steps[1], steps[2]


def block_mean(hu: np.ndarray, strides: tuple[int, int, int]) -> np.ndarray:
    """Mean of each stride-sized block (trailing partial blocks dropped), float32."""
    out = hu
    for axis, step in enumerate(strides):
        if step == 1:
            continue
        n = out.shape[axis] // step
        index: list[slice] = [slice(None)] * out.ndim
        parts = []
        for offset in range(step):
            index[axis] = slice(offset, offset + n * step, step)
            parts.append(out[tuple(index)])
        acc = np.add(parts[0], parts[1], dtype=np.float32)
        for part in parts[2:]:
            acc += part
        out = acc
    if out is hu:
        return np.asarray(hu, dtype=np.float32)
    out *= np.float32(1.0 / np.prod(strides))
    return out


def optimal_threshold(hu: np.ndarray) -> float:
    """Iterative intermeans threshold (Ridler & Calvard 1978, as used by Hu et al. 2001)."""
    sample = hu[:: max(1, hu.shape[0] // 64)]
    values = np.clip(np.rint(sample), -1024, 1024).astype(np.int32) + 1024
    hist = np.bincount(values.ravel(), minlength=2049).astype(np.float64)
    levels = np.arange(2049, dtype=np.float64) - 1024
    counts, sums = np.cumsum(hist), np.cumsum(hist * levels)
    t = -500.0
    for _ in range(100):
        k = int(np.clip(np.floor(t) + 1024, 0, 2048))
        n_lo, n_hi = counts[k], counts[-1] - counts[k]
        if n_lo == 0 or n_hi == 0:
            break
        new = 0.5 * (sums[k] / n_lo + (sums[-1] - sums[k]) / n_hi)
        if abs(new - t) < 0.5:
            t = new
            break
        t = new
    return float(np.clip(t, *THRESHOLD_RANGE_HU))


def _label_stats(
    labels: np.ndarray, n: int, mask: np.ndarray, hu: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count and air-like fraction of labels 0..n (``mask``: where labels are non-zero)."""
    ids = labels[mask]
    sizes = np.bincount(ids, minlength=n + 1)
    air = np.bincount(ids, hu[mask] < AIR_HU, minlength=n + 1)
    return sizes, air / np.maximum(sizes, 1)


def _touches_edge(labels: np.ndarray, n: int) -> np.ndarray:
    edge = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    edge[0] = False
    return edge


def _body(low: np.ndarray) -> np.ndarray:
    """Per slice: the largest non-low component with its holes filled (the trunk outline)."""
    body = np.zeros_like(low)
    for z in range(low.shape[0]):
        high, n = ndi.label(~low[z])
        if n:
            sizes = np.bincount(high.ravel())
            sizes[0] = 0
            body[z] = high == int(np.argmax(sizes))
    return fill_holes_2d(body)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Per-slice hole filling by labelling the complement (no iterative dilation)."""
    outside, n = ndi.label(~mask, structure=_PLANE)
    hole = ~_touches_edge(outside, n)
    hole[0] = False
    return mask | hole[outside]


def candidates(hu: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Low-density voxels inside the body or cut by a cropped field of view.

    Also returns the area of body and candidates per slice (voxels) and the body's midline
    (mean column).
    """
    low = hu < threshold
    body = _body(low)
    low_lab, n = ndi.label(low, structure=_PLANE)
    _, air = _label_stats(low_lab, n, low, hu)
    cropped = _touches_edge(low_lab, n) & (air <= EXTERIOR_AIR_FRACTION)
    cand = (low & body) | cropped[low_lab]
    columns = body.sum(axis=(0, 1), dtype=np.float64)
    midline = (float((columns * np.arange(columns.size)).sum() / columns.sum())
               if columns.sum() else (hu.shape[2] - 1) / 2)
    return cand, (body | cand).sum(axis=(1, 2)), midline


def lung_components(
    mask: np.ndarray, hu: np.ndarray, voxel_ml: float, section: np.ndarray
) -> tuple[np.ndarray, int]:
    """The 3D components that can be lung, labelled 1..k: large enough, not gas, and wide
    enough in their widest slice compared with the body (``section``: its area per slice)."""
    labels, n = ndi.label(mask)
    sizes, air = _label_stats(labels, n, mask, hu)
    keep = (sizes * voxel_ml >= MIN_COMPONENT_ML) & (air <= GAS_AIR_FRACTION)
    keep[0] = False
    boxes = ndi.find_objects(labels)
    for label in np.flatnonzero(keep):
        box = boxes[label - 1]
        areas = (labels[box] == label).sum(axis=(1, 2))
        keep[label] = bool((areas >= MIN_SECTION_FRACTION * section[box[0]]).any())
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels], int(keep.sum())


def _tube_like(lungs: np.ndarray, hu: np.ndarray, pixel_mm2: float) -> np.ndarray:
    """Air in per-slice regions no larger than a trachea: the airway outside the lungs.

    The trachea and the main bronchi run through the mediastinum, each slice showing them as
    small separate regions; where a bronchus enters the lung its region joins the lung's.
    """
    air = lungs & (hu < AIRWAY_WALL_HU)
    labels, n = ndi.label(air, structure=_PLANE)
    areas = np.bincount(labels[air], minlength=n + 1) * pixel_mm2
    small = areas <= TRACHEA_AREA_MM2[1]
    small[0] = False
    return small[labels]


def _trachea_seed(
    tube: np.ndarray, lungs: np.ndarray, hu: np.ndarray, superior_last: bool, pixel_mm2: float
) -> tuple[int, np.ndarray] | None:
    """An air-filled, trachea-sized region near the midline in the uppermost lung slices."""
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    if zs.size == 0:
        return None
    quarter = (cols[-1] - cols[0]) / 4
    order = zs[::-1] if superior_last else zs
    for z in order[: max(1, int(np.ceil(TRACHEA_SEARCH_FRACTION * zs.size)))]:
        air, n = ndi.label(tube[z] & (hu[z] < AIRWAY_HU[0]))
        if n == 0:
            continue
        areas = np.bincount(air.ravel())[1:] * pixel_mm2
        centres = ndi.center_of_mass(air > 0, air, np.arange(1, n + 1))
        for i in np.argsort(areas)[::-1]:
            ok_area = TRACHEA_AREA_MM2[0] <= areas[i] <= TRACHEA_AREA_MM2[1]
            if ok_area and cols[0] + quarter <= centres[i][1] <= cols[-1] - quarter:
                return int(z), air == i + 1
    return None


def airway(
    lungs: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], superior_last: bool
) -> np.ndarray | None:
    """Trachea and main bronchi by 3D region growing from a trachea seed; None if not found.

    The growth stays in tube-like air (see ``_tube_like``) within a corridor around the trachea;
    if it still exceeds the volume limit at every threshold, nothing is removed.
    """
    pixel_mm2 = spacing[1] * spacing[2]
    tube = _tube_like(lungs, hu, pixel_mm2)
    seed = _trachea_seed(tube, lungs, hu, superior_last, pixel_mm2)
    if seed is None:
        return None
    z, seed_mask = seed
    voxel_ml = float(np.prod(spacing)) / 1000.0
    limit = min(AIRWAY_MAX_ML, AIRWAY_MAX_FRACTION * lungs.sum() * voxel_ml)
    seed_column = float(np.nonzero(seed_mask)[1].mean())
    offsets_mm = np.abs(np.arange(lungs.shape[2]) - seed_column) * spacing[2]
    reachable = tube & (offsets_mm <= AIRWAY_CORRIDOR_MM)[None, None, :]
    for threshold in AIRWAY_HU:
        labels, _ = ndi.label(reachable & (hu < threshold))
        ids = np.unique(labels[z][seed_mask])
        ids = ids[ids > 0]
        if ids.size == 0:
            return None
        region = np.isin(labels, ids)
        if region.sum() * voxel_ml <= limit:
            return region
    return None


def _cut_columns(component: np.ndarray, midline: float) -> np.ndarray:
    """Per slice, the column near the midline with the least lung (the mediastinal line)."""
    profile = component.sum(axis=1).astype(np.float64)  # (slices, columns)
    cols = np.flatnonzero(profile.any(axis=0))
    half = max(2.0, 0.25 * (cols[-1] - cols[0]))
    lo = int(max(0, np.floor(midline - half)))
    hi = int(min(profile.shape[1], np.ceil(midline + half) + 1))
    window = profile[:, lo:hi] + 1e-3 * np.abs(np.arange(lo, hi) - midline)
    return lo + np.argmin(window, axis=1)


def split_sides(
    components: np.ndarray, n: int, midline: float, left_is_high_column: bool
) -> tuple[np.ndarray, bool]:
    """Label map: RIGHT / LEFT by the side of the midline; touching lungs cut per slice."""
    out = np.zeros(components.shape, dtype=np.uint8)
    low_side_label, high_side_label = (RIGHT, LEFT) if left_is_high_column else (LEFT, RIGHT)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    low_counts = np.bincount(components[:, :, : int(np.ceil(midline))].ravel(), minlength=n + 1)
    split = False
    column = np.arange(components.shape[2])
    for label in range(1, n + 1):
        fraction = low_counts[label] / sizes[label]
        component = components == label
        if MERGED_SIDE_FRACTION <= fraction <= 1 - MERGED_SIDE_FRACTION:
            split = True
            low_side = column[None, None, :] < _cut_columns(component, midline)[:, None, None]
            out[component & low_side] = low_side_label
            out[component & ~low_side] = high_side_label
        else:
            out[component] = low_side_label if fraction > 0.5 else high_side_label
    return out, split


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, idx[0] - margin), min(mask.shape[axis], idx[-1] + margin + 1)))
    return tuple(box)


def fill_lungs(labels: np.ndarray) -> np.ndarray:
    """Per lung and slice: a small closing, then hole filling (vessels become lung)."""
    out = np.zeros_like(labels)
    for value in (RIGHT, LEFT):
        mask = labels == value
        if not mask.any():
            continue
        box = _bbox(mask, CLOSING_ITERATIONS + 1)
        part = ndi.binary_closing(mask[box], structure=_PLANE, iterations=CLOSING_ITERATIONS)
        part = fill_holes_2d(part | mask[box])
        view = out[box]
        view[part & (view == 0)] = value
    return out


def _neighbourhood(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each voxel: does a 6-neighbour carry another label, and the largest neighbour label."""
    differs = np.zeros(labels.shape, dtype=bool)
    largest = np.zeros_like(labels)
    padded = np.pad(labels, 1, mode="edge")
    inner = tuple(slice(1, -1) for _ in range(3))
    for axis, step in itertools.product(range(3), (-1, 1)):
        index = list(inner)
        index[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
        neighbour = padded[tuple(index)]
        differs |= neighbour != labels
        np.maximum(largest, neighbour, out=largest)
    return differs, largest


def upsample(
    labels: np.ndarray, strides: tuple[int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    out = labels
    for axis, s in enumerate(strides):
        if s > 1:
            out = np.repeat(out, s, axis=axis)
    pad = [(0, n - m) for n, m in zip(shape, out.shape, strict=True)]
    return np.pad(out, pad, mode="edge") if any(p[1] for p in pad) else out


def refine(
    coarse: np.ndarray, excluded: np.ndarray, hu: np.ndarray, threshold: float,
    strides: tuple[int, int, int],
) -> np.ndarray:
    """Full-resolution labels: the coarse interior, plus low voxels in a band at its edge."""
    if strides == (1, 1, 1):
        return coarse
    out = np.zeros(hu.shape, dtype=np.uint8)
    if not coarse.any():
        return out
    box = _bbox(coarse > 0, 1)
    full = tuple(
        slice(b.start * s, n_full if b.stop == n else b.stop * s)
        for b, s, n, n_full in zip(box, strides, coarse.shape, hu.shape, strict=True)
    )
    part = coarse[box]
    differs, largest = _neighbourhood(part)
    core = np.where(differs, 0, part).astype(np.uint8)
    band = np.where(differs, np.where(part > 0, part, largest), 0).astype(np.uint8)
    band[excluded[box]] = 0
    shape = tuple(b.stop - b.start for b in full)
    labels = upsample(core, strides, shape)
    edge = upsample(band, strides, shape)
    take = (edge > 0) & (hu[full] < threshold)
    labels[take] = edge[take]
    out[full] = labels
    return out


def segment_lungs(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    left_is_high_column: bool = True,
    superior_last: bool = True,
) -> Lungs:
    """Right and left lung labels on a (slices, rows, columns) HU array."""
    start = time.perf_counter()
    strides = coarse_strides(spacing, hu.shape)
    coarse_hu = block_mean(hu, strides)
    coarse_spacing = (spacing[0] * strides[0], spacing[1] * strides[1], spacing[2] * strides[2])
    voxel_ml = float(np.prod(coarse_spacing)) / 1000.0
    threshold = optimal_threshold(coarse_hu)
    timings = {"preprocess": time.perf_counter() - start}

    start = time.perf_counter()
    cand, section, midline = candidates(coarse_hu, threshold)
    components, n = lung_components(cand, coarse_hu, voxel_ml, section)
    filled = np.zeros(cand.shape, dtype=np.uint8)
    excluded = np.zeros(cand.shape, dtype=bool)
    tube, split = None, False
    if n:  # the rest runs on the lungs' bounding box
        box = _bbox(components > 0, 2)
        lungs, box_hu, box_section = components[box] > 0, coarse_hu[box], section[box[0]]
        tube = airway(lungs, box_hu, coarse_spacing, superior_last)
        if tube is not None:
            excluded[box] = ndi.binary_dilation(tube)
            lungs &= ~excluded[box]
        components, n = lung_components(lungs, box_hu, voxel_ml, box_section)
        sides, split = split_sides(components, n, midline - box[2].start, left_is_high_column)
        filled[box] = fill_lungs(sides)
        filled[excluded] = 0
    labels = refine(filled, excluded, hu, threshold, strides)
    timings["segment"] = time.perf_counter() - start
    return Lungs(labels, threshold, tube is not None, split, timings)
