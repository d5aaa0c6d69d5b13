"""Radiologist notifications for high-risk results: whether to send one, and its payload.

The notification says what was found and where to look; by default it carries no patient
identifiers (chat and mail systems are outside the hospital's imaging systems): the job number,
the model and its findings. ``include_identifiers`` adds the accession number and the Study
Instance UID. Sending goes through the outbox like every other result.
"""

from __future__ import annotations

import json
from typing import Any

from node.core.contract import AI_DISCLAIMER, Finding, ResultContext, Triage, classification

TRIAGE_RANK = {Triage.ROUTINE: 0, Triage.PRIORITY: 1, Triage.URGENT: 2}


def should_alert(triage: Triage, alert_on: str) -> bool:
    return TRIAGE_RANK[triage] >= TRIAGE_RANK[Triage(alert_on)]


def alert_payload(ctx: ResultContext, job_id: int, node_ae: str,
                  include_identifiers: bool) -> dict[str, Any]:
    r = ctx.result
    predicted = classification(r)
    payload: dict[str, Any] = {
        "event": "ai_result",
        "triage": r.triage.value,
        "job": job_id,
        "node": node_ae,
        "model": {"name": ctx.manifest.name, "version": ctx.manifest.version},
        "label": AI_DISCLAIMER,
        # a classifier's one finding (the predicted class) and the other classes' probabilities
        "finding": None if predicted is None else _class(predicted.finding),
        "other_classes": [] if predicted is None else [_class(f) for f in predicted.others],
        "measurements": [{"name": m.name, "value": round(m.value, 3), "unit": m.unit}
                         for m in r.measurements],
        "created": ctx.created.isoformat(),
    }
    if include_identifiers:
        src = ctx.sources[0]
        payload["study"] = {"accession_number": str(src.get("AccessionNumber", "") or ""),
                            "study_instance_uid": str(src.StudyInstanceUID)}
    return payload


def _class(f: Finding) -> dict[str, Any]:
    return {"code": f.concept.value, "scheme": f.concept.scheme, "meaning": f.concept.meaning,
            "probability": round(f.probability, 4)}


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=1, sort_keys=True) + "\n"
