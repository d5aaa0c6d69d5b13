"""End to end with Orthanc in the loop: time from a study's completion to its last result stored
in Orthanc (DELIVERED) and its ORU acknowledged (REPORTED), split by stage.

The stack of ``scripts/demo.py`` (Orthanc with the routing script, the node, an MLLP listener)
on free ports; a chest CT of the phantom (default 300 slices of 512x512, lung-ct) and the
Colin27 MR series (181 slices, brain-mask) stored into Orthanc with storescu. Stage times come
from the ledger's audit events (one per state change) and the stored result's timings:

    de-identify    COMPLETE -> DEIDENTIFIED
    load volume    reading the de-identified files and assembling the volume
    model          the model's predict() (its own preprocessing, forward pass, postprocessing)
    build          INFERRED -> BUILT: SEG, SR, SC, KOS, PDF and the ORU, written and queued
    send           BUILT -> DELIVERED: every object stored in Orthanc (C-STORE responses)
    HL7            DELIVERED -> REPORTED: the ORU sent and acknowledged
    waits          the rest: timer polling between stages

Target of issue 7: everything except the model takes at most 2 s for 300 instances.

    .venv/bin/python bench/e2e.py [--ct-slices 300] [--size 512] [--out bench/results/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))
from demo import Ports, Stack, running  # noqa: E402
from demo_data import (  # noqa: E402
    CHEST_PATIENT,
    COLIN27,
    MR_PATIENT,
    Uids,
    chest_ct_series,
    mr_series,
)

from node.spool import uid_key  # noqa: E402
from tests.conftest import free_port  # noqa: E402

STATES = ["COMPLETE", "DEIDENTIFIED", "INFERRED", "BUILT", "DELIVERED", "REPORTED"]


def _events(ledger: Path) -> dict[int, dict[str, datetime]]:
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT study_id, to_state, at FROM events WHERE kind = 'transition' "
                          "ORDER BY id").fetchall()
    out: dict[int, dict[str, datetime]] = {}
    for study_id, state, at in rows:
        out.setdefault(study_id, {})[state] = datetime.fromisoformat(at)
    return out


def _timings(results: Path) -> dict[str, float]:
    """Sum of the stored timings of every model run on the study."""
    total: dict[str, float] = {}
    for path in results.glob("*/result.json"):
        for key, value in json.loads(path.read_text())["timings_s"].items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def stages(events: dict[str, datetime], timings: dict[str, float]) -> dict[str, float]:
    def span(a: str, b: str) -> float:
        return (events[b] - events[a]).total_seconds()

    load = timings.get("read_deidentified", 0.0) + timings.get("assemble", 0.0)
    model = timings.get("predict", 0.0)
    out = {
        "de-identify": span("COMPLETE", "DEIDENTIFIED"),
        "load volume": load,
        "model": model,
        "forward pass": timings.get("forward", model),
        "build": span("INFERRED", "BUILT"),
        "send": span("BUILT", "DELIVERED"),
        "HL7": span("DELIVERED", "REPORTED"),
        "total": span("COMPLETE", "REPORTED"),
    }
    out["inference stage other"] = span("DEIDENTIFIED", "INFERRED") - load - model
    measured = sum(out[k] for k in ("de-identify", "load volume", "model", "build", "send",
                                    "HL7", "inference stage other"))
    out["waits"] = out["total"] - measured
    out["all but the model"] = out["total"] - model
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct-slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512, help="CT rows and columns")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "e2e.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-node-e2e-") as tmp:
        root = Path(tmp)
        data = root / "studies"
        ct = chest_ct_series(data / "ct-chest", args.ct_slices, CHEST_PATIENT, Uids(None),
                             size=args.size)
        mr = mr_series(COLIN27, data / "mr-brain", MR_PATIENT, Uids(None))
        stack = Stack(root / "run", Ports(free_port(), free_port(), free_port(), free_port()),
                      stable_age_s=2, quiet_period_s=1.0, models=["lung-ct", "brain-mask"])
        with running(stack):
            # one study after the other, so each one's stage times are its own
            stack.push(data / "ct-chest")
            stack.wait_done(1, timeout_s=1800)
            stack.push(data / "mr-brain")
            rows = stack.wait_done(2, timeout_s=1800)
            events = _events(stack.node_var / "ledger.sqlite3")
            report: list[dict[str, Any]] = []
            for row in rows:
                instances = row["instances"]
                name = "CT chest" if instances == len(ct) else "MR brain"
                results = stack.node_var / "results" / uid_key(row["study_instance_uid"]) / "g1"
                report.append({"study": name, "instances": instances, "state": row["state"],
                               **{k: round(v, 3) for k, v in
                                  stages(events[row["id"]], _timings(results)).items()}})
    _print(report, len(mr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def _print(report: list[dict[str, Any]], mr_slices: int) -> None:
    keys = ["de-identify", "load volume", "model", "build", "send", "HL7", "waits",
            "inference stage other", "total", "all but the model"]
    print(f"{'seconds':<24}" + "".join(f"{r['study']:>14}" for r in report))
    print(f"{'instances':<24}" + "".join(f"{r['instances']:>14}" for r in report))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{r[key]:>14.3f}" for r in report))
    print(f"(MR: {mr_slices} slices; target: all but the model <= 2 s for 300 instances)")


if __name__ == "__main__":
    sys.exit(main())
