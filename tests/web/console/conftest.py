"""The console in a real browser: Debian's Chromium driven by Playwright, against the node's
web server on a real socket (uvicorn in a thread over a prepared SQLite ledger, as ``serve``
runs it), or against a real ``dicom-node serve`` process (test_serve_console.py).

Nothing is downloaded: Playwright launches /usr/bin/chromium. Screenshots of the pages go to
/tmp/console-shots/ (CONSOLE_SHOTS overrides) for people to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from node.core import db
from node.core.accounts import Role
from node.core.keys import write_key_file
from node.core.ledger import Ledger
from node.core.settings import DeliverySettings, DicomDestination, Hl7Destination
from node.web.context import WebContext
from node.web.server import WebServer
from tests.conftest import free_port
from tests.web.conftest import PASSWORD, web_settings

SHOTS = Path(os.environ.get("CONSOLE_SHOTS", "/tmp/console-shots"))


@dataclass
class Console:
    ctx: WebContext
    url: str

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger


#: the hospital's PACS viewer, as web.pacs_viewer_url names it
PACS_VIEWER = "https://pacs.hospital.test/viewer?StudyInstanceUIDs={study_uid}"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    """The web app on a free port over an empty SQLite ledger, one user per role (named after
    the role), two destinations configured (a PACS and an EMR)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.create_schema(engine)
    settings = replace(web_settings(tmp_path, port=free_port(), max_failed_logins=3,
                                    pacs_viewer_url=PACS_VIEWER),
                       delivery=DeliverySettings(
                           dicom=(DicomDestination(name="pacs", ae_title="PACS",
                                                   host="127.0.0.1"),),
                           hl7=(Hl7Destination(name="emr", host="127.0.0.1", port=2575),)))
    write_key_file(tmp_path / "deid.key")  # the embedded default key file under var_dir
    ctx = WebContext.of(Ledger(engine), settings, {})
    for role in Role:
        ctx.accounts.add_user(role.value, role, PASSWORD)
    server = WebServer(ctx)
    server.start()
    try:
        yield Console(ctx, server.url)
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) in English, 1280 px wide."""
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    found = context.new_page()
    yield found
    context.close()


def log_in(page: Page, url: str, name: str, password: str = PASSWORD) -> None:
    page.goto(url + "/login")
    page.fill("#name", name)
    page.fill("#password", password)
    with page.expect_navigation():  # the login's answer has loaded before the test goes on
        page.click("form button[type=submit]")


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
