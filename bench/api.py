"""The HTTP API's list, study, results and statistics routes against 100,000 finished studies.

The ledger is filled as ``bench/ledger.py`` fills it (N DONE studies with their instances,
outbox items and events, plus the live jobs a working node has: 5 RECEIVING, 2 HELD, 2 FAILED,
3 BUILT), on SQLite (a temp file) or the local PostgreSQL. Then (:func:`add_results`) the
studies are moved in time so that the newest was received a minute ago (the statistics'
windows end now), and get what the results routes and filters read: a lung-ct run each (triage
URGENT on 1 in 50, PRIORITY on 1 in 10 of the others, else ROUTINE), a brain-mask run on 1 in
3, a brain-tumor-demo run on 1 in 200; a calling AE title MR7 on 1 in 100 and US3 on 1 in
1,000 (the rest CT1); and the moves into COMPLETE (at completion) and REPORTED (1 to 11
minutes later). The statistics' rollup is then back-filled from those rows as migration r0007
does (``rollup.rebuild``, timed). PostgreSQL is analysed afterwards, as autovacuum would have;
SQLite is not (the node never runs ANALYZE).
The API then runs as ``serve`` runs it (uvicorn in a thread, a real socket) and one client
logged in as an operator asks each route ``--requests`` times; the table gives the median and
p95 latency per route, client side.

    .venv/bin/python bench/api.py                          # 100,000 studies, SQLite
    .venv/bin/python bench/api.py --size 10000 --db postgresql --requests 100
    .venv/bin/python bench/api.py --size 1000 --only statistics   # the routes matching it
    .venv/bin/python bench/api.py --size 1000 --history-days 84   # a small ledger, same days
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ledger as ledger_bench

from node.core import db, rollup
from node.core.accounts import Role
from node.core.ledger import open_ledger, utcnow
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


def add_results(engine: Engine, history_days: int = 0) -> None:
    """Recent studies with results rows, calling AE titles and REPORTED events (see above).
    With ``history_days`` the finished studies are spread evenly over that many days (else one
    a minute, as filled): a small ledger then covers the statistics' windows as a big one
    does, so that the two cost what their histories, not their windows, make them cost."""
    pg = engine.dialect.name == "postgresql"
    s = db.studies.c
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(s.received_at)).where(s.state == "DONE")
                              ).scalar_one()
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).where(s.state == "DONE")).scalar_one()
    stretch = max(int(history_days * 86400 / max(done, 1)) - 60, 0) if history_days else 0
    shift = f"{int((utcnow() - newest).total_seconds()) - 60 - (done - 1) * stretch}"
    if stretch:
        shift += f" + (id - 1) * {stretch}"

    def plus(column: str, seconds: str) -> str:
        if pg:
            return f"({column} + ({seconds}) * interval '1 second')"
        return (f"strftime('%Y-%m-%d %H:%M:%f', {column}, "
                f"printf('%+d seconds', {seconds}))")

    def run_of(model: str, every: int, triage: str) -> str:
        return ("INSERT INTO results (study_id, generation, model, model_version, triage, "
                "finding, current, created_at, folder) "
                f"SELECT id, 1, '{model}', '1.0.0', {triage}, NULL, TRUE, "
                f"{plus('completed_at', '30')}, 'results/bench/g1/{model}' "
                f"FROM studies WHERE state = 'DONE' AND id % {every} = 0")

    times = ", ".join(f"{c} = {plus(c, shift)}" for c in (
        "received_at", "opened_at", "last_received_at", "completed_at", "updated_at"))
    statements = [
        f"UPDATE studies SET {times}, calling_ae_title = CASE WHEN id % 1000 = 7 THEN 'US3' "
        "WHEN id % 100 = 3 THEN 'MR7' ELSE calling_ae_title END WHERE state = 'DONE'",
        run_of("lung-ct", 1, "CASE WHEN id % 50 = 0 THEN 'URGENT' WHEN id % 10 = 0 "
               "THEN 'PRIORITY' ELSE 'ROUTINE' END"),
        run_of("brain-mask", 3, "'ROUTINE'"),
        run_of("brain-tumor-demo", 200, "'URGENT'"),
        "INSERT INTO events (at, study_id, kind, from_state, to_state, detail) "
        "SELECT completed_at, id, 'transition', 'RECEIVING', 'COMPLETE', 'bench' "
        "FROM studies WHERE state = 'DONE'",
        "INSERT INTO events (at, study_id, kind, from_state, to_state, detail) "
        f"SELECT {plus('completed_at', '60 + id % 600')}, id, 'transition', 'DELIVERED', "
        "'REPORTED', 'bench' FROM studies WHERE state = 'DONE'",
    ]
    with engine.begin() as conn:
        for statement in statements:
            if pg:  # psycopg2 would take '%' for a parameter: mod() instead
                conn.exec_driver_sql(re.sub(r"(\w+) % (\d+)", r"mod(\1, \2)", statement))
            else:  # pysqlite: no parameters at all, as bench/ledger.py's fill
                conn.exec_driver_sql(statement, ())
    t = time.perf_counter()
    with engine.begin() as conn:
        rollup.rebuild(conn)
    print(f"rollup back-filled from the rows in {time.perf_counter() - t:.1f} s")
    if pg:  # what autovacuum does on a server that has been running
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--instances", type=int, default=20, help="instances per finished study")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--only", default="", help="time only the routes this regex finds")
    p.add_argument("--history-days", type=int, default=0,
                   help="spread the finished studies over that many days (else one a minute)")
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
        add_results(led.engine, a.history_days)
        print(f"{a.db}: {a.size:,} finished studies of {a.instances} instances filled in "
              f"{time.perf_counter() - t:.0f} s")
        ctx = WebContext.of(led, settings, {})
        ctx.accounts.add_user("op", Role.OPERATOR, PASSWORD)
        ctx.accounts.add_user("root", Role.ADMIN, PASSWORD)
        server = WebServer(ctx)
        server.start()
        middle = a.size // 2
        with led.engine.connect() as conn:
            newest = conn.execute(select(func.max(db.studies.c.received_at))).scalar_one()
        since = (newest - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M")
        until = (newest - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M")
        routes = [
            "/api/v1/studies",
            "/api/v1/studies?state=DONE&limit=50",
            f"/api/v1/studies?state=DONE&limit=50&before={middle}",
            "/api/v1/studies?state=FAILED",
            f"/api/v1/studies?since={since}&state=DONE",
            f"/api/v1/studies/{middle}",
            "/api/v1/models",
            # the filters: common ones (an EXISTS per candidate job), rare ones (a list of ids),
            # with the calling AE title's index, combined, and one page deep in the history
            "/api/v1/studies?model=lung-ct",
            "/api/v1/studies?triage=PRIORITY",
            "/api/v1/studies?model=lung-ct&triage=URGENT",
            "/api/v1/studies?model=brain-tumor-demo",
            "/api/v1/studies?calling_ae=MR7",
            "/api/v1/studies?calling_ae=US3&model=lung-ct&triage=ROUTINE&state=DONE",
            "/api/v1/studies?calling_ae=MR7&model=lung-ct&triage=URGENT",  # matches no job
            "/api/v1/studies?triage=PRIORITY&calling_ae=US3",  # matches no job
            f"/api/v1/studies?model=brain-mask&state=DONE&before={middle}",
            f"/api/v1/studies?triage=ROUTINE&since={since}&until={until}",
            f"/api/v1/studies/{middle}/results",
            "/api/v1/statistics",
            "/api/v1/statistics?days=366&weeks=106",
            "/api/v1/quarantine",
            "/metrics",  # Prometheus' scrape: the ledger's gauges read at each one
        ]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                client.post("/api/v1/session",
                            json={"name": "op", "password": PASSWORD}).raise_for_status()
                print(f"{'route':<78} {'median ms':>10} {'p95 ms':>8}")
                for route in (r for r in routes if re.search(a.only, r)):
                    median, p95 = _time(client, route, a.requests)
                    print(f"{route:<78} {median:>10.1f} {p95:>8.1f}", flush=True)
        finally:
            server.stop()
            led.engine.dispose()


if __name__ == "__main__":
    main()
