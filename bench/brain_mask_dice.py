"""Brain-mask Dice on Colin27 before and after each post-processing step, with the time each costs.

    .venv/bin/python bench/brain_mask_dice.py [--planes axial sagittal] [--device cpu]
                                              [--out bench/results/brain_mask_dice.json]

The Colin27 T1 (Debian mricron-data) is written as a DICOM MR series (181 axial or 181 sagittal
slices, as tests/models/test_brain_mask.py writes it), read back through the node's volume
assembly and run through the brain-mask model's own ``predict`` once per variant, with the
manifest's ``[postprocess]`` replaced by the variant's steps:

* none; + flip averaging; + largest component; + hole filling (3D and per slice); all three;
  and, to show what the per-slice part adds, + hole filling in 3D only.

Then two checks of the input against what the network was trained on (deepbrain's
``train/extractor/*_to_tfrecord.py``), each a diagnostic run of the network without
post-processing, not a setting of the model:

* "input as uint8": training stored each resized, max-divided input as ``uint8(x * 255)`` and
  fed ``/ 255`` back (256 levels, truncated); deepbrain's ``Extractor.run`` and this model feed
  the float. The check feeds ``floor(x * 255) / 255``.
* "256 mm field of view": training volumes (CC359, NFBS, ADNI) span about 256 mm along two axes
  (256 x 256 voxels of 1 mm), so the network saw about 2 mm per 128^3 voxel; Colin27 spans
  181 x 217 x 181 mm, so its brain appears up to 1.4x larger. The check pads the volume with
  zeros, centred, to 256 mm along every axis before the resize (2 mm voxels), and crops the
  probability back.

Each mask is compared with ch2bet > 0 mapped onto the series' voxels through patient coordinates.
Printed per variant: Dice, brain volume (ch2bet's beside it), mL added outside ch2bet and missed
inside it, and the model's stage times (flip averaging shows in ``forward``, the mask steps in
``postprocess``). Colin27 is the test set: nothing here chooses a threshold or a step from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import ndimage  # noqa: E402

from node.pipeline.infer.loaders import import_from  # noqa: E402
from node.pipeline.infer.registry import load_model  # noqa: E402
from tests.models.test_brain_mask import (  # noqa: E402
    MODEL_DIR,
    _dice,
    _nifti,
    _read_series,
    _resample_onto,
    _write_series,
)

Postprocess = import_from(MODEL_DIR, "postprocess.py:Postprocess", "brain-mask")
_resize = import_from(MODEL_DIR, "model.py:_resize", "brain-mask")
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "+ flip averaging": {"flip_average": True},
    "+ largest component": {"largest_component": True},
    "+ fill holes": {"fill_holes": True},
    "all three": {"flip_average": True, "largest_component": True, "fill_holes": True},
}


def run_plane(plane: str, device: str, group_average: bool = False) -> list[dict[str, Any]]:
    loaded = load_model(MODEL_DIR, device)
    model = loaded.model
    with tempfile.TemporaryDirectory(prefix="brain-mask-dice-") as tmp:
        _write_series(_nifti("ch2.nii.gz"), Path(tmp), plane)
        volume = _read_series(Path(tmp))
    reference = _resample_onto(_nifti("ch2bet.nii.gz"), volume.geometry, volume.array.shape) > 0
    ml = volume.geometry.voxel_volume_ml
    model.predict(volume)  # warm-up: the first call pays for allocations, not for a step
    rows = []
    masks: dict[str, np.ndarray] = {}
    for name, steps in VARIANTS.items():
        model.postprocess = Postprocess(**steps)
        start = time.perf_counter()
        result = model.predict(volume)
        total = time.perf_counter() - start
        mask = result.segments[0].mask
        masks[name] = mask
        rows.append(_row(plane, name, mask, reference, ml, {**result.timings_s, "total": total}))
    start = time.perf_counter()
    filled_3d = ndimage.binary_fill_holes(masks["none"])
    rows.append(_row(plane, "+ fill holes, 3D only", filled_3d, reference, ml,
                     {"fill_3d": time.perf_counter() - start}))
    for name, check in (("check: input as uint8", {"quantise": True}),
                        ("check: 256 mm field of view", {"fov_mm": 256.0})):
        start = time.perf_counter()
        mask = _plain_pass(model, volume, **check)
        rows.append(_row(plane, name, mask, reference, ml, {"total": time.perf_counter() - start}))
    if group_average:
        start = time.perf_counter()
        mask = _group_average_pass(model, volume)
        rows.append(_row(plane, "check: 48-view average", mask, reference, ml,
                         {"total": time.perf_counter() - start}))
    return rows


def _group_average_pass(model: Any, volume: Any) -> np.ndarray:
    """The mean probability over the 6 axis orders x 8 mirrorings of the 128^3 input."""
    with torch.inference_mode():
        x = torch.as_tensor(np.asarray(volume.array, dtype=np.float32), device=model.device)
        shape = tuple(x.shape)
        x = _resize((x - x.min())[None, None], model.size)
        x = x / x.max()
        total, views = torch.zeros_like(x), 0
        for order in itertools.permutations((2, 3, 4)):
            perm = (0, 1, *order)
            back = tuple(int(i) for i in np.argsort(perm))
            xp = x.permute(perm)
            for n in range(4):
                for axes in itertools.combinations((2, 3, 4), n):
                    y = model.network(torch.flip(xp, axes)) if axes else model.network(xp)
                    total += (torch.flip(y, axes) if axes else y).permute(back)
                    views += 1
        prob = F.interpolate(total / views, size=shape, mode="trilinear", align_corners=False)
        return np.asarray((prob[0, 0] > 0.5).cpu().numpy())


def _plain_pass(model: Any, volume: Any, quantise: bool = False,
                fov_mm: float | None = None) -> np.ndarray:
    """The model's preprocessing and one forward pass, with one training-side difference undone."""
    with torch.inference_mode():
        x = torch.as_tensor(np.asarray(volume.array, dtype=np.float32), device=model.device)
        shape = tuple(x.shape)
        x = x - x.min()
        pads = [(0, 0)] * 3
        if fov_mm is not None:
            extra = [max(0, round(fov_mm / s) - n) for n, s in zip(shape, volume.geometry.spacing,
                                                                   strict=True)]
            pads = [(e // 2, e - e // 2) for e in extra]
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        padded = tuple(x.shape)
        x = _resize(x[None, None], model.size)
        x = x / x.max()
        if quantise:
            x = torch.floor(x * 255.0) / 255.0
        prob = F.interpolate(model.network(x), size=padded, mode="trilinear", align_corners=False)
        prob = prob[0, 0][tuple(slice(a, a + n) for (a, _), n in zip(pads, shape, strict=True))]
        return np.asarray((prob > 0.5).cpu().numpy())


def _row(plane: str, name: str, mask: np.ndarray, reference: np.ndarray, ml: float,
         timings: dict[str, float]) -> dict[str, Any]:
    return {
        "plane": plane,
        "variant": name,
        "dice": _dice(mask, reference),
        "volume_ml": float(mask.sum() * ml),
        "ch2bet_ml": float(reference.sum() * ml),
        "outside_ml": float((mask & ~reference).sum() * ml),
        "missed_ml": float((~mask & reference).sum() * ml),
        "timings_s": timings,
    }


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"{'plane':9} {'variant':28} {'Dice':>6} {'mL':>7} {'ch2bet':>7} {'outside':>8} "
          f"{'missed':>7}  times (s)")
    for r in rows:
        times = ", ".join(f"{k} {v:.2f}" for k, v in r["timings_s"].items())
        print(f"{r['plane']:9} {r['variant']:28} {r['dice']:6.4f} {r['volume_ml']:7.1f} "
              f"{r['ch2bet_ml']:7.1f} {r['outside_ml']:8.1f} {r['missed_ml']:7.1f}  {times}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", nargs="+", default=["axial", "sagittal"],
                        choices=["axial", "sagittal"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--group-average", action="store_true",
                        help="also the 48-view average (about 48x the forward time)")
    args = parser.parse_args()
    rows = [row for plane in args.planes
            for row in run_plane(plane, args.device, args.group_average)]
    _print(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
