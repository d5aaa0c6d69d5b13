"""Send benchmark: the node's C-STORE SCU against dcmtk's storescu, both to dcmtk's storescp.

The same CT series (tests/data.py ct_series, written to a temp dir) goes over one association per
run, on loopback, to one storescp (TCP_NODELAY=1, writing to a temp dir). Both senders send the
files from disk, as the outbox does: the node's ``send()`` gets their paths, storescu their names.
The senders run interleaved, in an order that rotates from run to run; before each timed send the
received files of the previous one are deleted and ``sync`` is called (not timed).

    .venv/bin/python bench/send.py [--instances 300] [--runs 5] [--datasets] [--no-nodelay]

``--datasets`` adds the node's sender given data sets already read into memory (pydicom
``Dataset``, encoded per instance); ``--no-nodelay`` adds the node's sender (files) with
TCP_NODELAY off, to show what Nagle's algorithm costs (slow: about 10 s a run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.scp import sender  # noqa: E402
from tests.data import ct_series  # noqa: E402

STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
AE = "STORESCP"
NODE, SCU = "node sender (files)", "dcmtk storescu (files)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("storescp did not start")


def clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datasets", action="store_true",
                        help="also time the node's sender with data sets in memory")
    parser.add_argument("--no-nodelay", action="store_true",
                        help="also time the node's sender (files) with TCP_NODELAY off")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        root = Path(tmp)
        files = ct_series(root / "ct", args.instances)
        size_kb = files[0].stat().st_size // 1024
        out = root / "received"
        out.mkdir()
        port = free_port()
        scp = subprocess.Popen([STORESCP, "-aet", AE, "-od", str(out), "+xa", str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            wait_listening(port)
            dest = sender.Destination("storescp", AE, "127.0.0.1", port)

            def node_send(items: Sequence[Any], nodelay: bool = True) -> Callable[[], None]:
                def run() -> None:
                    sender.TCP_NODELAY = nodelay
                    try:
                        outcomes = sender.send(dest, items, timeout_s=60)
                    finally:
                        sender.TCP_NODELAY = True
                    bad = [o for o in outcomes if o.result != "delivered"]
                    if bad:
                        raise SystemExit(f"{len(bad)} not delivered: {bad[0].detail}")
                return run

            def storescu() -> None:
                subprocess.run([STORESCU, "-aec", AE, "127.0.0.1", str(port),
                                *map(str, files)], env=DCMTK_ENV, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            senders: dict[str, Callable[[], None]] = {NODE: node_send(files), SCU: storescu}
            if args.datasets:
                datasets = [pydicom.dcmread(p) for p in files]
                senders["node sender (data sets in memory)"] = node_send(datasets)
            if args.no_nodelay:
                senders["node sender (files, no TCP_NODELAY)"] = node_send(files, nodelay=False)
            rates = run_all(senders, out, args.instances, args.runs)
        finally:
            scp.terminate()
            scp.wait(timeout=10)
            shutil.rmtree(out, ignore_errors=True)

    print(f"\n{args.instances} CT instances ({size_kb} KB each) from files, one association, "
          f"to storescp; median of {args.runs}:")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        runs = " ".join(f"{v:.0f}" for v in rates[name])
        print(f"  {name:38s} {value:7.1f} instances/s   (runs: {runs})")
    ratio = medians[NODE] / medians[SCU]
    verdict = "met" if ratio >= 0.5 else "NOT met"
    print(f"  ratio node/storescu: {ratio:.2f} (target >= 0.5: {verdict})")
    per_run = [n / s for n, s in zip(rates[NODE], rates[SCU], strict=True)]
    print(f"  ratio per run: {' '.join(f'{r:.2f}' for r in per_run)}")
    slow = medians.get("node sender (files, no TCP_NODELAY)")
    if slow:
        print(f"  TCP_NODELAY speed-up of the node sender: {medians[NODE] / slow:.1f}x")


def run_all(senders: dict[str, Callable[[], None]], out: Path, instances: int,
            runs: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in senders}
    names = list(senders)
    for run_no in range(runs):
        shift = run_no % len(names)
        for name in names[shift:] + names[:shift]:
            clear(out)
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            senders[name]()
            elapsed = time.perf_counter() - start
            arrived = sum(1 for _ in out.iterdir())
            if arrived != instances:
                raise SystemExit(f"{name}: {arrived} of {instances} arrived")
            rate = instances / elapsed
            rates[name].append(rate)
            print(f"run {run_no + 1} {name:38s} {rate:7.1f} instances/s", flush=True)
    return rates


if __name__ == "__main__":
    main()
