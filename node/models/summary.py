"""The JSON form of a model result, for people and for the record (no masks)."""

from __future__ import annotations

from typing import Any

from node.models.registry import LoadedModel
from node.pipeline.results import ModelResult


def result_summary(loaded: LoadedModel, r: ModelResult, series_uid: str) -> dict[str, Any]:
    """The JSON form of a model result (no masks): for people, logs of record and HL7 later."""
    m = loaded.manifest
    return {
        "model": {"name": m.name, "version": m.version, "task": m.task, "device": loaded.device,
                  "intended_use": m.intended_use, "licence": m.licence},
        "label": "AI-generated result: needs review by a qualified clinician",
        "series_instance_uid": series_uid,
        "triage": r.triage.value,
        "findings": [{"code": f.concept.value, "scheme": f.concept.scheme,
                      "meaning": f.concept.meaning, "probability": round(f.probability, 6)}
                     for f in r.findings],
        "measurements": [{"name": x.name, "value": round(x.value, 4), "unit": x.unit}
                         for x in r.measurements],
        "segments": [{"label": s.label, "name": s.name, "voxels": int(s.mask.sum()),
                      "volume_ml": round(float(s.mask.sum()) * s.geometry.voxel_volume_ml, 3)}
                     for s in r.segments],
        "key_slices": list(r.key_slices),
        "timings_s": {k: round(v, 4) for k, v in r.timings_s.items()},
    }
