"""The console's pages against a ledger of 100,000 studies: median and p95 per page.

The ledger is filled as ``bench/ledger.py`` fills it (N DONE studies of ``--instances``
instances, 8 delivered outbox items and 8 events each, one study a minute, plus the live jobs
of a working node), on SQLite (a temp file) or the local PostgreSQL; then every time in it is
moved so that the newest study arrived a minute ago: about 43,000 studies fall in the
Overview's 30-day chart, the worst case for it. ``bench/api.py``'s ``add_results`` then gives
them model runs (lung-ct on each, triage URGENT on 1 in 50; brain-tumor-demo on 1 in 200) and
calling AE titles (US3 on 1 in 1,000), which the Studies page's filters read, and back-fills
the statistics' rollup from the rows (as migration r0007 does). The other pages get a history
of their own: one audit record per study (logins, study views, retries, uploads, over the last
30 days), a radiologist's feedback on every 100th lung-ct run (the Model quality page's
weeks), 2,000 quarantined objects and 50 user accounts. Two destinations are configured:
``pacs``, which took every item, and ``emr``, which has none (its "last success" is looked
for and not found). The app runs as ``serve`` runs it (uvicorn in a thread, a real socket);
one client logged in through the login form as an administrator (who may open every page)
asks each page ``--requests`` times.

    .venv/bin/python bench/console.py                          # 100,000 studies, SQLite
    .venv/bin/python bench/console.py --size 10000 --db postgresql --requests 50
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
from sqlalchemy import Engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import api as api_bench
import ledger as ledger_bench

from node.core import db, patients, rollup
from node.core.accounts import Role
from node.core.keys import load_keys, write_key_file
from node.core.ledger import open_ledger, utcnow
from node.core.outbox import Outbox
from node.core.settings import Settings
from node.core.settings_load import load_settings
from node.web.context import WebContext
from node.web.server import WebServer

PASSWORD = api_bench.PASSWORD
_free_port = api_bench._free_port
_time = api_bench._time


def _bring_to_now(engine: Engine) -> None:
    """Shift every time of the bulk-filled history so the newest study is a minute old."""
    with db.reader(engine) as conn:
        newest = conn.execute(select(func.max(db.studies.c.received_at))).scalar_one()
    shift = int((utcnow() - timedelta(minutes=1) - newest).total_seconds())
    pg = engine.dialect.name == "postgresql"

    def moved(column: str) -> str:
        if pg:
            return f"{column} = {column} + interval '{shift} seconds'"
        return f"{column} = strftime('%Y-%m-%d %H:%M:%f', {column}, '{shift:+d} seconds')"

    with engine.begin() as conn:
        for table, columns in (
                ("studies", ("received_at", "opened_at", "last_received_at", "completed_at",
                             "updated_at")),
                ("outbox", ("next_attempt_at", "created_at", "updated_at", "delivered_at")),
                ("events", ("at",))):
            sql = f"UPDATE {table} SET " + ", ".join(moved(c) for c in columns)
            if pg:
                conn.execute(text(sql))
            else:  # no parameters, so that '%' stays
                conn.exec_driver_sql(sql, ())




def _add_console_rows(engine: Engine, size: int) -> None:
    """The Audit, Model quality, Quarantine and Users pages' history (see the docstring)."""
    pg = engine.dialect.name == "postgresql"

    def ago(seconds: str) -> str:
        if pg:
            return f"(now() at time zone 'utc' - ({seconds}) * interval '1 second')"
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({seconds}) || ' seconds')"

    def rows(count: int, table: str, columns: str, values: str) -> str:
        if pg:
            return (f"INSERT INTO {table} ({columns}) SELECT {values} "
                    f"FROM generate_series(0, {count - 1}) AS g(i)")
        return (f"{ledger_bench._sqlite_series(count)}INSERT INTO {table} ({columns}) "
                f"SELECT {values} FROM g")

    actions = "CASE i % 4 WHEN 0 THEN 'login' WHEN 1 THEN 'study-view' WHEN 2 THEN 'retry' " \
              "ELSE 'upload' END"
    statements = [
        rows(size, "audit", "at, user_name, role, address, action, study_id, outcome, detail, "
             "forward_pending, forward_attempts",
             f"{ago(f'({size} - i) * 2592000 / {size}')}, CASE WHEN i % 3 = 0 THEN 'op' "
             f"ELSE 'rad' END, 'radiologist', '10.0.0.' || (i % 250), {actions}, "
             f"i % {size} + 1, 'ok', 'bench', FALSE, 0"),
        "INSERT INTO feedback (result_id, study_id, model, model_version, generation, "
        "ai_triage, user_name, verdict, corrected_triage, note, created_at) "
        "SELECT id, study_id, model, model_version, generation, triage, 'rad', "
        "CASE WHEN study_id % 7 = 0 THEN 'incorrect' WHEN study_id % 5 = 0 THEN 'partly_correct' "
        "ELSE 'correct' END, NULL, NULL, created_at "
        "FROM results WHERE model = 'lung-ct' AND study_id % 100 = 0",
        rows(2000, "quarantine", "received_at, reason, path, size_bytes, calling_ae_title",
             f"{ago('i * 600')}, 'bench: refused', 'q-' || i || '.dcm', 1000, 'CT1'"),
    ]
    with engine.begin() as conn:
        for statement in statements:
            if pg:
                conn.exec_driver_sql(re.sub(r"(\w+) % (\d+)", r"mod(\1, \2)", statement))
            else:
                conn.exec_driver_sql(statement, ())


def _add_search_keys(engine: Engine, settings: Settings, size: int) -> None:
    """Keyed pseudonyms on every study, as de-identification writes them: 20,000 patients (five
    studies each at 100,000), one accession number per study. Patient "MRN-7" and the accession
    number "ACC-MIDDLE" (the middle study) are real pseudonyms of the node's key, so the
    Studies page's search finds them; every other key is a distinct stand-in."""
    key_file = settings.var_path / "deid.key"
    write_key_file(key_file)
    keys = load_keys(key_file)
    with engine.begin() as conn:
        patient = "id - (id / 20000) * 20000"  # id modulo 20,000 in SQLite and PostgreSQL
        conn.execute(text(f"UPDATE studies SET patient_key = 'PATX' || ({patient}), "
                          "accession_key = 'AX' || id"))
        conn.execute(text(f"UPDATE studies SET patient_key = :key WHERE {patient} = 7"),
                     {"key": patients.patient_pseudonym(keys, patients.patient_text("", "MRN-7"))})
        conn.execute(text("UPDATE studies SET accession_key = :key WHERE id = :id"),
                     {"key": patients.accession_pseudonym(keys, "ACC-MIDDLE"), "id": size // 2})


def _log_in(client: httpx.Client, name: str = "admin") -> None:
    form = client.get("/login")
    token = re.search(r'name="form_token" value="([^"]+)"', form.text)
    assert token is not None
    r = client.post("/login", data={"name": name, "password": PASSWORD,
                                    "form_token": token[1], "next": "/"})
    assert r.status_code == 303, r.text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--instances", type=int, default=20, help="instances per finished study")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--requests", type=int, default=100)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-console-") as tmp, \
            ledger_bench.database(a.db, Path(tmp)) as (url, _size_mb):
        port = _free_port()
        config = Path(tmp) / "node.toml"
        config.write_text(
            f'[node]\nvar_dir = "{Path(tmp) / "var"}"\ndatabase_url = "{url}"\n'
            f"[scp]\nmin_free_disk_mb = 0\n[web]\nport = {port}\n"
            '[[delivery.dicom]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
            '[[delivery.hl7]]\nname = "emr"\nhost = "127.0.0.1"\nport = 2575\n')
        settings = load_settings(str(config))
        led = open_ledger(settings, create=True)
        t = time.perf_counter()
        ledger_bench.fill(led.engine, a.size, a.instances)
        _bring_to_now(led.engine)
        api_bench.add_results(led.engine)  # its own shift is then nil
        ledger_bench.add_live(led, Outbox(led.engine))
        with led.engine.begin() as conn:  # the rollup again: add_live sets states directly
            rollup.rebuild(conn)
        print(f"{a.db}: {a.size:,} finished studies of {a.instances} instances filled in "
              f"{time.perf_counter() - t:.0f} s")
        _add_console_rows(led.engine, a.size)
        ctx = WebContext.of(led, settings, {})
        _add_search_keys(led.engine, settings, a.size)
        ctx.accounts.add_user("admin", Role.ADMIN, PASSWORD)
        ctx.accounts.add_user("clinician", Role.CLINICIAN, PASSWORD)
        for n in range(50):
            ctx.accounts.add_user(f"user{n:02d}", list(Role)[n % len(Role)], PASSWORD)
        server = WebServer(ctx)
        server.start()
        middle = a.size // 2
        day = (utcnow() - timedelta(days=10)).date().isoformat()
        pages = [
            "/",
            "/studies",
            "/studies?state=DONE",
            f"/studies?state=DONE&before={middle}",
            f"/studies?after={middle}",
            f"/studies?from={day}&to={day}",
            "/studies?state=FAILED",
            "/studies?model=lung-ct&triage=URGENT",
            "/studies?model=brain-tumor-demo",
            "/studies?ae=US3",
            f"/studies/{middle}",
            "/failures",
            "/quarantine",
            "/models",
            "/audit",
            "/audit?action=retry",
            "/audit?user=op",
            f"/audit?before={a.size // 2}",
            "/users",
            "/quality",
            "/quality?weeks=52",
            "/upload",
            "/static/console.css",
        ]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                _log_in(client)
                print(f"{'page':<48} {'median ms':>10} {'p95 ms':>8}")
                for page in pages:
                    median, p95 = _time(client, page, a.requests)
                    print(f"{page:<48} {median:>10.1f} {p95:>8.1f}")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                _log_in(client, "clinician")  # the search by identity is theirs
                for page in ("/studies?pid=MRN-7", "/studies?acc=ACC-MIDDLE",
                             "/studies?pid=NOBODY"):
                    median, p95 = _time(client, page, a.requests)
                    print(f"{page + ' (clinician)':<48} {median:>10.1f} {p95:>8.1f}")
        finally:
            server.stop()
            led.engine.dispose()


if __name__ == "__main__":
    main()
