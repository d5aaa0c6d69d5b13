"""Logging set-up. Log lines name ledger ids, AE titles, states and reasons: never patient data.

A study should read as a short story in the log: received, complete, de-identified, each
model's result, built, delivered, reported, done. Libraries that narrate their own work at INFO
(highdicom logs every module it copies into a result object, about 90 lines a study) are held to
WARNING, so what they say is only what went wrong.
"""

from __future__ import annotations

import logging
import sys

from node.core.contract import ModelResult

#: libraries whose INFO lines say nothing an operator needs
QUIET = ("pynetdicom", "apscheduler", "highdicom", "alembic", "fpdf", "PIL", "urllib3",
         "fontTools")
#: measurements named in a model's log line, at most
MAX_MEASUREMENTS = 4


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if getattr(root, "_dicom_node", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root._dicom_node = True  # type: ignore[attr-defined]
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def result_line(result: ModelResult) -> str:
    """A model result in one line: triage, the first measurements, the most likely finding.

    E.g. 'triage PRIORITY; Right lung volume 2210.4 mL, Left lung volume 1950.2 mL'. Values are
    the model's own output about the image, never identifiers.
    """
    parts = [f"triage {result.triage.value}"]
    values = [f"{m.name} {m.value:.1f} {m.unit}" for m in result.measurements[:MAX_MEASUREMENTS]]
    if len(result.measurements) > MAX_MEASUREMENTS:
        values.append(f"{len(result.measurements) - MAX_MEASUREMENTS} more")
    if values:
        parts.append(", ".join(values))
    if result.findings:
        top = max(result.findings, key=lambda f: f.probability)
        parts.append(f"most likely {top.concept.meaning} ({100.0 * top.probability:.1f} %)")
    return "; ".join(parts)
