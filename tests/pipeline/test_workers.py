"""Workers on Celery with real peers: RabbitMQ as it runs on this machine, a scratch PostgreSQL
database, Orthanc as the PACS, an MLLP listener as the EMR, and the receiving node and its
workers as separate ``dicom-node`` processes, each in its own working folder, sharing var_dir.

Faults: a worker SIGKILLed inside an inference (its message is redelivered to the other
worker; nothing is lost, nothing is sent twice), and a broker restart while jobs wait in its
queues (durable messages survive; a publish that failed while it was down is re-enqueued by the
receiving node's sweep; receiver and worker reconnect). Each test uses its own queue prefix and
deletes its queues afterwards.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
from kombu import Connection

from node.hl7.listener import MllpListener
from tests.conftest import DICOM_NODE, _env, run, scratch_postgres, write_config
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.orthanc import orthanc  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
BROKER = "amqp://guest@127.0.0.1:5672//"
STAGES = ("deidentify", "infer", "build", "deliver")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def database() -> Iterator[str]:
    """A scratch PostgreSQL database of its own (the ledger the receiver and workers share)."""
    with scratch_postgres("dicom_node_workers") as url:
        yield url


@pytest.fixture
def prefix() -> Iterator[str]:
    """A queue prefix of this test's own; its queues are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    try:
        with Connection(BROKER, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # a missing broker fails the test, it never skips it
        pytest.fail(f"RabbitMQ is not reachable at {BROKER}: {exc}")
    yield name
    with Connection(BROKER, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in _queues(name):
            try:
                channel.queue_delete(queue)
            except Exception:  # already gone: a fresh channel for the next one
                channel = conn.channel()


def _queues(prefix: str) -> list[str]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + ".")]


def _queue_depths(prefix: str) -> dict[str, int]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines())
            if len(p) == 2 and p[0].startswith(prefix + ".")}


@dataclass
class Proc:
    """One ``dicom-node`` process in its own working folder, its log in that folder."""

    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    tmp: Path
    config: dict[str, Any]
    procs: list[Proc]

    def start(self, name: str, *args: str) -> Proc:
        workdir = self.tmp / name
        workdir.mkdir()
        config = write_config(workdir / "node.toml", self.config)
        with (workdir / "node.log").open("ab") as log:
            proc = subprocess.Popen([*DICOM_NODE, "--config", str(config), *args], cwd=workdir,
                                    stdout=log, stderr=subprocess.STDOUT, env=_env())
        p = Proc(workdir, proc)
        self.procs.append(p)
        return p

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*DICOM_NODE, "--config", str(self.procs[0].workdir / "node.toml"), *args])

    def store(self, files: list[Path]) -> None:
        node = self.config["node"]
        result = run(["/usr/bin/storescu", "-aec", node["ae_title"], "127.0.0.1",
                      str(node["port"]), *map(str, files)])
        assert result.returncode == 0, result.stderr

    def status(self) -> dict[str, dict[str, Any]]:
        import json

        result = self.cli("status", "--json", "--limit", "100")
        assert result.returncode == 0, result.stderr
        return {r["study_instance_uid"]: r for r in json.loads(result.stdout)}

    def outbox(self) -> list[dict[str, Any]]:
        import json

        result = self.cli("status", "--outbox", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def wait(self, uids: list[str], states: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = self.status()
            if all(rows.get(u, {}).get("state") in states for u in uids):
                return rows
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.workdir.name}\n{p.log()[-3000:]}" for p in self.procs)
        pytest.fail(f"not all studies reached {states}: "
                    f"{[(r['id'], r['state']) for r in rows.values()]}\n{logs}")


@pytest.fixture
def cluster(tmp_path: Path, database: str, prefix: str, orthanc: Any) -> Iterator[Any]:  # noqa: F811
    """Settings for a receiver and workers (one shared var_dir, key and ledger); ``make``
    adds the EMR's port and starts nothing."""
    shared = tmp_path / "shared"
    key = tmp_path / "deid.key"
    assert run([*DICOM_NODE, "keygen", "--out", str(key)]).returncode == 0
    clusters: list[Cluster] = []

    def make(emr_port: int, **workers: Any) -> Cluster:
        from tests.conftest import free_port

        config = {
            "node": {"ae_title": "DICOM_NODE", "host": "127.0.0.1", "port": free_port(),
                     "var_dir": str(shared), "database_url": database},
            "scp": {"min_free_disk_mb": 0},
            "completion": {"quiet_period_s": 1.0, "sweep_interval_s": 0.2},
            "deid": {"key_file": str(key)},
            "models": {"dir": str(REPO / "models"), "enabled": ["lung-ct"], "device": "cpu"},
            "delivery": {"poll_interval_s": 0.2, "timeout_s": 10.0, "retry_base_s": 0.5,
                         "retry_cap_s": 2.0, "max_attempts": 50,
                         "dicom": [{"name": "pacs", "ae_title": orthanc.aet,
                                    "host": "127.0.0.1", "port": orthanc.dicom_port}],
                         "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr_port}]},
            "workers": {"broker_url": BROKER, "queue_prefix": prefix,
                        "requeue_interval_s": 0.5, **workers},
            "web": {"enabled": False},
        }
        c = Cluster(tmp_path, config, [])
        clusters.append(c)
        return c

    yield make
    procs = [p for c in clusters for p in reversed(c.procs)]
    for p in procs:  # all asked to stop at once: their warm shutdowns overlap
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        p.stop()


def _studies(tmp_path: Path, count: int, *, large_first: bool = False
             ) -> list[tuple[str, list[Path]]]:
    """``count`` phantom chest CTs; with ``large_first`` the first is large enough that the
    model predicts for about two seconds (a kill lands inside it), the others small."""
    small = chest_phantom(slices=40, size=160).volume
    out = []
    for i in range(count):
        folder = tmp_path / f"study{i}"
        folder.mkdir(parents=True)
        volume = chest_phantom(slices=120, size=512).volume if large_first and i == 0 else small
        files = write_ct_series(volume, folder)
        out.append((str(pydicom.dcmread(files[0]).StudyInstanceUID), files))
    return out


def _wait_log(proc: Proc, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, proc.log())
        if found:
            return found
        assert proc.proc.poll() is None, proc.log()
        time.sleep(0.02)
    pytest.fail(f"{pattern!r} never appeared in {proc.workdir.name}'s log:\n{proc.log()}")


def _check_delivered_once(c: Cluster, orthanc: Any, emr: MllpListener, studies: int) -> None:  # noqa: F811
    """Every result object in Orthanc, each sent once; one ORU per study, once each."""
    items = c.outbox()
    dicom = [i for i in items if i["kind"] == "dicom"]
    assert dicom and all(i["state"] == "DELIVERED" for i in items), items
    assert all(i["attempts"] == 1 for i in dicom), [i for i in dicom if i["attempts"] != 1]
    in_orthanc = sorted(orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
                        for i in orthanc.get("/instances"))
    assert in_orthanc == sorted(i["uid"] for i in dicom)
    assert len({i["uid"] for i in dicom}) == len(dicom)
    control_ids = [str(hl7.parse(m.replace("\n", "\r")).segment("MSH")[10])
                   for m in emr.received]
    assert len(control_ids) == studies == len(set(control_ids)), control_ids


def test_a_worker_killed_inside_an_inference_loses_and_duplicates_nothing(
    cluster: Any, orthanc: Any, tmp_path: Path,  # noqa: F811
) -> None:
    studies = _studies(tmp_path / "data", 4, large_first=True)
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=tmp_path / "oru.txt") as emr:
        c = cluster(emr.port, requeue_after_s=60.0)
        receiver = c.start("receiver", "serve", "--no-pipeline")
        _wait_log(receiver, r"stages on workers", 60)
        first = c.start("worker-1", "worker", "--stages", ",".join(STAGES))
        second = c.start("worker-2", "worker", "--stages", ",".join(STAGES))
        for p in (first, second):
            _wait_log(p, r"ready\.|worker: queues", 90)
        c.store(studies[0][1])
        for _, files in studies[1:]:
            c.store(files)
        # the large study's inference, on whichever worker took it: SIGKILL that worker
        job = _wait_log(receiver, r"study #(\d+): receiving", 30).group(1)  # stored first
        started = rf"job #{job}: infer task started"
        deadline = time.monotonic() + 90
        victim = None
        while victim is None and time.monotonic() < deadline:
            victim = next((p for p in (first, second) if re.search(started, p.log())), None)
            time.sleep(0.01)
        assert victim is not None, first.log() + second.log()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        # it was inside the inference: no result of that job's model there, none committed
        assert not re.search(rf"study #{job}: lung-ct ", victim.log()), victim.log()
        assert not re.search(rf"study #{job}: DEIDENTIFIED -> ", victim.log())
        rows = c.wait([uid for uid, _ in studies], {"DONE", "FAILED"}, timeout=240)
        assert {r["state"] for r in rows.values()} == {"DONE"}, rows
        survivor = second if victim is first else first
        assert re.search(rf"study #{job}: \w+ -> \w+ \(models run: lung-ct", survivor.log())
        _check_delivered_once(c, orthanc, emr, len(studies))
    assert "Traceback" not in receiver.log() + survivor.log()


def test_a_broker_restart_while_jobs_wait_loses_nothing(
    cluster: Any, orthanc: Any, tmp_path: Path,  # noqa: F811
) -> None:
    (one, files_one), (two, files_two) = _studies(tmp_path / "data", 2)
    with MllpListener(host="127.0.0.1", port=0, mode="AA", out=tmp_path / "oru.txt") as emr:
        c = cluster(emr.port, requeue_after_s=10.0)
        receiver = c.start("receiver", "serve", "--no-pipeline")
        _wait_log(receiver, r"stages on workers", 60)
        # no inference worker yet: study one waits in the inference queue
        worker = c.start("worker", "worker", "--stages", "deidentify,build,deliver")
        _wait_log(worker, r"worker: queues", 90)
        c.store(files_one)
        c.wait([one], {"DEIDENTIFIED"}, timeout=60)
        time.sleep(1.0)
        infer_queue = f"{c.config['workers']['queue_prefix']}.infer.lung-ct"
        assert _queue_depths(c.config["workers"]["queue_prefix"]).get(infer_queue, 0) >= 1
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
        try:
            # completed while the broker is down: its publish fails, the sweep re-enqueues it
            c.store(files_two)
            c.wait([two], {"COMPLETE"}, timeout=60)
            _wait_log(receiver, r"could not enqueue deidentify", 30)
        finally:
            subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
        # the durable message of study one survived the restart
        assert _queue_depths(c.config["workers"]["queue_prefix"]).get(infer_queue, 0) >= 1
        infer = c.start("infer-worker", "worker", "--stages", "infer")
        rows = c.wait([one, two], {"DONE", "FAILED"}, timeout=180)
        assert {r["state"] for r in rows.values()} == {"DONE"}, rows
        _check_delivered_once(c, orthanc, emr, 2)
    assert worker.proc.poll() is None  # it reconnected, it did not die
    assert "Connection to broker lost" in worker.log()
    assert "Traceback" not in receiver.log() + worker.log() + infer.log()


def test_worker_settings_and_arguments_are_checked_in_one_line_each(tmp_path: Path,
                                                                   cli: Any) -> None:
    from node.core.settings import Settings, WorkersSettings
    from node.core.settings_check import check

    bad = Settings(workers=WorkersSettings(enabled=True, broker_url="http://rabbit",
                                           queue_prefix="a b", requeue_after_s=0))
    assert sorted(p for p in check(bad) if p.startswith("workers.")) == [
        "workers.broker_url: expected amqp://... (RabbitMQ) or redis://...",
        "workers.enabled: workers need a ledger they all reach: set node.database_url to a "
        "PostgreSQL database",
        "workers.queue_prefix: letters, digits, '.', '_' and '-' only (1-100 characters)",
        "workers.requeue_after_s: must be greater than 0 seconds",
    ]
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})
    for args, problem in [
        (["worker", "--stages", "deidentify,complete"], "--stages: expected some of "
         "deidentify,infer,build,deliver, got 'deidentify,complete'"),
        (["worker"], "--stages infer: no model to run (models.enabled or --models)"),
        (["worker", "--stages", "deliver"], "node.database_url: a worker needs the ledger the receiving node uses, "
         "on PostgreSQL"),
        (["serve", "--no-pipeline"], "workers.enabled: workers need a ledger they all reach"),
    ]:
        result = cli("--config", str(config), *args, cwd=tmp_path)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"config error: {problem}"), result.stderr
        assert "Traceback" not in result.stderr
