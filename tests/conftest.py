"""Shared fixtures: real peers (dcmtk, the node as a real process, PostgreSQL), free ports.

Nothing here skips: a missing peer is a test failure, in CI and on a developer's machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# session fixtures: real model results (brain-mask, lung-ct, brain-tumor-demo) on real series
from tests.result_contexts import brain_ctx, colin27_series, lung_ctx, tumor_ctx  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
DICOM_NODE = [sys.executable, "-m", "node.commands"]
# pynetdicom installs its own storescu/echoscu into the venv: always use dcmtk's by full path.
DCMTK = Path("/usr/bin")
POSTGRES_ADMIN_URL = os.environ.get(
    "DICOM_NODE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def dcmtk(tool: str) -> str:
    path = DCMTK / tool
    if not path.exists():
        pytest.fail(f"dcmtk's {tool} is not installed at {path}: run .ci/run or apt-get install dcmtk")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config from {section: {key: value}}; lists of dicts become [[arrays]]."""
    lines: list[str] = []
    for section, values in sections.items():
        tables = {k: v for k, v in values.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        subtables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key not in tables and key not in subtables:
                lines.append(f"{key} = {toml_value(value)}")
        for key, sub in subtables.items():
            lines.append(f"[{section}.{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in sub.items())
        for key, items in tables.items():
            for item in items:
                lines.append(f"[[{section}.{key}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class NodeProcess:
    """The node, run as a real ``dicom-node serve`` process on a free port."""

    workdir: Path
    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    ae_title: str = "DICOM_NODE"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def var_dir(self) -> Path:
        return self.workdir / "var"

    @property
    def config(self) -> Path:
        return self.workdir / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    def write_config(self) -> None:
        sections: dict[str, Any] = {
            "node": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port,
                     "var_dir": str(self.var_dir)},
            "scp": {"min_free_disk_mb": 0},
            "completion": {"quiet_period_s": 3600.0, "max_wait_s": 7200.0,
                           "sweep_interval_s": 0.2},
            # the HTTP API's default port is fixed (8080): tests that use it give it a free one
            "web": {"enabled": False},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        write_config(self.config, sections)

    def start(self, wait: bool = True) -> NodeProcess:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*DICOM_NODE, "--config", str(self.config), "serve"],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=_env(),
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if self.echo(calling="READYCHECK").returncode == 0:
                return
            time.sleep(0.1)
        pytest.fail(f"node did not answer C-ECHO within {timeout} s:\n{self.log()}")

    def echo(self, *, calling: str = "ECHOSCU", called: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([dcmtk("echoscu"), "-aet", calling, "-aec", called or self.ae_title,
                    "127.0.0.1", str(self.port)])

    def storescu(self, *files: Path | str, options: tuple[str, ...] = (), calling: str = "STORESCU",
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        result = run([dcmtk("storescu"), *options, "-aet", calling, "-aec", self.ae_title,
                      "127.0.0.1", str(self.port), *map(str, files)])
        if check and result.returncode != 0:
            pytest.fail(f"storescu failed ({result.returncode}):\n{result.stderr}\n{self.log()}")
        return result

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*DICOM_NODE, "--config", str(self.config), *args], cwd=self.workdir)

    def status(self) -> list[dict[str, Any]]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def quarantine(self) -> list[dict[str, Any]]:
        result = self.cli("status", "--quarantine", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def wait_state(self, study_uid: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the study is in one of ``states``; return its status row."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for row in self.status():
                if row["study_instance_uid"] == study_uid:
                    last = row
                    if row["state"] in states:
                        return row
            time.sleep(0.2)
        pytest.fail(f"study never reached {states}; last seen {last}")

    def kill(self) -> None:
        """SIGKILL the node and every receiving process it started."""
        assert self.proc is not None
        children = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE__")}
    env["PYTHONPATH"] = str(REPO)
    env["TCP_NODELAY"] = "1"
    return env


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), **kwargs)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``dicom-node ARGS`` through the command line's ``main`` in this process: the same parsing,
    checks, messages and exit status as the real command, without a Python start-up per call
    (tests of many one-line mistakes). Runs in ``cwd`` with none of the node's variables from the
    environment and ``stdin`` as given. Each test module keeps at least one real process run."""
    from node.commands import main

    def call(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            for name in [n for n in os.environ if n.startswith("DICOM_NODE")]:
                patch.delenv(name)
            patch.setattr(sys, "stdin", io.StringIO(stdin))
            root = logging.getLogger()
            handlers, level = list(root.handlers), root.level
            marked = getattr(root, "_dicom_node", None)
            capsys.readouterr()
            try:
                status = main(list(args))
            finally:  # serve sets up logging on the captured stderr before it refuses
                root.handlers[:] = handlers
                root.setLevel(level)
                if marked is None and hasattr(root, "_dicom_node"):
                    delattr(root, "_dicom_node")
            out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out.out, out.err)

    return call


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    nodes: list[NodeProcess] = []

    def make(settings: dict[str, Any] | None = None, *, name: str = "node") -> NodeProcess:
        workdir = tmp_path / f"{name}-{len(nodes)}"
        workdir.mkdir()
        node = NodeProcess(workdir, settings or {})
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory: Any) -> NodeProcess:
    return node_factory().start()  # type: ignore[no-any-return]


@contextlib.contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database named ``<prefix>_<random>``, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with scratch_postgres("dicom_node_test") as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _peers_installed() -> None:
    for tool in ("storescu", "echoscu", "storescp"):
        dcmtk(tool)
    if shutil.which("dciodvfy") is None:
        pytest.fail("dicom3tools' dciodvfy is not installed: run .ci/run")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty ledger on SQLite and on the local PostgreSQL: same code, same behaviour."""
    from node.core import db
    from node.core.ledger import Ledger

    url = (f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = db.make_engine(url)
    db.metadata.drop_all(engine)
    db.create_schema(engine)
    yield Ledger(engine)
    db.metadata.drop_all(engine)
    engine.dispose()
