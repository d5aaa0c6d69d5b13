"""The HTTP API's list and study endpoints against a ledger of 100,000 finished studies.

The ledger is filled as ``bench/ledger.py`` fills it (N DONE studies with their instances,
outbox items and events, plus the live jobs a working node has: 5 RECEIVING, 2 HELD, 2 FAILED,
3 BUILT), on SQLite (a temp file) or the local PostgreSQL. The API then runs as ``serve`` runs
it (uvicorn in a thread, a real socket) and one client logged in as an operator asks each route
``--requests`` times; the table gives the median and p95 latency per route, client side.

    .venv/bin/python bench/api.py                          # 100,000 studies, SQLite
    .venv/bin/python bench/api.py --size 10000 --db postgresql --requests 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ledger as ledger_bench

from node.app import open_ledger
from node.core.accounts import Role
from node.core.outbox import Outbox
from node.core.settings_load import load_settings
from node.web.context import WebContext
from node.web.server import WebServer

PASSWORD = "bench password 1"  # a throwaway account in a temp ledger


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _time(client: httpx.Client, url: str, n: int) -> tuple[float, float]:
    client.get(url).raise_for_status()  # warm
    took = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(url).raise_for_status()
        took.append((time.perf_counter() - t) * 1000)
    took.sort()
    return statistics.median(took), took[int(0.95 * (n - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--instances", type=int, default=20, help="instances per finished study")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--requests", type=int, default=200)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-api-") as tmp, \
            ledger_bench.database(a.db, Path(tmp)) as (url, _size_mb):
        port = _free_port()
        config = Path(tmp) / "node.toml"
        config.write_text(f'[node]\nvar_dir = "{Path(tmp) / "var"}"\ndatabase_url = "{url}"\n'
                          f"[scp]\nmin_free_disk_mb = 0\n[web]\nport = {port}\n")
        settings = load_settings(str(config))
        led = open_ledger(settings, create=True)
        t = time.perf_counter()
        ledger_bench.fill(led.engine, a.size, a.instances)
        ledger_bench.add_live(led, Outbox(led.engine))
        print(f"{a.db}: {a.size:,} finished studies of {a.instances} instances filled in "
              f"{time.perf_counter() - t:.0f} s")
        ctx = WebContext.of(led, settings, {})
        ctx.accounts.add_user("op", Role.OPERATOR, PASSWORD)
        ctx.accounts.add_user("root", Role.ADMIN, PASSWORD)
        server = WebServer(ctx)
        server.start()
        middle = a.size // 2
        routes = [
            "/api/v1/studies",
            "/api/v1/studies?state=DONE&limit=50",
            f"/api/v1/studies?state=DONE&limit=50&before={middle}",
            "/api/v1/studies?state=FAILED",
            "/api/v1/studies?since=2026-01-20T00:00&state=DONE",
            f"/api/v1/studies/{middle}",
            "/api/v1/models",
        ]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                client.post("/api/v1/session",
                            json={"name": "op", "password": PASSWORD}).raise_for_status()
                print(f"{'route':<60} {'median ms':>10} {'p95 ms':>8}")
                for route in routes:
                    median, p95 = _time(client, route, a.requests)
                    print(f"{route:<60} {median:>10.1f} {p95:>8.1f}")
        finally:
            server.stop()
            led.engine.dispose()


if __name__ == "__main__":
    main()
