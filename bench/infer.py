"""Inference benchmark: time per study for each default model on CPU, split by stage.

    .venv/bin/python bench/infer.py [--runs 3] [--out bench/results/infer.json]

Per model and run: read the DICOM series, de-identify it in memory, assemble the volume, and run
the model (its own preprocess / forward / postprocess timings). The model is loaded once
(``load``, reported separately): the node keeps models loaded. Studies:

* brain-mask: the Colin27 T1 MRI (Debian mricron-data) written as a 181-slice DICOM MR series;
* lung-ct: the chest phantom of tests/models/chest_phantom.py, 300 slices of 512 x 512, written
  as a DICOM CT series (issue target: <= 3 s per study for brain-mask and lung-ct);
* brain-tumor-demo: the Colin27 series again (16 central slices classified, Grad-CAM on one).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from node.core.keys import DeidKeys, new_secret  # noqa: E402
from node.core.settings import DeidSettings  # noqa: E402
from node.pipeline.deid.deidentify import deidentify  # noqa: E402
from node.pipeline.deid.profile import load_profile  # noqa: E402
from node.pipeline.infer.assemble import assemble  # noqa: E402
from node.pipeline.infer.registry import load_model  # noqa: E402


def brain_series(folder: Path) -> None:
    from tests.models.test_brain_mask import _nifti, _write_series

    _write_series(_nifti("ch2.nii.gz"), folder)


def lung_series(folder: Path) -> None:
    from tests.models.chest_phantom import chest_phantom, write_ct_series

    write_ct_series(chest_phantom(slices=300, size=512).volume, folder)


STUDIES = {"brain-mask": brain_series, "lung-ct": lung_series, "brain-tumor-demo": brain_series}


def one_run(model_name: str, folder: Path, loaded: Any) -> dict[str, float]:
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    profile = load_profile(DeidSettings())
    t: dict[str, float] = {}
    start = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    t["read"] = time.perf_counter() - start
    start = time.perf_counter()
    datasets = [deidentify(ds, profile, keys).dataset for ds in datasets]
    t["deidentify"] = time.perf_counter() - start
    start = time.perf_counter()
    volume = assemble(datasets)
    t["assemble"] = time.perf_counter() - start
    start = time.perf_counter()
    result = loaded.model.predict(volume)
    t["model_total"] = time.perf_counter() - start
    for stage, seconds in result.timings_s.items():
        t[f"model.{stage}"] = seconds
    t["study_total"] = t["read"] + t["deidentify"] + t["assemble"] + t["model_total"]
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "infer.json")
    parser.add_argument("--models", nargs="*", default=list(STUDIES))
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            folder.mkdir()
            STUDIES[name](folder)
            loaded = load_model(REPO / "models" / name, "cpu")
            runs = [one_run(name, folder, loaded) for _ in range(args.runs)]
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            report[name] = {"load_s": loaded.load_s, "median_s": medians, "runs": runs,
                            "instances": len(list(folder.glob("*.dcm")))}
            print(f"\n{name}: {report[name]['instances']} instances, model load "
                  f"{loaded.load_s:.2f} s (once), median of {args.runs} run(s), CPU")
            for stage, seconds in medians.items():
                print(f"  {stage:<24} {seconds:7.3f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {args.out}")


if __name__ == "__main__":
    main()
