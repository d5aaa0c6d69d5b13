"""``dicom-node token add|list|revoke``: the real command line against a real ledger, and the
token it printed opens the API of that ledger (in-process) until it is revoked."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from node.core import db
from node.core.ledger import Ledger
from node.core.settings_load import load_settings
from node.web.app import create_app
from node.web.context import WebContext
from tests.conftest import DICOM_NODE, run, write_config


def _token(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*DICOM_NODE, "--config", str(config), "token", *args], cwd=config.parent)


def test_add_prints_the_token_once_list_hides_it_revoke_ends_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})
    made = _token(config, "add", "night-report", "--role", "clinician", "--expires-days", "90")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("dnt_") and "\n" not in secret  # alone on stdout
    assert "token night-report added (clinician, expires in 90 days)" in made.stderr
    listed = _token(config, "list")
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST", "USED"]
    assert line.split()[:3] == ["night-report", "clinician", "active"]
    assert secret not in listed.stdout + listed.stderr

    settings = load_settings(config)
    engine = db.make_engine(settings.database_url)
    with TestClient(create_app(WebContext.of(Ledger(engine), settings, {}))) as client:
        bearer = {"Authorization": f"Bearer {secret}"}
        me = client.get("/api/v1/session", headers=bearer).json()
        assert (me["name"], me["role"]) == ("token:night-report", "clinician")
        revoked = _token(config, "revoke", "night-report")
        assert revoked.returncode == 0 and revoked.stdout.strip() == "token night-report revoked"
        assert client.get("/api/v1/session", headers=bearer).status_code == 401
    audit = WebContext.of(Ledger(engine), settings, {}).accounts.audit_page(limit=10)
    assert [(a["action"], a["address"], a["detail"]) for a in audit
            if a["action"].startswith("token-")] == [
        ("token-revoke", "cli", "token:night-report"),
        ("token-add", "cli", "token:night-report (clinician)")]
    assert "revoked" in _token(config, "list").stdout
    engine.dispose()


def test_mistakes_are_one_line(tmp_path: Path, cli: Any) -> None:
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})
    assert cli("--config", str(config), "token", "add", "ok-name", "--role", "operator",
               cwd=tmp_path).returncode == 0
    cases = [
        (("add", "x"), "token add needs --role"),
        (("add", "bad name!", "--role", "operator"), "a token name is 1 to 48"),
        (("add", "y", "--role", "operator", "--expires-days", "0"), "at least 1"),
        (("add", "ok-name", "--role", "admin"), "exists"),
        (("revoke", "nobody"), "no active token named 'nobody'"),
        (("revoke",), "token revoke needs a NAME"),
    ]
    for args, message in cases:
        result = cli("--config", str(config), "token", *args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert result.stdout == ""
