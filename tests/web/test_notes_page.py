"""The Study page's report versions in a real browser (Debian's Chromium): a clinician adds a
note holding markup through the form, the page lists version 2 with the note as text and its
PDF link, and offers "E-mail this report" (report e-mail configured); an operator sees no
panel. Screenshot: study-notes.png."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from playwright.sync_api import Browser, expect

from node.core.accounts import Role
from node.core.settings import DeliverySettings, ReportMail
from node.web.context import WebContext
from node.web.server import WebServer
from tests.conftest import free_port
from tests.web.console.conftest import log_in, shoot
from tests.web.spool_fixtures import spool_api
from tests.web.test_results import processed

NOTE = "Agreed with the AI: glioma. <script>alert(1)</script> Follow-up MR in 3 months."


def test_a_clinician_adds_a_note_and_sees_the_new_version(tmp_path: Path,
                                                           browser: Browser) -> None:
    delivery = DeliverySettings(report_mail=ReportMail(smtp_host="127.0.0.1",
                                                       sender="node@hospital.example.org"))
    with spool_api(tmp_path, delivery=delivery) as api:
        job, _ = processed(api)
        settings = api.ctx.settings
        ctx = WebContext.of(api.ledger, dataclasses.replace(settings, web=dataclasses.replace(
            settings.web, port=free_port())), {})
        server = WebServer(ctx)
        server.start()
        context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            log_in(page, server.url, Role.CLINICIAN.value)
            page.goto(f"{server.url}/studies/{job}")
            form = page.locator("form.note-form")
            form.get_by_label("Add a note to the report").fill(NOTE)
            with page.expect_navigation():
                form.get_by_role("button", name="Save the note as a new version").click()
            expect(page.locator("#versions .message.ok")).to_contain_text("Your note was saved")
            rows = page.locator("table.versions tbody tr")
            assert rows.count() == 2
            cells = rows.nth(1).locator("td").all_inner_texts()
            assert cells[0] == "2" and cells[1].startswith("clinician") and cells[3] == NOTE
            link = rows.nth(1).locator("a")
            assert link.inner_text() == "PDF, version 2"
            assert page.locator("table.versions script").count() == 0 and dialogs == []
            mail = page.locator("form.mail-form")
            expect(mail.get_by_label("E-mail this report (version 2) to")).to_be_visible()
            shoot(page, "study-notes")
            context.clear_cookies()
            log_in(page, server.url, Role.OPERATOR.value)
            page.goto(f"{server.url}/studies/{job}")
            assert page.locator("#versions").count() == 0
        finally:
            context.close()
            server.stop()
