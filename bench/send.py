"""Send benchmark: the node's C-STORE SCU against dcmtk's storescu, both to dcmtk's storescp.

The same CT series (tests/data.py ct_series) goes over one association per run, on loopback,
to one storescp (TCP_NODELAY=1, writing to a temp dir). The three senders run interleaved:
the node's sender, storescu (TCP_NODELAY=1), and the node's sender with TCP_NODELAY off.
The node's sender gets data sets already read into memory; storescu reads its files.

    .venv/bin/python bench/send.py [--instances 300] [--runs 3]
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
from collections.abc import Callable
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.scp import sender  # noqa: E402
from tests.data import ct_series  # noqa: E402

STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
AE = "STORESCP"


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        root = Path(tmp)
        files = ct_series(root / "ct", args.instances)
        size_kb = files[0].stat().st_size // 1024
        datasets = [pydicom.dcmread(p) for p in files]
        out = root / "received"
        out.mkdir()
        port = free_port()
        scp = subprocess.Popen([STORESCP, "-aet", AE, "-od", str(out), "+xa", str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            wait_listening(port)
            dest = sender.Destination("storescp", AE, "127.0.0.1", port)

            def node_send(nodelay: bool) -> Callable[[], None]:
                def run() -> None:
                    sender.TCP_NODELAY = nodelay
                    try:
                        outcomes = sender.send(dest, datasets, timeout_s=60)
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

            senders: dict[str, Callable[[], None]] = {
                "node sender (TCP_NODELAY)": node_send(True),
                "dcmtk storescu (TCP_NODELAY=1)": storescu,
                "node sender (no TCP_NODELAY)": node_send(False),
            }
            rates: dict[str, list[float]] = {name: [] for name in senders}
            for run_no in range(args.runs):
                for name, fn in senders.items():
                    clear(out)
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    arrived = sum(1 for _ in out.iterdir())
                    if arrived != args.instances:
                        raise SystemExit(f"{name}: {arrived} of {args.instances} arrived")
                    rate = args.instances / elapsed
                    rates[name].append(rate)
                    print(f"run {run_no + 1} {name:32s} {rate:7.1f} instances/s", flush=True)
        finally:
            scp.terminate()
            scp.wait(timeout=10)
            shutil.rmtree(out, ignore_errors=True)

    print(f"\n{args.instances} CT instances ({size_kb} KB each), "
          f"one association, median of {args.runs}:")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"  {name:32s} {value:7.1f} instances/s")
    node, scu = medians["node sender (TCP_NODELAY)"], medians["dcmtk storescu (TCP_NODELAY=1)"]
    slow = medians["node sender (no TCP_NODELAY)"]
    print(f"  ratio node/storescu: {node / scu:.2f} (target >= 0.5)")
    print(f"  TCP_NODELAY speed-up of the node sender: {node / slow:.1f}x")


if __name__ == "__main__":
    main()
