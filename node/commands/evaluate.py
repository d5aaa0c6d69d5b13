"""``dicom-node evaluate``: one model on a labelled data set, scored, with a JSON and PDF report
(the work is in ``node.pipeline.evaluate``, imported only when this command runs)."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import sys
from pathlib import Path
from typing import Any

from node.commands._common import EXIT_ERROR, EXIT_OK
from node.core.settings import Settings

LAYOUT = """\
data folder layout:
  segmentation models: one folder per case
    DATA/<case>/image.nii.gz | image.nii | image/   (image/: one DICOM series)
    DATA/<case>/reference.nii.gz | reference.nii | reference.dcm   (reference.dcm: DICOM SEG)
    A NIfTI reference is a mask (> 0) for a one-segment model, else a label map of the
    manifest's labels; with a NIfTI image it has the image's shape and affine, with a DICOM
    image it is mapped through patient coordinates. A SEG's segment numbers are the labels.
  classification models: DATA/labels.csv with the header file,label
    file: relative to DATA, a PNG/JPEG picture, a DICOM file or a folder of one DICOM series
    label: the class's index, code value or name in the model's manifest

writes OUT/evaluation.json and OUT/evaluation.pdf: per case Dice, HD95 (mm) and volume error,
or the predicted class and probabilities; the mean with 95% bootstrap intervals (2,000
resamples, seed 0); accuracy, sensitivity, specificity, ROC AUC per class and the confusion
matrix. A case that cannot be evaluated is listed as failed with its reason; the exit status
is 1 only when no case could be evaluated."""


def add(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="score one model on a labelled data set (JSON + PDF)",
                        description="Run one model on a labelled data set and write a report.",
                        epilog=LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", required=True, metavar="NAME", help="a folder under models/")
    ev.add_argument("--data", required=True, metavar="DIR", help="the labelled data set")
    ev.add_argument("--out", metavar="DIR", default="",
                    help="folder for evaluation.json and evaluation.pdf "
                         "(default: ./evaluation-NAME)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.core.keys import DeidKeys, new_secret
    from node.pipeline.deid.deidentify import deidentify
    from node.pipeline.deid.profile import load_profile
    from node.pipeline.evaluate.report_pdf import build_report_pdf
    from node.pipeline.evaluate.run import evaluate
    from node.pipeline.infer.registry import load_model

    loaded = load_model(settings.models_path / args.model, settings.models.device)
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))  # thrown away after the run
    profile = load_profile(settings.deid)

    def deid(ds: Any) -> Any:
        return deidentify(copy.deepcopy(ds), profile, keys).dataset

    report = evaluate(loaded, Path(args.data), deid,
                      progress=lambda line: print(line, file=sys.stderr))
    out = Path(args.out or f"evaluation-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "evaluation.pdf").write_bytes(build_report_pdf(report))
    print(f"{report['cases_evaluated']} of {report['cases_total']} cases evaluated; "
          f"report written to {out / 'evaluation.json'} and {out / 'evaluation.pdf'}")
    if report["cases_evaluated"] == 0:
        print("dicom-node: no case could be evaluated", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
