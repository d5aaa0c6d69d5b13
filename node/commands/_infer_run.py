"""What ``dicom-node infer`` does: one model on DICOM files or folders, offline, with a summary.

Kept apart from the command's arguments (``node.commands.infer``) so that other commands do not
import the models' libraries when they start.

The model runs through the inference stage's own function
(``node.pipeline.infer.stage.run_model``)
on the de-identification stage's pure function: the same code as the flow, not a copy.

The model sees only de-identified data: every input is de-identified in memory (with a
throw-away key: nothing of this run is stored) before the volume is assembled. The summary names
the original series, since it is written for the person who ran the command on their own data;
the DICOM results (SEG, SR, SC, KOS, Encapsulated PDF) and report.pdf are built against the
original instances, so they belong to the patient's own study.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from node.commands._inputs import input_files
from node.core.contract import ModelResult, ResultContext
from node.core.errors import PermanentError
from node.core.keys import DeidKeys, new_secret
from node.core.settings import Settings
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.profile import load_profile
from node.pipeline.infer.registry import LoadedModel, load_model
from node.pipeline.infer.series import eligible, summarize
from node.pipeline.infer.stage import run_model
from node.pipeline.infer.summary import result_summary
from node.sr_writer.bundle import build_all


class NoSuitableSeries(PermanentError):
    """No series of the input fits the model's selection rules."""


@dataclass(frozen=True)
class InferRun:
    loaded: LoadedModel
    result: ModelResult
    original_series_uid: str
    timings_s: dict[str, float]
    #: the original instances in the volume's slice order (for the result writers)
    sources: tuple[pydicom.Dataset, ...] = ()


def run_infer(settings: Settings, model_name: str, inputs: list[Path]) -> InferRun:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    loaded = load_model(settings.models_path / model_name, settings.models.device)
    timings["load_model"] = time.perf_counter() - t

    t = time.perf_counter()
    originals: list[pydicom.Dataset] = []
    for path in input_files(inputs):
        try:
            originals.append(pydicom.dcmread(path))
        except InvalidDicomError:
            continue
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    profile = load_profile(settings.deid)
    pseudonymous = {keys.uid(str(ds.SeriesInstanceUID)): str(ds.SeriesInstanceUID)
                    for ds in originals if "SeriesInstanceUID" in ds}
    deidentified = [deidentify(copy.deepcopy(ds), profile, keys).dataset for ds in originals]
    by_pseudonym = {keys.uid(str(ds.SOPInstanceUID)): ds for ds in originals}
    timings["deidentify"] = time.perf_counter() - t

    infos = summarize(deidentified)
    run = run_model(loaded, deidentified, infos)  # the inference stage's own function
    if run is None:
        reasons = "; ".join(f"series {i + 1}: {eligible(s, loaded.manifest.selection)}"
                            for i, s in enumerate(infos)) or "no DICOM input"
        raise NoSuitableSeries(f"no series fits model {model_name} ({reasons})")
    timings["assemble"] = run.assemble_s
    sources = tuple(by_pseudonym[uid] for uid in run.slice_uids)
    return InferRun(loaded, run.result, pseudonymous.get(run.series_instance_uid, ""), timings,
                    sources)


def write_results(run: InferRun, out: Path) -> list[Path]:
    """Build SEG, SR, SC, KOS and the PDF report against the original study; write them."""
    study = str(run.sources[0].StudyInstanceUID)
    ctx = ResultContext(sources=run.sources, result=run.result, manifest=run.loaded.manifest,
                        job_key=f"{study}/infer/{run.loaded.manifest.name}",
                        created=datetime.now().replace(microsecond=0))
    objects = build_all(ctx)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, ds in objects.named():
        path = out / f"{stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    (out / "report.pdf").write_bytes(objects.pdf)
    return [*written, out / "report.pdf"]


def summary(run: InferRun) -> dict[str, Any]:
    out = result_summary(run.loaded, run.result, run.original_series_uid)
    out["timings_s"] = {k: round(v, 4) for k, v in
                        {"load_model": run.loaded.load_s, **run.timings_s,
                         **run.result.timings_s}.items()}
    return out


def write_summary(run: InferRun, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(summary(run), indent=2) + "\n", encoding="utf-8")
    return path
