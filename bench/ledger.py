"""The ledger's cost per pipeline wake and per `status`, against the size of its history.

For each database (SQLite, PostgreSQL) and each history size N, a fresh ledger (made by the
node's migrations) is filled in bulk, inside the database (a recursive CTE on SQLite,
generate_series on PostgreSQL, one transaction each), with N finished (DONE) studies of
``--instances`` instances, 8 delivered outbox items and 8 events each, plus a few live jobs the
timers look at without moving them: 5 RECEIVING (still in their quiet period), 2 HELD, 2 FAILED
and 3 BUILT whose deliveries wait for a retry that is not due. Then it measures:

- one wake: exactly what the node's timers call, with the node's own objects:
  ``flow.sweep`` (completion), ``Flow.run_waiting(PROCESSING)`` (pipeline, with a model enabled,
  so it asks for COMPLETE, DEIDENTIFIED and INFERRED) and ``Flow.run_waiting(DELIVERY)``;
  median of ``--repeat`` runs;
- before: the listing today's main made at every pipeline wake (every study with a correlated
  count of its instances: ``Ledger.studies()`` of commit 7381061), on the same data;
- status: ``dicom-node status`` as the CLI function, in this process (median of ``--repeat``),
  and once as a real ``dicom-node status`` process (wall time, Python start-up and imports
  included: the line "process floor" gives ``dicom-node --version`` alone).

    .venv/bin/python bench/ledger.py                       # 1,000 / 10,000 / 100,000, both
    .venv/bin/python bench/ledger.py --sizes 1000 --db sqlite --repeat 5
    .venv/bin/python bench/ledger.py --instances 20        # lighter fill, said in the table

PostgreSQL: the local server (``DICOM_NODE_BENCH_POSTGRES``, default postgres@127.0.0.1:5432);
each size gets its own scratch database, dropped afterwards. SQLite: a file in a temp dir,
removed afterwards. Fill time and database size are printed per row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node import commands as cli  # noqa: E402
from node.core import db  # noqa: E402
from node.core.at_rest import StorageKeys  # noqa: E402
from node.core.jobstate import JobState  # noqa: E402
from node.core.keys import DeidKeys, new_secret  # noqa: E402
from node.core.ledger import (  # noqa: E402
    Ledger,
    StudyRow,
    open_ledger,
    utcnow,
)
from node.core.outbox import Outbox  # noqa: E402
from node.core.pseudonyms import PseudonymStore  # noqa: E402
from node.core.settings import DeidSettings  # noqa: E402
from node.core.settings_load import load_settings  # noqa: E402
from node.core.spool import Spool  # noqa: E402
from node.pipeline.context import StageContext  # noqa: E402
from node.pipeline.deid.profile import load_profile  # noqa: E402
from node.pipeline.deliver.senders import Peers  # noqa: E402
from node.pipeline.deliver.stage import Deliverer  # noqa: E402
from node.pipeline.flow import DELIVERY, PROCESSING, Flow, sweep  # noqa: E402

PG_ADMIN = os.environ.get("DICOM_NODE_BENCH_POSTGRES",
                          "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
LIVE = {"RECEIVING": 5, "HELD": 2, "FAILED": 2, "BUILT": 3}
OUTBOX_PER_STUDY = EVENTS_PER_STUDY = 8

#: today's main's pipeline listing (Ledger.studies() at commit 7381061), for the "before" column
BEFORE_SQL = (
    "SELECT studies.id, studies.study_instance_uid, studies.state, studies.generation, "
    "(SELECT count(*) FROM instances WHERE instances.study_id = studies.id) AS instances, "
    "studies.duplicates, studies.received_at, studies.opened_at, studies.last_received_at, "
    "studies.completed_at, studies.completion_reason, studies.state_reason, "
    "studies.calling_ae_title FROM studies ORDER BY studies.received_at, studies.id")


@dataclass
class Row:
    db: str
    studies: int
    instances_each: int
    fill_s: float
    size_mb: float
    wake_ms: float
    sweep_ms: float
    pipeline_ms: float
    delivery_ms: float
    before_ms: float
    status_ms: float
    status_process_ms: float


def median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # warm-up: caches, prepared plans
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def interleaved(work: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median ms of each piece of work, timed in ``repeat`` rounds of one run each."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for round_ in range(repeat + 1):
        for name, run in work.items():
            t = time.perf_counter()
            run()
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1000 for name, ts in times.items()}


# ------------------------------------------------------------------ fill


def _sqlite_series(n: int) -> str:
    return f"WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < {n - 1}) "


def fill(engine: Engine, n: int, per_study: int) -> None:
    """N finished studies (ids 1..N) with their instances, outbox items and events, in bulk."""
    pg = engine.dialect.name == "postgresql"
    series = (lambda m: f"FROM generate_series(0, {m - 1}) AS g(i)") if pg else None
    ts = "timestamp '2026-01-01 00:00:00'" if pg else "'2026-01-01 00:00:00.000000'"

    def at(seconds: str) -> str:
        if pg:
            return f"({ts} + ({seconds}) * interval '1 second')"
        return f"strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || ({seconds}) || ' seconds')"

    def pad(expr: str, width: int) -> str:
        return f"lpad(({expr})::text, {width}, '0')" if pg else f"printf('%0{width}d', {expr})"

    def insert(table: str, columns: str, select: str, count: int) -> str:
        if pg:
            return f"INSERT INTO {table} ({columns}) SELECT {select} {series(count)}"  # type: ignore[misc]
        return f"{_sqlite_series(count)}INSERT INTO {table} ({columns}) SELECT {select} FROM g"

    studies = insert(
        "studies",
        "id, study_instance_uid, state, generation, duplicates, received_at, opened_at, "
        "last_received_at, completed_at, completion_reason, state_reason, calling_ae_title, "
        "updated_at, instances",
        f"i + 1, '1.2.826.0.1.3680043.10.1.' || {pad('i', 9)}, 'DONE', 1, 0, {at('i * 60')}, "
        f"{at('i * 60')}, {at('i * 60 + 30')}, {at('i * 60 + 90')}, 'quiet-period', "
        f"'all delivered; no alert', 'CT1', {at('i * 60 + 200')}, {per_study}", n)
    instances = insert(
        "instances",
        "sop_instance_uid, study_id, series_instance_uid, sop_class_uid, transfer_syntax_uid, "
        "modality, matched_rules, path, size_bytes, calling_ae_title, received_at",
        f"'1.2.826.0.1.3680043.10.2.' || {pad('i', 11)}, i / {per_study} + 1, "
        f"'1.2.826.0.1.3680043.10.3.' || {pad(f'i / {per_study}', 9)}, "
        "'1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', 'CT', '', "
        f"'ab/' || {pad(f'i / {per_study}', 24)} || '/' || {pad('i', 24)} || '.dcm', 526000, "
        f"'CT1', {at(f'(i / {per_study}) * 60 + (i - (i / {per_study}) * {per_study}) / 10.0')}",
        n * per_study)
    outbox = insert(
        "outbox",
        "study_id, generation, model, kind, destination, object_uid, label, path, state, "
        "attempts, next_attempt_at, last_error, created_at, updated_at, delivered_at",
        f"i / {OUTBOX_PER_STUDY} + 1, 1, 'lung-ct', 'dicom', 'pacs', "
        f"'2.25.' || {pad('i', 12)}, 'seg', 'x.dcm', 'DELIVERED', 1, "
        f"{at('i * 7')}, NULL, {at('i * 7')}, {at('i * 7')}, {at('i * 7')}",
        n * OUTBOX_PER_STUDY)
    events = insert(
        "events", "at, study_id, kind, from_state, to_state, detail",
        f"{at('i * 7')}, i / {EVENTS_PER_STUDY} + 1, 'transition', 'RECEIVING', 'COMPLETE', "
        "'quiet-period'", n * EVENTS_PER_STUDY)
    with engine.begin() as conn:
        for statement in (studies, instances, outbox, events):
            if pg:
                conn.exec_driver_sql(statement)
            else:  # pysqlite: no parameters at all, so that '%' in printf/strftime stays
                conn.exec_driver_sql(statement, ())
        if pg:
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('studies', 'id'), {n})")
    if not pg:  # the bulk transaction's pages go from the WAL into the database, as they do
        # a few at a time on a node that received them one by one
        raw = engine.raw_connection()  # outside a transaction: pysqlite in autocommit
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # type: ignore[union-attr]
        finally:
            raw.close()


def add_live(ledger: Ledger, outbox: Outbox) -> None:
    """The live jobs of a working node: what the timers look at every wake, unmoved."""
    from node.core.ledger import ReceivedInstance
    from node.core.outbox import NewItem

    now = utcnow()
    for state, count in LIVE.items():
        for k in range(count):
            uid = f"1.2.826.0.1.3680043.10.9.{state.lower()}.{k}"
            for j in range(3):
                ledger.record_instance(ReceivedInstance(
                    f"{uid}.{j}", "1.2.840.10008.5.1.4.1.1.2", uid, f"{uid}.0",
                    "1.2.840.10008.1.2.1", "CT", (), 1000, "CT1"), f"live/{uid}.{j}", lambda: None)
            study = ledger.study(uid)
            if state == "RECEIVING":
                continue
            with ledger.engine.begin() as conn:
                conn.execute(db.studies.update().where(db.studies.c.id == study.id)
                             .values(state=state, state_reason="bench"))
                if state == "BUILT":
                    outbox.add(conn, study.id, study.generation, [
                        NewItem("lung-ct", "dicom", "pacs", f"{uid}.9{j}", f"seg-{j}", f"{uid}/{j}")
                        for j in range(4)])
                    # a failed attempt earlier: the next one is not due for an hour
                    conn.execute(db.outbox.update().where(db.outbox.c.study_id == study.id)
                                 .values(attempts=1, next_attempt_at=now + timedelta(hours=1)))


# ------------------------------------------------------------------ one size on one database


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[tuple[str, Callable[[], float]]]:
    """(url, size in MB) of a scratch ledger, removed afterwards."""
    if kind == "sqlite":
        path = workdir / "var" / "ledger.sqlite3"
        path.parent.mkdir(parents=True)

        def sqlite_mb() -> float:
            return sum(p.stat().st_size for p in path.parent.glob("ledger.sqlite3*")) / 2**20

        yield f"sqlite:///{path}", sqlite_mb
        return
    name = f"dicom_node_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

    def pg_mb() -> float:
        with admin.connect() as conn:
            size = conn.execute(text(f"SELECT pg_database_size('{name}')")).scalar_one()
        return int(size) / 2**20

    try:
        yield url, pg_mb
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(kind: str, n: int, per_study: int, repeat: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-ledger-") as tmp, \
            database(kind, Path(tmp)) as (url, size_mb):
        workdir = Path(tmp)
        config = workdir / "node.toml"
        config.write_text(f'[node]\nvar_dir = "{workdir / "var"}"\ndatabase_url = "{url}"\n'
                          "[completion]\nquiet_period_s = 3600.0\n", encoding="utf-8")
        settings = load_settings(str(config))
        ledger = open_ledger(settings, create=True)  # the node's migrations make the schema
        t = time.perf_counter()
        fill(ledger.engine, n, per_study)
        fill_s = time.perf_counter() - t
        outbox = Outbox(ledger.engine)
        add_live(ledger, outbox)
        if kind == "postgresql":  # what autovacuum does on a server that has been running,
            # then the bulk load's dirty pages written out, so that no measurement shares the
            # disk with the checkpointer
            with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")
                c.exec_driver_sql("CHECKPOINT")

        keys = DeidKeys.from_secret(new_secret().encode())
        spool = Spool(workdir / "var", 0, StorageKeys.from_secret(b"0" * 32))
        ctx = StageContext(ledger, spool, load_profile(DeidSettings()), keys,
                           PseudonymStore(ledger.engine, keys),
                           {"model": object()},  # type: ignore[dict-item]
                           settings)
        flow = Flow(ledger, settings, Deliverer(outbox, Peers(settings, ctx.outbox_root)), ctx)

        def pipeline() -> int:
            return flow.run_waiting(PROCESSING)

        def delivery() -> int:
            return flow.run_waiting(DELIVERY)

        completion = settings.completion

        def wake() -> None:
            assert sweep(ledger, completion) == 0
            assert pipeline() == 0
            assert delivery() == 0

        def status() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli.main(["--config", str(config), "status"]) == 0

        def before() -> None:
            with db.reader(ledger.engine) as conn:
                [StudyRow(**{**r._asdict(), "state": JobState(r.state)})
                 for r in conn.exec_driver_sql(BEFORE_SQL)]

        # round robin: each round times every piece once, so that a busy moment of the
        # machine falls on all of them alike
        medians = interleaved({
            "wake": wake, "sweep": lambda: sweep(ledger, completion),
            "pipeline": pipeline, "delivery": delivery,
            "status": status}, repeat)
        row = Row(
            db=kind, studies=n, instances_each=per_study, fill_s=round(fill_s, 1),
            size_mb=round(size_mb(), 0), wake_ms=medians["wake"], sweep_ms=medians["sweep"],
            pipeline_ms=medians["pipeline"], delivery_ms=medians["delivery"],
            before_ms=median_ms(before, max(1, min(repeat, 3 if n >= 10_000 else repeat))),
            status_ms=medians["status"],
            status_process_ms=_process_ms([*_cli(), "--config", str(config), "status"]),
        )
        ledger.engine.dispose()
        return row


def _cli() -> list[str]:
    return [sys.executable, "-m", "node.commands"]


def _process_ms(command: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    elapsed = (time.perf_counter() - t) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[-2:])} failed: {done.stderr.strip()}")
    return elapsed


# ------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="finished studies in the ledger, comma-separated")
    p.add_argument("--instances", type=int, default=100, help="instances per finished study")
    p.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    p.add_argument("--repeat", type=int, default=21, help="runs per median")
    p.add_argument("--out", type=Path, help="write the rows as JSON here too")
    args = p.parse_args()
    floor = _process_ms([*_cli(), "--version"])
    rows: list[Row] = []
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in args.db.split(","):
            print(f"{kind}: {n:,} studies x {args.instances} instances ...", file=sys.stderr,
                  flush=True)
            rows.append(measure(kind, n, args.instances, args.repeat))
            print(f"  {asdict_line(rows[-1])}", file=sys.stderr, flush=True)
    print_table(rows, floor, args.repeat)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"process_floor_ms": floor,
                                        "rows": [r.__dict__ for r in rows]}, indent=2))
    return 0


def asdict_line(row: Row) -> str:
    return ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.__dict__.items())


def print_table(rows: list[Row], floor_ms: float, repeat: int) -> None:
    header = ("db", "studies", "inst/study", "fill s", "size MB", "wake ms", "sweep",
              "pipeline", "delivery", "before ms", "status ms", "status proc ms")
    table: list[tuple[Any, ...]] = [header]
    for r in rows:
        table.append((r.db, f"{r.studies:,}", r.instances_each, f"{r.fill_s:.1f}",
                      f"{r.size_mb:,.0f}", f"{r.wake_ms:.2f}", f"{r.sweep_ms:.2f}",
                      f"{r.pipeline_ms:.2f}", f"{r.delivery_ms:.2f}", f"{r.before_ms:,.1f}",
                      f"{r.status_ms:.1f}", f"{r.status_process_ms:,.0f}"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\nmedians of {repeat} runs (before: of up to 3 at 10,000 and more); "
          f"process floor (dicom-node --version): {floor_ms:,.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
