"""``dicom-node user add|passwd|disable``: the real command line against a real ledger.

The password comes on stdin (never argv); mistakes are one line and exit status 1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from node.core import db
from node.core.accounts import Accounts, LoginRefused
from node.core.settings_load import load_settings
from tests.conftest import DICOM_NODE, run, write_config


def _user(config: Path, *args: str, password: str = "") -> subprocess.CompletedProcess[str]:
    return run([*DICOM_NODE, "--config", str(config), "user", *args], cwd=config.parent,
               input=password + "\n")


def _accounts(config: Path) -> Accounts:
    return Accounts(db.make_engine(load_settings(config).database_url))


def test_add_change_and_disable_a_user(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})
    made = _user(config, "add", "ann", "--role", "radiologist", password="first password!")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "user ann added (radiologist)"
    accounts = _accounts(config)
    opened = accounts.login("ann", "first password!", "127.0.0.1")
    assert opened.session.role == "radiologist"
    changed = _user(config, "passwd", "ann", "--role", "clinician", password="second password")
    assert changed.returncode == 0, changed.stderr
    assert accounts.session(opened.token) is None  # a new password ends the sessions
    assert accounts.login("ann", "second password", "x").session.role == "clinician"
    assert _user(config, "disable", "ann").returncode == 0
    try:
        accounts.login("ann", "second password", "x")
        raise AssertionError("a disabled user logged in")
    except LoginRefused:
        pass
    row = db.reader(accounts.engine).execute(db.users.select()).one()
    assert row.password_hash.startswith("$argon2id$") and "second" not in row.password_hash


def test_mistakes_are_one_line(tmp_path: Path, cli: Any) -> None:
    config = write_config(tmp_path / "node.toml", {"node": {"var_dir": str(tmp_path / "var")}})

    def _user(*args: str, password: str) -> subprocess.CompletedProcess[str]:
        return cli("--config", str(config), "user", *args, cwd=tmp_path, stdin=password + "\n")

    cases = [
        (("add", "bob"), "long enough password", "user add needs --role"),
        (("add", "bob", "--role", "operator"), "short", "at least 12 characters"),
        (("passwd", "nobody"), "long enough password", "no user 'nobody'"),
    ]
    for args, password, message in cases:
        result = _user(*args, password=password)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert password not in result.stderr
    assert _user("add", "bob", "--role", "operator", password="long enough password").returncode == 0
    again = _user("add", "bob", "--role", "admin", password="long enough password")
    assert again.returncode == 1 and "exists already" in again.stderr
