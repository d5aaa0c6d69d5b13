"""Studies stored back to back while the pipeline runs: throughput, completion -> ORU, receiver.

Issue 15 item 3. N chest CTs of the phantom (default 20 studies of 300 slices of 512x512, the
generator of ``throughput.py``) are stored one after the other, each in one association of dcmtk
``storescu``, into ONE ``dicom-node serve`` (the embedded default: SQLite ledger, local spool,
lung-ct enabled), with no pause between studies: the pipeline works on the first studies while
the later ones arrive. Results go to a dcmtk storescp (the PACS) and an MLLP listener (the EMR).

A study completes by the release rule (``completion.whole_study_senders`` naming storescu's
calling AE) where the code has it, else by the quiet period (``--quiet-period``, the same
setting on both sides). Reported per side:

    studies/h           N / (first instance stored -> last study DONE), x 3600 (ledger times)
    complete -> ORU     median and p95 of COMPLETE -> REPORTED (ORU acknowledged), per study
    last image -> ORU   median and p95 of the study's last instance stored -> REPORTED
    receiver            instances/s of each study's storescu (start to exit): the first study
                        (no other study in the node, stored once serve is idle after its
                        start-up), the median and the minimum of the stores during which the
                        pipeline was busy (half or more of the store's time inside some
                        study's COMPLETE -> DONE)
    peak RSS            the largest sum of VmRSS of serve and every process under it, sampled
                        every 0.5 s from the first store to the last DONE (issue 15 item 6:
                        under 1.5 GB while processing the CT), with the largest single process;
                        every sample is in the JSON

``--baseline DIR`` also runs the same studies through the code in DIR (a checkout of an older
commit, e.g. ``git worktree add /tmp/base fb6fc30``; its models' ignored weight files must be
there too): its ``serve`` runs with PYTHONPATH=DIR and cwd DIR, with this venv. Sides run one
after the other (``--order``), each on a fresh node.

    .venv/bin/python bench/backlog.py [--studies 20] [--ct-slices 300] [--size 512]
        [--quiet-period 10] [--baseline /tmp/base] [--order today,now]
        [--out bench/results/backlog.json]

The machine's noise is large (a 2-core VM shared with other work): compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e import _events, _last_received, wait_done
from throughput import REPO, _cpu_s, _machine, _wait_for, make_studies

from node.core.ledger import utcnow
from node.hl7.listener import MllpListener
from tests.conftest import DICOM_NODE, free_port, write_config

CALLING_AE = "BENCHSCU"


class RssSampler(threading.Thread):
    """Sums VmRSS of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self.peak_one: tuple[float, str] = (0.0, "")
        self.series: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.started = time.monotonic()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        self.started = time.monotonic()
        while not self._halt.wait(self.interval):
            total = 0.0
            for pid in self._tree():
                mb = _rss_mb(pid)
                total += mb
                if mb > self.peak_one[0]:
                    self.peak_one = (mb, _role(pid))
            self.series.append((round(time.monotonic() - self.started, 1), round(total, 1)))
            self.peak_mb = max(self.peak_mb, total)

    def _tree(self) -> list[int]:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        tree, todo = [self.pid], [self.pid]
        while todo:
            parent = todo.pop()
            children = [pid for pid, ppid in parents.items() if ppid == parent]
            tree += children
            todo += children
        return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _role(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[-60:]
    except OSError:
        return "?"


def _pct(values: list[float], q: float) -> float:
    """The q-th percentile, linear between the nearest ranks (statistics' 'inclusive')."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _overlap(start: datetime, end: datetime, spans: list[tuple[datetime, datetime]]) -> float:
    """Fraction of [start, end] inside the union of ``spans``."""
    total = (end - start).total_seconds()
    if total <= 0:
        return 0.0
    clipped = sorted((max(a, start), min(b, end)) for a, b in spans if b > start and a < end)
    covered, reach = 0.0, start
    for a, b in clipped:
        a = max(a, reach)
        if b > a:
            covered += (b - a).total_seconds()
            reach = b
    return covered / total


def _settle(pid: int, timeout_s: float = 60.0) -> float:
    """Wait until the node is idle (under 0.05 CPU s in a second): a serve that loads tables on
    a thread of its own at start would otherwise slow the first study's receiving."""
    start = time.monotonic()
    before = _cpu_s(pid)
    while time.monotonic() - start < timeout_s:
        time.sleep(1.0)
        now = _cpu_s(pid)
        if now - before < 0.05:
            break
        before = now
    return round(time.monotonic() - start, 1)


def run_side(side: str, code: Path, studies: list[list[Path]], root: Path, key: Path,
             quiet_s: float, release_rule: bool) -> dict[str, Any]:
    work = root / side
    (work / "pacs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE__")}
    env.update(PYTHONPATH=str(code), TCP_NODELAY="1")
    pacs_port, node_port = free_port(), free_port()
    pacs = subprocess.Popen(["/usr/bin/storescp", "-od", str(work / "pacs"), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    completion: dict[str, Any] = {"quiet_period_s": quiet_s, "max_wait_s": 7200.0}
    if release_rule:
        completion["whole_study_senders"] = [CALLING_AE]
    ledger = work / "var" / "ledger.sqlite3"
    proc: subprocess.Popen[bytes] | None = None
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=work / "oru.txt") as emr:
        config = write_config(work / "node.toml", {
            "node": {"ae_title": "DICOM_NODE", "host": "127.0.0.1", "port": node_port,
                     "var_dir": str(work / "var")},
            "scp": {"min_free_disk_mb": 0},
            "completion": completion,
            "deid": {"key_file": str(key)},
            "models": {"dir": str(code / "models"), "enabled": ["lung-ct"], "device": "cpu"},
            "delivery": {"dicom": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                    "port": pacs_port}],
                         "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port}]},
            "web": {"enabled": False},
        })
        log = work / "node.log"
        try:
            with log.open("ab") as out:
                proc = subprocess.Popen([*DICOM_NODE, "--config", str(config), "serve"], cwd=code,
                                        stdout=out, stderr=subprocess.STDOUT, env=env)
            _wait_for(log, "listening as", proc, 180)
            while subprocess.run(["/usr/bin/echoscu", "127.0.0.1", str(pacs_port)],
                                 capture_output=True, env=env).returncode != 0:
                time.sleep(0.1)
            settle_s = _settle(proc.pid)
            sampler = RssSampler(proc.pid)
            sampler.start()
            cpu0, machine0 = _cpu_s(proc.pid), _machine()
            stores: list[tuple[datetime, datetime]] = []
            for i, files in enumerate(studies):
                start = utcnow()
                subprocess.run(["/usr/bin/storescu", "-aet", CALLING_AE, "-aec", "DICOM_NODE",
                                "127.0.0.1", str(node_port), *map(str, files)], check=True,
                               env=env, capture_output=True)
                stores.append((start, utcnow()))
                rate = len(files) / (stores[-1][1] - start).total_seconds()
                print(f"  {side}: study {i + 1}/{len(studies)} stored, {rate:.1f} instances/s",
                      flush=True)
            rows = wait_done(ledger, len(studies), timeout_s=3600)
            cpu_s = _cpu_s(proc.pid) - cpu0
            busy, total = (b - a for a, b in zip(machine0, _machine(), strict=True))
            sampler.stop()
        except (SystemExit, subprocess.CalledProcessError):
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            pacs.kill()
    states = sorted({r["state"] for r in rows})
    if states != ["DONE"]:
        raise SystemExit(f"{side}: studies ended {states}, not all DONE: see {log}")
    return {**_figures(side, ledger, rows, studies, stores, sampler, cpu_s, busy / total,
                       release_rule, quiet_s), "settle_s": settle_s}


def _figures(side: str, ledger: Path, rows: list[dict[str, Any]], studies: list[list[Path]],
             stores: list[tuple[datetime, datetime]], sampler: RssSampler, cpu_s: float,
             machine_busy: float, release_rule: bool, quiet_s: float) -> dict[str, Any]:
    events, last = _events(ledger), _last_received(ledger)
    with sqlite3.connect(ledger) as db:
        first = datetime.fromisoformat(db.execute("SELECT min(received_at) FROM instances")
                                       .fetchone()[0])
    done = max(events[r["id"]]["DONE"] for r in rows)
    seconds = (done - first).total_seconds()
    to_oru = [(events[r["id"]]["REPORTED"] - events[r["id"]]["COMPLETE"]).total_seconds()
              for r in rows]
    image_to_oru = [(events[r["id"]]["REPORTED"] - last[r["id"]]).total_seconds() for r in rows]
    spans = [(events[r["id"]]["COMPLETE"], events[r["id"]]["DONE"]) for r in rows]
    rates = [len(files) / (b - a).total_seconds() for files, (a, b) in zip(studies, stores,
                                                                           strict=True)]
    busy_rates = [rate for rate, (a, b) in zip(rates, stores, strict=True)
                  if _overlap(a, b, spans) >= 0.5]
    return {
        "side": side, "studies": len(rows), "instances": len(studies[0]),
        "completion": (f"release rule ({CALLING_AE}), quiet period {quiet_s:g} s" if release_rule
                       else f"quiet period {quiet_s:g} s"),
        "seconds": round(seconds, 1), "studies_per_hour": round(len(rows) / seconds * 3600, 1),
        "complete_to_oru_s": {"median": round(statistics.median(to_oru), 2),
                              "p95": round(_pct(to_oru, 95), 2),
                              "each": [round(x, 2) for x in to_oru]},
        "last_image_to_oru_s": {"median": round(statistics.median(image_to_oru), 2),
                                "p95": round(_pct(image_to_oru, 95), 2),
                                "each": [round(x, 2) for x in image_to_oru]},
        "receiver_instances_per_s": {
            "first_study": round(rates[0], 1),
            "busy_median": round(statistics.median(busy_rates), 1) if busy_rates else None,
            "busy_min": round(min(busy_rates), 1) if busy_rates else None,
            "busy_stores": len(busy_rates),
            "each": [round(x, 1) for x in rates]},
        "peak_rss_mb": round(sampler.peak_mb, 1),
        "peak_rss_one_process": {"mb": round(sampler.peak_one[0], 1),
                                 "process": sampler.peak_one[1]},
        "rss_mb_every_0.5_s": [mb for _, mb in sampler.series],
        "node_cpu_s": round(cpu_s, 1), "machine_busy": round(machine_busy, 2),
    }


ROWS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("studies/h", lambda r: r["studies_per_hour"]),
        ("first stored -> last DONE s", lambda r: r["seconds"]),
        ("complete -> ORU median s", lambda r: r["complete_to_oru_s"]["median"]),
        ("complete -> ORU p95 s", lambda r: r["complete_to_oru_s"]["p95"]),
        ("last image -> ORU median s", lambda r: r["last_image_to_oru_s"]["median"]),
        ("last image -> ORU p95 s", lambda r: r["last_image_to_oru_s"]["p95"]),
        ("receiver, study 1 /s",
         lambda r: r["receiver_instances_per_s"]["first_study"]),
        ("receiver busy median /s", lambda r: r["receiver_instances_per_s"]["busy_median"]),
        ("receiver busy min /s", lambda r: r["receiver_instances_per_s"]["busy_min"]),
        ("peak RSS MB (serve + children)", lambda r: r["peak_rss_mb"]),
        ("node CPU s", lambda r: r["node_cpu_s"]),
        ("machine busy", lambda r: r["machine_busy"])]


def _print(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    names = list(runs)
    print(f"\n{'':32}" + "".join(f"{n:>12}" for n in names)
          + ("   now/today" if {"today", "now"} <= set(runs) else ""))
    ratios: dict[str, float] = {}
    for label, get in ROWS:
        values = [get(runs[n]) for n in names]
        line = f"{label:32}" + "".join(f"{'-' if v is None else v:>12}" for v in values)
        if {"today", "now"} <= set(runs):
            a, b = get(runs["today"]), get(runs["now"])
            if a and b is not None:
                ratios[label] = round(b / a, 2)
                line += f"{b / a:>11.2f}x"
        print(line)
    for n in names:
        run = runs[n]
        busy = run["receiver_instances_per_s"]["busy_stores"]
        print(f"{n}: {run['completion']}; stores while the pipeline was busy {busy}/"
              f"{run['studies']}; largest process {run['peak_rss_one_process']['mb']} MB")
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--ct-slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--quiet-period", type=float, default=10.0,
                   help="completion.quiet_period_s, both sides (orthanc/node.toml's 10 s)")
    p.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    p.add_argument("--baseline-has-release-rule", action="store_true",
                   help="give the baseline the release rule too (off: it has no such setting)")
    p.add_argument("--order", default="today,now", help="sides in the order run")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "backlog.json")
    p.add_argument("--keep", action="store_true", help="keep the working folders and logs")
    args = p.parse_args()
    sides = {"now": (REPO, True)}
    if args.baseline:
        sides["today"] = (args.baseline.resolve(), args.baseline_has_release_rule)
    order = [s for s in args.order.split(",") if s in sides]
    load = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="dicom-node-backlog-"))
    try:
        t0 = time.monotonic()
        studies = make_studies(root / "data", args.studies, args.ct_slices, args.size)
        print(f"{len(studies)} studies of {len(studies[0])} instances generated in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        key = root / "deid.key"
        subprocess.run([*DICOM_NODE, "keygen", "--out", str(key)], check=True,
                       capture_output=True)
        runs: dict[str, dict[str, Any]] = {}
        for side in order:
            code, rule = sides[side]
            runs[side] = run_side(side, code, studies, root, key, args.quiet_period, rule)
            runs[side]["code"] = str(code)
            runs[side]["commit"] = subprocess.run(
                ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                text=True).stdout.strip()
            shutil.rmtree(root / side / "var", ignore_errors=True)  # gigabytes per side
        ratios = _print(runs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "load_at_start": load, "runs": runs,
            "now_over_today": ratios}, indent=2) + "\n")
        print(f"\nwritten to {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
