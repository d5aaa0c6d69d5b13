"""One model on a labelled data set: every case run and scored, then the summary with intervals.

The orchestrator of ``dicom-node evaluate``: reads the cases (``cases.py``), runs the model's own
``predict`` on each, scores it with the pure functions of ``metrics.py`` and returns the report
as a JSON-ready dict (the PDF is drawn from it by ``report_pdf.py``). A case that cannot be
evaluated (missing or unreadable file, a reference on another grid, a label the model does not
know, a model error) is kept in the report as failed with its one-line reason; the others go on.
A reference is read before the model runs, so a bad case costs no model time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from node.core.contract import AI_DISCLAIMER, ModelResult
from node.core.errors import NodeError
from node.pipeline.evaluate import metrics
from node.pipeline.evaluate.cases import (
    CaseError,
    DataError,
    Deidentify,
    class_index,
    classification_cases,
    load_image,
    load_reference,
    segmentation_cases,
)
from node.pipeline.infer.loaders import sha256_of
from node.pipeline.infer.registry import LoadedModel

log = logging.getLogger("node.evaluate")
Progress = Callable[[str], None]
TASKS = ("segmentation", "classification")


def evaluate(loaded: LoadedModel, data: Path, deid: Deidentify,
             progress: Progress | None = None) -> dict[str, Any]:
    """The report of ``loaded`` on the data set in ``data`` (see ``cases.py`` for its layout)."""
    task = loaded.manifest.task
    if task not in TASKS:
        raise DataError(f"model {loaded.manifest.name} is a {task} model: evaluate scores "
                        f"{' and '.join(TASKS)} models")
    say = progress or (lambda _line: None)
    if task == "segmentation":
        rows = [_segmentation_case(loaded, c.name, c.image, c.reference, deid, say)
                for c in segmentation_cases(data)]
        summary = _segmentation_summary(loaded, rows)
    else:
        rows = [_classification_case(loaded, c.name, c.image, c.label, deid, say)
                for c in classification_cases(data)]
        summary = _classification_summary(loaded, rows)
    evaluated = sum(r["status"] == "ok" for r in rows)
    return {
        "model": _model_info(loaded),
        "task": task,
        "data": str(data),
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "cases_total": len(rows),
        "cases_evaluated": evaluated,
        "cases_failed": len(rows) - evaluated,
        "summary": summary,
        "cases": rows,
        "intervals": {"method": "percentile bootstrap, cases resampled with replacement",
                      "level": metrics.LEVEL, "resamples": metrics.RESAMPLES,
                      "seed": metrics.SEED},
        "notice": f"{AI_DISCLAIMER}. Figures describe this data set only.",
    }


def _model_info(loaded: LoadedModel) -> dict[str, Any]:
    m = loaded.manifest
    path = m.weights_path
    return {"name": m.name, "version": m.version, "task": m.task,
            "weights_file": m.weights_file or None,
            "weights_sha256": sha256_of(path) if path is not None else None,
            "device": loaded.device}


def _predict(loaded: LoadedModel, name: str, volume: Any) -> tuple[ModelResult, float]:
    start = time.perf_counter()
    try:
        result = loaded.model.predict(volume)
    except (NodeError, ValueError, RuntimeError) as exc:
        # the model refused this input: the case fails, the run goes on
        log.warning("evaluate: case %s: model error %s", name, type(exc).__name__)
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CaseError(f"model error: {type(exc).__name__} {first}".rstrip()) from None
    return result, time.perf_counter() - start


def _failed(name: str, exc: CaseError, say: Progress, **extra: Any) -> dict[str, Any]:
    say(f"case {name}: failed: {exc}")
    return {"case": name, "status": "failed", "error": str(exc), **extra}


# -- segmentation -----------------------------------------------------------------------------


def _segmentation_case(loaded: LoadedModel, name: str, image_path: Path | None,
                       reference_path: Path | None, deid: Deidentify,
                       say: Progress) -> dict[str, Any]:
    manifest = loaded.manifest
    try:
        image = load_image(image_path, manifest, deid)
        reference = load_reference(reference_path, image)
        result, seconds = _predict(loaded, name, image.volume)
    except CaseError as exc:
        return _failed(name, exc, say)
    geometry = image.volume.geometry
    masks = {s.label: s.mask for s in result.segments}
    shapes = {tuple(np.shape(m)) for m in masks.values()} - {reference.shape}
    if shapes:
        return _failed(name, CaseError(f"model mask shape {shapes.pop()} differs from the "
                                       f"image's {reference.shape}"), say)
    segments = {}
    for spec in manifest.segments:
        mask = np.asarray(masks.get(spec.label, np.zeros(reference.shape, dtype=bool)), dtype=bool)
        ref = reference > 0 if len(manifest.segments) == 1 else reference == spec.label
        mask_ml = int(mask.sum()) * geometry.voxel_volume_ml
        ref_ml = int(ref.sum()) * geometry.voxel_volume_ml
        error_ml, error_pct = metrics.volume_error(mask_ml, ref_ml)
        segments[spec.name] = {
            "dice": metrics.dice(mask, ref),
            "hd95_mm": metrics.hd95(mask, ref, geometry.spacing),
            "volume_ml": mask_ml, "reference_ml": ref_ml,
            "volume_error_ml": error_ml, "volume_error_pct": error_pct,
        }
    first = next(iter(segments.values()))
    say(f"case {name}: Dice {first['dice']:.4f}, {seconds:.1f} s")
    return {"case": name, "status": "ok", "seconds": seconds,
            "shape": list(image.volume.array.shape), "spacing_mm": list(geometry.spacing),
            "segments": segments}


_SEG_METRICS = ("dice", "hd95_mm", "volume_error_ml", "volume_error_pct")


def _segmentation_summary(loaded: LoadedModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in loaded.manifest.segments:
        per = [r["segments"][spec.name] for r in rows if r["status"] == "ok"]
        out[spec.name] = {key: metrics.mean_with_ci([p[key] for p in per if p[key] is not None])
                          for key in _SEG_METRICS}
    return out


# -- classification ---------------------------------------------------------------------------


def _classification_case(loaded: LoadedModel, name: str, image_path: Path | None, label: str,
                         deid: Deidentify, say: Progress) -> dict[str, Any]:
    manifest = loaded.manifest
    classes = [f.name for f in manifest.findings]
    try:
        if image_path is None:
            raise CaseError("no file named in labels.csv")
        truth = class_index(label, manifest)
        image = load_image(image_path, manifest, deid)
        result, seconds = _predict(loaded, name, image.volume)
        probs = [f.probability for f in result.findings]
        if len(probs) != len(classes):
            raise CaseError(f"model returned {len(probs)} class probabilities, "
                            f"its manifest names {len(classes)}")
    except CaseError as exc:
        return _failed(name, exc, say, label=label)
    predicted = int(np.argmax(probs))
    say(f"case {name}: {classes[predicted]} ({probs[predicted]:.3f}), {seconds:.1f} s")
    return {"case": name, "status": "ok", "seconds": seconds, "label": label,
            "truth": classes[truth], "truth_index": truth,
            "predicted": classes[predicted], "predicted_index": predicted,
            "correct": predicted == truth,
            "probabilities": dict(zip(classes, probs, strict=True))}


def _with_ci(n: int, value: float | None,
             statistic: Callable[[np.ndarray], float | None]) -> dict[str, Any]:
    ci = metrics.bootstrap_ci(n, statistic) if value is not None else None
    return {"value": value, "ci95": list(ci) if ci else None}


def _classification_summary(loaded: LoadedModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    classes = [f.name for f in loaded.manifest.findings]
    ok = [r for r in rows if r["status"] == "ok"]
    t = np.array([r["truth_index"] for r in ok], dtype=int)
    p = np.array([r["predicted_index"] for r in ok], dtype=int)
    s = np.array([[r["probabilities"][c] for c in classes] for r in ok], dtype=float)
    n = len(ok)
    per_class = {name: _one_class(t, p, s, k) for k, name in enumerate(classes)}
    counts = metrics.confusion_matrix(t, p, len(classes))
    return {
        "classes": classes,
        "accuracy": _with_ci(n, metrics.accuracy(t, p), lambda i: metrics.accuracy(t[i], p[i])),
        "per_class": per_class,
        "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                             "counts": counts.tolist(),
                             "row_fraction": _row_fractions(t, p, len(classes))},
    }


def _one_class(t: np.ndarray, p: np.ndarray, s: np.ndarray, k: int) -> dict[str, Any]:
    """Class ``k`` against all others: its case counts, sensitivity, specificity, ROC AUC."""
    n, positives = len(t), int((t == k).sum())

    def sens(i: np.ndarray) -> float | None:
        return metrics.sensitivity(t[i], p[i], k)

    def spec(i: np.ndarray) -> float | None:
        return metrics.specificity(t[i], p[i], k)

    def auc(i: np.ndarray) -> float | None:
        return metrics.roc_auc(t[i] == k, s[i, k])

    everything = np.arange(n)
    return {"positives": positives, "negatives": n - positives,
            "sensitivity": _with_ci(n, sens(everything), sens),
            "specificity": _with_ci(n, spec(everything), spec),
            "roc_auc": _with_ci(n, auc(everything) if n else None, auc)}


def _row_fractions(t: np.ndarray, p: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    """Per cell: the fraction of the true class's cases predicted as the column's class, with
    its bootstrap interval (None for a class with no case)."""
    def cell(i: int, j: int) -> Callable[[np.ndarray], float | None]:
        def fraction(idx: np.ndarray) -> float | None:
            rows = t[idx] == i
            return float(np.mean(p[idx][rows] == j)) if rows.any() else None
        return fraction

    n = len(t)
    return [[_with_ci(n, cell(i, j)(np.arange(n)), cell(i, j)) for j in range(k)]
            for i in range(k)]
