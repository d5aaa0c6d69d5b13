"""``dicom-node infer``: one model on DICOM files or folders, offline, with a summary.json
(the work is in ``node.commands._infer_run``, imported only when this command runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.commands._common import EXIT_OK
from node.core.settings import Settings


def add(sub: Any) -> None:
    inf = sub.add_parser("infer", help="run one model on DICOM files or folders, offline")
    inf.add_argument("--model", required=True, metavar="NAME", help="a folder under models/")
    inf.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    inf.add_argument("--out", required=True, metavar="DIR", help="folder for summary.json")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.commands._infer_run import run_infer, summary, write_results, write_summary

    run = run_infer(settings, args.model, [Path(p) for p in args.inputs])
    path = write_summary(run, Path(args.out))
    objects = write_results(run, Path(args.out))
    print(json.dumps(summary(run)["measurements"] or summary(run)["findings"]))
    print(f"summary and {len(objects)} result files written to {path.parent}")
    return EXIT_OK
