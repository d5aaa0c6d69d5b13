"""The Study page's earlier studies of the same patient, with their results beside this one's.

The patient is known by the keyed pseudonym on the study rows (``node.core.patients``), never
by identity: the table reads one index range (the last ``EARLIER_LIMIT`` studies received
before this one) with their current model runs, then each run's small ``summary.json``. For
each model: the triage and the measurements, and where this study has the same measurement
(same model, name and unit), the change from that study to this one.
"""

from __future__ import annotations

from typing import Any

from node.core import patients
from node.core.ledger import StudyRow
from node.web import results
from node.web.console.keyimage_files import modality
from node.web.context import WebContext


def _values(summary: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for m in (summary or {}).get("measurements", []):
        try:
            out[(str(m["name"]), str(m["unit"]))] = float(m["value"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _cell(triage: str | None, values: dict[tuple[str, str], float],
          now: dict[tuple[str, str], float] | None) -> dict[str, Any]:
    shown = []
    for (name, unit), value in values.items():
        change = None if now is None or (name, unit) not in now else now[(name, unit)] - value
        shown.append({"name": name, "unit": unit, "value": value, "change": change})
    return {"triage": triage, "values": shown}


def table(ctx: WebContext, row: StudyRow) -> dict[str, Any] | None:
    """This study's row and its patient's earlier studies (newest first), one cell per model;
    None when the patient has no earlier study in the ledger (or no known key)."""
    earlier = patients.earlier(ctx.ledger.engine, row.id)
    if not earlier:
        return None
    this = {r["model"]: (r["triage"], _values(r["summary"]))
            for r in results.runs(ctx, row.id, objects=False) if r["current"]}
    models = sorted({*this, *(model for study in earlier for model, _t, _f in study.runs)})
    rows = [{"id": row.id, "this": True, "received_at": row.received_at,
             "modality": modality(ctx, row.id), "state": row.state.value,
             "cells": {m: _cell(t, v, None) for m, (t, v) in this.items()}}]
    for study in earlier:
        cells = {}
        for model, triage, folder in study.runs:
            summary = results.read_summary(ctx.settings.var_path / folder)
            now = this[model][1] if model in this else None
            cells[model] = _cell(triage, _values(summary), now)
        rows.append({"id": study.id, "this": False, "received_at": study.received_at,
                     "modality": study.modality, "state": study.state, "cells": cells})
    return {"models": models, "rows": rows, "limit": patients.EARLIER_LIMIT}
