"""The inference stage: every enabled model that fits a DEIDENTIFIED study runs (INFERRED).

For each model whose selection rules fit one of the study's series, that series' de-identified
instances are assembled into a volume and the model predicts; its result is kept under
``var/results/<study key>/g<generation>/<model>/`` (``node.pipeline.infer.stored``). A model
whose series cannot be assembled is named in the job's reason; if every model failed, the job
is FAILED.

:func:`run_model` is what both the flow and ``dicom-node infer`` run for one model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from node.core import at_rest, metrics
from node.core.contract import ModelResult, classification
from node.core.errors import PermanentError
from node.core.jobstate import JobState
from node.core.ledger import ResultRecord, StudyRow, record_results
from node.core.logs import result_line
from node.pipeline.context import StageContext, Step
from node.pipeline.infer.assemble import VolumeError, assemble
from node.pipeline.infer.registry import LoadedModel
from node.pipeline.infer.series import SeriesInfo, select_series
from node.pipeline.infer.series import summarize as summarize_series
from node.pipeline.infer.stored import save_result

log = logging.getLogger("node.pipeline")


@dataclass(frozen=True)
class ModelRun:
    """One model on one series: its result, the (de-identified) series it ran on, the
    volume's slice UIDs in order, and how long assembling and predicting took."""

    result: ModelResult
    series_instance_uid: str
    slice_uids: tuple[str, ...]
    assemble_s: float
    predict_s: float


def run_model(loaded: LoadedModel, datasets: Sequence[pydicom.Dataset],
              infos: list[SeriesInfo] | None = None) -> ModelRun | None:
    """The model on the series of ``datasets`` its selection rules pick; None when none fits.

    ``datasets`` are de-identified. Raises VolumeError when the series cannot be assembled.
    """
    chosen = select_series(summarize_series(datasets) if infos is None else infos,
                           loaded.manifest.selection)
    if chosen is None:
        return None
    t = time.perf_counter()
    volume = assemble([d for d in datasets
                       if str(d.get("SeriesInstanceUID", "")) == chosen.series_instance_uid])
    assemble_s = time.perf_counter() - t
    t = time.perf_counter()
    result = loaded.model.predict(volume)
    return ModelRun(result, chosen.series_instance_uid, volume.geometry.sop_instance_uids,
                    assemble_s, time.perf_counter() - t)


def infer_job(ctx: StageContext, job: StudyRow) -> Step:
    """DEIDENTIFIED -> INFERRED: every enabled model that fits, its result kept on disk."""
    t = time.perf_counter()
    datasets = _deidentified(ctx, job)
    read_s = time.perf_counter() - t
    infos = summarize_series(datasets)
    out_root = ctx.results_dir(job.study_instance_uid) / f"g{job.generation}"
    ran, failed, records = [], [], []
    for name, loaded in ctx.models.items():
        try:
            run = run_model(loaded, datasets, infos)
        except VolumeError as exc:
            failed.append(f"{name}: {exc}")
            continue
        if run is None:
            continue
        metrics.inference(name, run.predict_s)
        # the stage timings (read, assemble, predict) kept with the model's own
        result = replace(run.result, timings_s={
            **run.result.timings_s, "read_deidentified": read_s, "assemble": run.assemble_s,
            "predict": run.predict_s})
        save_result(out_root / name, loaded, result, run.series_instance_uid, run.slice_uids)
        records.append(_record(loaded, result, (out_root / name).relative_to(ctx.spool.root)))
        log.info("study #%d: %s %s: %s", job.id, name, loaded.manifest.version,
                 result_line(result))
        ran.append(name)
    if failed and not ran:
        raise PermanentError("; ".join(failed))
    reason = f"models run: {', '.join(ran)}" if ran else "no enabled model fits this study"
    if failed:
        reason += f"; failed: {'; '.join(failed)}"
    # the results rows are committed with the move, so an INFERRED job always has them
    return Step(JobState.INFERRED, reason,
                also=lambda conn: record_results(conn, job.id, job.generation, records))


def _record(loaded: LoadedModel, result: ModelResult, folder: Path) -> ResultRecord:
    predicted = classification(result)
    return ResultRecord(loaded.manifest.name, loaded.manifest.version, result.triage.value,
                        None if predicted is None else predicted.finding.concept.meaning,
                        folder.as_posix())


def _deidentified(ctx: StageContext, job: StudyRow) -> list[pydicom.Dataset]:
    """The study's de-identified instances: those the de-identification stage has just
    written in this process (the same data sets, equal element by element to what the files
    read back), else the files (after a restart, on another worker, or when another study came
    in between)."""
    handoff, ctx.handoff = ctx.handoff, None
    if handoff is not None and handoff[:2] == (job.id, job.generation):
        return handoff[2]
    return [at_rest.dcmread(p)
            for p in sorted(ctx.deid_dir(job.study_instance_uid).glob("*.dcm"))]
