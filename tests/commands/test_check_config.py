"""Settings that pass the check must not fail later: check-config finds what serve refuses.

Each case runs the command line's ``main`` twice, ``check-config`` and ``serve``, on the same
settings: both exit with status 2 and one ``config error:`` line per problem on stderr, never a
traceback. The cases call ``main`` in this process (the command starts in no time); one test runs
both as real processes with every problem at once. ``check-config --connect`` also tries the database and the destinations: against
peers that are down it names each one, against real ones (PostgreSQL, dcmtk's storescp, an MLLP
listener) it answers OK.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node.core.keys import write_key_file
from node.hl7.listener import MllpListener
from tests.conftest import POSTGRES_ADMIN_URL, dcmtk, free_port, write_config

REPO = Path(__file__).resolve().parents[2]
PEM_GARBAGE = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def _cli(config: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "node.commands", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def _settings(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"node": {"var_dir": str(tmp_path / "var"), "host": "127.0.0.1",
                                     "port": free_port()}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def _broken_model(tmp_path: Path) -> dict[str, Any]:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "lung-ct", models / "lung-ct")
    manifest = models / "lung-ct" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('loader = "none"', 'loader = "torchscript"'))
    return {"models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"}}


def _file_for_var(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "a-file").write_text("not a folder\n")
    return {"node": {"var_dir": str(tmp_path / "a-file" / "var")}}


def _var_spool_is_a_file(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "spool").write_text("")
    return {}


def _bad_tls(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "cert.pem").write_text(PEM_GARBAGE)
    return {"scp": {"tls": {"enabled": True, "certificate": str(tmp_path / "cert.pem"),
                            "private_key": str(tmp_path / "cert.pem"),
                            "require_client_certificate": False}}}


def _bad_key(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "deid.key").write_text("this is no key\n")
    return {"deid": {"key_file": str(tmp_path / "deid.key")}}


#: settings that load but that serve refuses, and the line that says why
CASES: dict[str, tuple[Any, str]] = {
    "broken model manifest": (
        _broken_model,
        "models/lung-ct/manifest.toml [weights]: file and sha256 are required for loader "
        "torchscript"),
    "model folder missing": (
        lambda t: {"models": {"dir": str(t), "enabled": ["no-such-model"]}},
        "models.enabled: no model folder"),
    "database URL of no known database": (
        lambda t: {"node": {"database_url": "notadb://"}},
        "node.database_url: 'notadb' is not a supported database"),
    "database driver not installed": (
        lambda t: {"node": {"database_url": "postgresql+pg8000://u@127.0.0.1/db"}},
        "node.database_url: the driver 'pg8000' is not installed"),
    "SQLite file in a missing folder": (
        lambda t: {"node": {"database_url": f"sqlite:///{t}/nowhere/ledger.sqlite3"}},
        "node.database_url: the SQLite file's folder"),
    "var_dir below a regular file": (
        _file_for_var, "is a file, not a folder"),
    "a file where var_dir's spool folder goes": (
        _var_spool_is_a_file, "var/spool is a file, not a folder"),
    "TLS certificate that does not load": (
        _bad_tls, "scp.tls: cannot load certificate or key"),
    "de-identification key that is no key": (
        _bad_key, "deid.key_file: not a base64 key"),
    "listening address not on this machine": (
        lambda t: {"node": {"host": "192.0.2.1"}},  # TEST-NET-1: never a local address
        "node.host/node.port: cannot listen on 192.0.2.1"),
    "password variable not set": (
        lambda t: {"delivery": {"email": [{"name": "mail", "smtp_host": "127.0.0.1",
                                           "sender": "a@b.org", "recipients": ["c@d.org"],
                                           "password_env": "DICOM_NODE_TEST_UNSET"}]}},
        "delivery.email[0].password_env: the environment variable DICOM_NODE_TEST_UNSET"),
    "metrics token variable not set": (
        lambda t: {"web": {"enabled": True, "port": free_port(),
                           "metrics_token_env": "DICOM_NODE_TEST_UNSET"}},
        "web.metrics_token_env: the environment variable DICOM_NODE_TEST_UNSET is not set"),
    "audit repository over TLS without a CA": (
        lambda t: {"audit": {"enabled": True, "repository": "127.0.0.1:6514",
                             "transport": "tls"}},
        'audit.ca_file: required with transport = "tls"'),
    "audit repository that is no address": (
        lambda t: {"audit": {"enabled": True, "repository": "nohostport"}},
        "audit.repository: expected host:port"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_check_config_finds_what_serve_refuses(case: str, tmp_path: Path, cli: Any) -> None:
    make, expected = CASES[case]
    config = write_config(tmp_path / "node.toml", _settings(tmp_path, **make(tmp_path)))
    for command in ("check-config", "serve"):
        out = cli("--config", str(config), command, cwd=tmp_path)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout, (command, out.stderr)
        lines = out.stderr.splitlines()
        assert lines and all(line.startswith("config error: ") for line in lines), lines
        assert len(lines) == 1 and expected in lines[0], (command, lines)
    assert not list((tmp_path / "var").glob("*.lock")), "serve started before it refused"


def test_every_problem_at_once_each_on_its_line(tmp_path: Path) -> None:
    """The three problems a new user met, in one file: three lines, nothing started."""
    settings = _settings(tmp_path, **_file_for_var(tmp_path))
    settings["node"]["database_url"] = "notadb://"
    settings.update(_broken_model(tmp_path))
    config = write_config(tmp_path / "node.toml", settings)
    for command in ("check-config", "serve"):
        out = _cli(config, command, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert [line.split(":")[1].strip() for line in out.stderr.splitlines()] == [
            "node.var_dir", "node.database_url", "models/lung-ct/manifest.toml [weights]"]


def test_good_settings_are_ok(tmp_path: Path) -> None:
    key = tmp_path / "deid.key"
    write_key_file(key)
    config = write_config(tmp_path / "node.toml", _settings(
        tmp_path, deid={"key_file": str(key)},
        models={"dir": str(REPO / "models"), "enabled": ["lung-ct"], "device": "cpu"}))
    out = _cli(config, "check-config", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith(f"config OK ({config})") and "1 models loaded" in out.stdout
    assert not (tmp_path / "var").exists(), "check-config created var_dir"


@pytest.mark.integration
@pytest.mark.slow
def test_connect_names_each_peer_that_does_not_answer(tmp_path: Path) -> None:
    down = free_port()
    config = write_config(tmp_path / "node.toml", _settings(
        tmp_path,
        node={"database_url": f"postgresql+psycopg2://postgres@127.0.0.1:{down}/x"},
        delivery={"timeout_s": 5.0,
                  "dicom": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                             "port": down}],
                  "hl7": [{"name": "emr", "host": "127.0.0.1", "port": down}]}))
    assert _cli(config, "check-config", cwd=tmp_path).returncode == 0  # no connecting
    out = _cli(config, "check-config", "--connect", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("config error: node.database_url: cannot connect (")
    assert lines[1].startswith("config error: delivery.dicom[0] (pacs): PACS at 127.0.0.1:")
    assert lines[2].startswith(f"config error: delivery.hl7[0] (emr): no connection to "
                               f"127.0.0.1:{down}")


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on port {port}")


@pytest.mark.integration
@pytest.mark.slow
def test_connect_with_real_peers_is_ok(tmp_path: Path) -> None:
    pacs_port = free_port()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "PACS", str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(pacs_port)
        with MllpListener(host="127.0.0.1", port=0, mode="AA",
                          out=tmp_path / "oru.txt") as emr:
            config = write_config(tmp_path / "node.toml", _settings(
                tmp_path, node={"database_url": POSTGRES_ADMIN_URL},
                delivery={"dicom": [{"name": "pacs", "ae_title": "PACS",
                                     "host": "127.0.0.1", "port": pacs_port}],
                          "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr.port}]}))
            out = _cli(config, "check-config", "--connect", cwd=tmp_path)
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    assert out.returncode == 0, out.stderr
    assert "(database and destinations answered)" in out.stdout


def test_worker_help_names_every_worker_stage() -> None:
    from node.commands import worker
    from node.pipeline.celery_runner import WORKER_STAGES

    assert ",".join(s.value for s in WORKER_STAGES) == worker._NAMES
