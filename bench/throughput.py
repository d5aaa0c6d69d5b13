"""Studies per hour through the whole flow: the embedded runner, one Celery worker, two workers.

Side by side in one run, on the same studies: N chest CTs of the phantom (default 8 studies of
300 slices of 512x512, lung-ct), stored with dcmtk's storescu one after the other, then all
force-completed at once (each runner works off the same backlog; receiving is not measured);
results go to a dcmtk storescp (the PACS) and an MLLP listener (the EMR). Per runner:

    embedded    ``dicom-node serve`` alone (SQLite ledger, no broker): the default
    1 worker    ``serve --no-pipeline`` + one ``dicom-node worker`` (PostgreSQL, RabbitMQ)
    2 workers   ``serve --no-pipeline`` + two workers

Throughput is the number of studies over the time from the first study COMPLETE to the last
DONE (the ledger's audit events), times 3600. ``node_cpu_s`` is the CPU time (user + system)
the node's processes (receiver and workers) used from the first study stored to the last DONE
(receiving included); ``machine_busy`` how busy all the machine's CPUs were over that time
(/proc/stat: the node, RabbitMQ, PostgreSQL, storescu, the PACS and anything else running).
Workers are started and ready before the first study is stored, so their start (importing
torch, loading the model) is not counted.

    .venv/bin/python bench/throughput.py [--studies 8] [--ct-slices 300] [--size 512]
                                         [--out bench/results/throughput.json]

Needs PostgreSQL (``DICOM_NODE_TEST_POSTGRES``, as the tests) and RabbitMQ on
amqp://guest@127.0.0.1:5672//. The machine's noise is large: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))
import pydicom  # noqa: E402
from demo_data import CHEST_PATIENT, Uids, chest_ct_series  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from node.hl7.listener import MllpListener  # noqa: E402
from tests.conftest import DICOM_NODE, POSTGRES_ADMIN_URL, free_port, write_config  # noqa: E402

BROKER = "amqp://guest@127.0.0.1:5672//"
RUNNERS = {"embedded": 0, "1 worker": 1, "2 workers": 2}


def make_studies(folder: Path, count: int, slices: int, size: int) -> list[list[Path]]:
    """One phantom CT, then copies of it as further studies (new study/series/SOP UIDs)."""
    first = chest_ct_series(folder / "study0", slices, CHEST_PATIENT, Uids(None), size=size)
    studies = [first]
    for i in range(1, count):
        out = folder / f"study{i}"
        out.mkdir()
        study, series = generate_uid(), generate_uid()
        paths = []
        for path in first:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(out / path.name, enforce_file_format=True)
            paths.append(out / path.name)
        studies.append(paths)
    return studies


@contextmanager
def database() -> Iterator[str]:
    name = f"dicom_node_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE__")}
    env.update(PYTHONPATH=str(REPO), TCP_NODELAY="1")
    return env


def _start(workdir: Path, config: dict[str, Any], *args: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True)
    path = write_config(workdir / "node.toml", config)
    with (workdir / "node.log").open("ab") as log:
        return subprocess.Popen([*DICOM_NODE, "--config", str(path), *args], cwd=workdir,
                                stdout=log, stderr=subprocess.STDOUT, env=_env())


def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{path.parent.name} exited:\n{path.read_text(errors='replace')}")
        time.sleep(0.2)
    raise SystemExit(f"{path.parent.name}: {needle!r} not seen in {timeout} s")


def _done(url: str, count: int, timeout: float) -> tuple[datetime, datetime]:
    """(first COMPLETE, last DONE) once ``count`` studies are DONE (any FAILED: an error)."""
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                states = [r[0] for r in conn.execute(text("SELECT state FROM studies"))]
                if "FAILED" in states:
                    raise SystemExit("a study FAILED: see the logs")
                if len(states) == count and set(states) == {"DONE"}:
                    first = conn.execute(text(
                        "SELECT min(at) FROM events WHERE to_state = 'COMPLETE'")).scalar_one()
                    last = conn.execute(text(
                        "SELECT max(at) FROM events WHERE to_state = 'DONE'")).scalar_one()
                    return _when(first), _when(last)
            time.sleep(1.0)
    finally:
        engine.dispose()
    raise SystemExit(f"not all {count} studies DONE within {timeout} s")


def _force_complete(url: str, studies: list[list[Path]]) -> None:
    """What ``dicom-node force-complete`` does, for every study within milliseconds."""
    from node.core.db import make_engine
    from node.core.ledger import Ledger

    ledger = Ledger(make_engine(url))
    for files in studies:
        ledger.force_complete(str(pydicom.dcmread(files[0], stop_before_pixels=True)
                                  .StudyInstanceUID))
    ledger.engine.dispose()


def _when(value: datetime | str) -> datetime:
    """SQLite gives the audit times as text, PostgreSQL as datetimes."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def run_one(name: str, workers: int, studies: list[list[Path]], root: Path,
            key: Path) -> dict[str, Any]:
    work = root / name.replace(" ", "-")
    pacs_port, node_port = free_port(), free_port()
    (work / "pacs").mkdir(parents=True)
    pacs = subprocess.Popen(["/usr/bin/storescp", "-od", str(work / "pacs"), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    while subprocess.run(["/usr/bin/echoscu", "127.0.0.1", str(pacs_port)],
                         capture_output=True).returncode != 0:  # a PACS down would mean retries
        time.sleep(0.1)
    procs: list[subprocess.Popen[bytes]] = []
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=work / "oru.txt") as emr, \
            (database() if workers else nullcontext()) as pg:
        url = pg or f"sqlite:///{work / 'shared' / 'ledger.sqlite3'}"
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        config: dict[str, Any] = {
            "node": {"ae_title": "DICOM_NODE", "host": "127.0.0.1", "port": node_port,
                     "var_dir": str(work / "shared"), "database_url": url},
            "scp": {"min_free_disk_mb": 0},
            # every study completes when all are stored (force-complete below): the runners
            # are measured on the same backlog, not on how fast the studies arrive
            "completion": {"quiet_period_s": 3600.0, "max_wait_s": 7200.0},
            "deid": {"key_file": str(key)},
            "models": {"dir": str(REPO / "models"), "enabled": ["lung-ct"], "device": "cpu"},
            "delivery": {"dicom": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                    "port": pacs_port}],
                         "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port}]},
            "workers": {"enabled": bool(workers), "broker_url": BROKER, "queue_prefix": prefix,
                        "requeue_interval_s": 0.5},
            "web": {"enabled": False},
        }
        try:
            procs.append(_start(work / "receiver", config, "serve"))
            _wait_for(work / "receiver" / "node.log", "listening as", procs[0], 120)
            for i in range(workers):
                procs.append(_start(work / f"worker-{i + 1}", config, "worker"))
                _wait_for(work / f"worker-{i + 1}" / "node.log", "ready.", procs[-1], 120)
            cpu_start = sum(_cpu_s(proc.pid) for proc in procs)
            machine_start = _machine()
            for files in studies:
                subprocess.run(["/usr/bin/storescu", "-aec", "DICOM_NODE", "127.0.0.1",
                                str(node_port), *map(str, files)], check=True, env=_env(),
                               capture_output=True)
            _force_complete(url, studies)
            first, last = _done(url, len(studies), 1800)
            cpu_s = sum(_cpu_s(proc.pid) for proc in procs) - cpu_start
            busy, total = (b - a for a, b in zip(machine_start, _machine(), strict=True))
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            pacs.kill()
            if workers:
                _delete_queues(prefix)
    seconds = (last - first).total_seconds()
    return {"runner": name, "studies": len(studies), "seconds": round(seconds, 1),
            "studies_per_hour": round(len(studies) / seconds * 3600, 1),
            "node_cpu_s": round(cpu_s, 1), "machine_busy": round(busy / total, 2)}


def _machine() -> tuple[int, int]:
    """(busy, all) jiffies of every CPU of the machine, from /proc/stat: how busy the whole
    machine was (the node, RabbitMQ, PostgreSQL, storescu, the PACS and anything else)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _delete_queues(prefix: str) -> None:
    from kombu import Connection

    names = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                           text=True, check=True).stdout.split()
    with Connection(BROKER) as conn:
        channel = conn.channel()
        for queue in names:
            if queue.startswith(prefix + "."):
                channel.queue_delete(queue)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--ct-slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runners", default=",".join(RUNNERS), help="which runners, in order")
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the working folders and logs")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dicom-node-throughput-"))
    try:
        studies = make_studies(root / "data", args.studies, args.ct_slices, args.size)
        key = root / "deid.key"
        subprocess.run([*DICOM_NODE, "keygen", "--out", str(key)], check=True, env=_env(),
                       capture_output=True)
        rows = []
        for name in args.runners.split(","):
            rows.append(run_one(name, RUNNERS[name], studies, root, key))
            print(f"{name:10} {rows[-1]['studies']} studies in {rows[-1]['seconds']:7.1f} s: "
                  f"{rows[-1]['studies_per_hour']:7.1f} studies/h; CPU of the node's "
                  f"processes {rows[-1]['node_cpu_s']:.1f} s; machine busy "
                  f"{rows[-1]['machine_busy']:.0%}", flush=True)
        by = {r["runner"]: r["studies_per_hour"] for r in rows}
        if "1 worker" in by and "2 workers" in by:
            print(f"two workers / one worker: {by['2 workers'] / by['1 worker']:.2f}x")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"cpus": os.cpu_count(), "runs": rows}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
