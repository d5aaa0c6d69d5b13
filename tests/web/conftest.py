"""The web API in-process on a real SQLite ledger: one user per role, jobs in chosen states."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, sync_playwright

from node.core import db
from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.ledger import Ledger, ReceivedInstance
from node.core.settings import NodeSettings, ScpSettings, Settings, WebSettings
from node.web.app import create_app
from node.web.context import WebContext

PASSWORD = "correct horse battery"  # a test account's


@dataclass
class Api:
    ctx: WebContext
    client: TestClient

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    def login(self, role: Role | str, password: str = PASSWORD) -> str:
        """Log in as the role's user; return the session's CSRF token."""
        r = self.client.post("/api/v1/session", json={"name": str(role), "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["csrf_token"])


def make_job(ledger: Ledger, uid: str, *, series: int = 1, per_series: int = 1,
             to: tuple[JobState, ...] = (JobState.COMPLETE, JobState.FAILED)) -> int:
    """A job with ``series`` x ``per_series`` instances, moved through ``to``."""
    for s in range(series):
        for i in range(per_series):
            ledger.record_instance(ReceivedInstance(
                sop_instance_uid=f"{uid}.{s}.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=uid, series_instance_uid=f"{uid}.{s}",
                transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", matched_rules=(),
                size_bytes=1, calling_ae_title="CT1"), f"x/{uid}.{s}.{i}", lambda: None)
    job = ledger.study(uid).id
    for state in to:
        ledger.transition(job, state, reason=f"test: {state}")
    return job


def web_settings(var: Path, **web: Any) -> Settings:
    return Settings(node=NodeSettings(var_dir=str(var)), scp=ScpSettings(min_free_disk_mb=0),
                    web=WebSettings(**web))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(engine)
    ctx = WebContext.of(Ledger(engine), web_settings(tmp_path, max_failed_logins=3), {})
    for role in Role:
        ctx.accounts.add_user(role.value, role, PASSWORD)
    with TestClient(create_app(ctx)) as client:
        yield Api(ctx, client)
    engine.dispose()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, one for the whole run: Playwright's sync API allows one at a time, so
    the console's and the upload page's tests share this definition (a second copy of the
    fixture in another module would start a second one and fail)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield found
        found.close()
