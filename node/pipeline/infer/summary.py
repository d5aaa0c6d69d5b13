"""The JSON form of a model result, for people and for the record (no masks), and the one
reading of a classifier's findings that every writer shares.

A result's findings are the classes of one classification, each with its probability (the
manifest's ``[[findings]]``, e.g. glioma / meningioma / no tumour / pituitary). Only ONE of
them is the finding: the most probable class (which may be "no tumour"); the others are
probabilities of classes that were not found. Reporting each class as a finding reads as if
every class were present, so the SR, the PDF and the ORU all take :func:`classification`.
"""

from __future__ import annotations

from typing import Any

from node.core.contract import Finding, ModelResult, classification
from node.pipeline.infer.registry import LoadedModel


def result_summary(loaded: LoadedModel, r: ModelResult, series_uid: str) -> dict[str, Any]:
    """The JSON form of a model result (no masks): for people, logs of record and HL7 later.

    ``findings`` lists every class with its probability; ``predicted_finding`` is the one
    that was found (None without findings)."""
    m = loaded.manifest
    predicted = classification(r)
    return {
        "model": {"name": m.name, "version": m.version, "task": m.task, "device": loaded.device,
                  "intended_use": m.intended_use, "licence": m.licence},
        "label": "AI-generated result: needs review by a qualified clinician",
        "series_instance_uid": series_uid,
        "triage": r.triage.value,
        "predicted_finding": None if predicted is None else _finding(predicted.finding),
        "findings": [_finding(f) for f in r.findings],
        "measurements": [{"name": x.name, "value": round(x.value, 4), "unit": x.unit}
                         for x in r.measurements],
        "segments": [{"label": s.label, "name": s.name, "voxels": int(s.mask.sum()),
                      "volume_ml": round(float(s.mask.sum()) * s.geometry.voxel_volume_ml, 3)}
                     for s in r.segments],
        "key_slices": list(r.key_slices),
        "timings_s": {k: round(v, 4) for k, v in r.timings_s.items()},
    }


def _finding(f: Finding) -> dict[str, Any]:
    return {"code": f.concept.value, "scheme": f.concept.scheme, "meaning": f.concept.meaning,
            "probability": round(f.probability, 6)}
