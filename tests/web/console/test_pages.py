"""The console's pages in Chromium, against the web server on a real socket over a prepared
ledger: each role sees what it may, the Overview's figures are the ledger's, a retry from the
Failures page queues the job again and is audited, peer text renders as text, German shows
for a German browser, lockout is said plainly. Screenshots of every page are saved."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest
from babel.dates import format_timedelta
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import func, select

from node.core import db
from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.outbox import ItemState
from node.web import statistics
from tests.web.console import scene
from tests.web.console.conftest import PACS_VIEWER, Console, log_in, shoot


@pytest.fixture
def world(console: Console, tmp_path: Path) -> scene.Scene:
    return scene.build(console.ledger, console.ctx.outbox, console.ctx.settings,
                       tmp_path / "files")


def _duration(seconds: float) -> str:
    return format_timedelta(timedelta(seconds=seconds), threshold=1.5, locale="en")


def _tile(page: Page, label: str) -> str:
    return page.locator(".tile", has_text=label).locator(".figure").inner_text()


@pytest.mark.parametrize("role", list(Role))
def test_each_role_sees_what_it_may_and_no_more(
        console: Console, world: scene.Scene, page: Page, role: Role) -> None:
    log_in(page, console.url, role.value)
    expect(page.locator("h1")).to_have_text("Overview")
    operations = role in (Role.ADMIN, Role.OPERATOR)
    nav = page.locator("header nav a").all_inner_texts()
    assert nav[:2] == ["Overview", "Studies"] and ("Failures" in nav) == operations
    page.goto(f"{console.url}/studies/{world.failed[0]}")
    expect(page.locator("h1")).to_contain_text(f"Job #{world.failed[0]}")
    assert page.get_by_role("button", name="Retry").count() == (1 if operations else 0)
    page.goto(f"{console.url}/failures")
    if operations:
        expect(page.locator("h1")).to_have_text("Failures")
    else:
        expect(page.locator("h1")).to_have_text("Not allowed")
        assert page.get_by_text("Your role may not open this page").is_visible()
    shoot(page, f"failures-as-{role.value}")
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("h1")).to_have_text("Log in")
    page.goto(console.url + "/studies")
    assert page.url.endswith("/login?next=/studies")  # the session is over


def test_the_overview_shows_the_ledgers_numbers(
        console: Console, world: scene.Scene, page: Page) -> None:
    log_in(page, console.url, "operator")
    shoot(page, "overview")
    s, o = db.studies.c, db.outbox.c
    with db.reader(console.ledger.engine) as conn:
        per_state = dict(conn.execute(select(s.state, func.count()).group_by(s.state)).all())
        failed_items = conn.execute(select(func.count()).where(
            o.state == ItemState.FAILED.value)).scalar_one()
    shown = {}
    for item in page.locator(".states li").all():
        code = item.locator("a").get_attribute("href").split("=")[1]  # type: ignore[union-attr]
        shown[code] = int(item.locator(".count").inner_text())
    assert shown == {state.value: per_state.get(state.value, 0) for state in JobState}
    assert _tile(page, "Failed jobs") == str(per_state["FAILED"]) == "2"
    assert _tile(page, "Failed deliveries") == str(failed_items) == "2"
    assert _tile(page, "Quarantined objects") == str(console.ledger.quarantine_count()) == "3"
    # received per (UTC) day, as the statistics count them: here from every study's receipt
    today = datetime.now(UTC).date()
    ages = [(today - row.received_at.date()).days for row in console.ledger.studies()]
    expected = {"Today": sum(a == 0 for a in ages), "Last 7 days": sum(a < 7 for a in ages),
                "Last 30 days": sum(a < 30 for a in ages)}
    assert expected["Last 30 days"] == 28  # all but the study of 40 days ago
    figures = dict(zip(page.locator(".figures dt").all_inner_texts(),
                       page.locator(".figures dd").all_inner_texts(), strict=True))
    times = statistics.summarize(console.ledger.engine, datetime.now(UTC).replace(tzinfo=None))
    to_report = times["completion_to_reported_s"]
    assert to_report["jobs"] == 24  # each finished study was reported once
    assert figures == {**{k: str(v) for k, v in expected.items()},
                       "Completion to report, median": _duration(to_report["median"]),
                       "95th percentile": _duration(to_report["p95"])}
    bars = page.locator("svg.chart rect.bar")
    assert bars.count() == 30
    per_bar = [int(t.split(": ")[1]) for t in bars.locator("title").all_text_contents()]
    assert per_bar == [sum(a == 29 - k for a in ages) for k in range(30)]
    # destinations: the PACS took everything; the EMR's last error is the AR, as text
    pacs = page.locator("tr", has=page.locator("th", has_text="pacs"))
    emr = page.locator("tr", has=page.locator("th", has_text="emr"))
    assert "none" in pacs.locator("td").nth(1).inner_text()
    assert scene.AR_ERROR in emr.locator("td").nth(1).inner_text()
    assert page.locator("b", has_text="bold").count() == 0  # the peer's markup is text
    assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "30"


def test_a_failed_job_retried_from_the_failures_page_is_queued_again_and_audited(
        console: Console, world: scene.Scene, page: Page) -> None:
    log_in(page, console.url, "operator")
    page.goto(console.url + "/failures")
    shoot(page, "failures")
    rows = page.locator("section", has_text="Failed deliveries").locator("tbody tr")
    assert rows.count() == 2 and scene.AR_ERROR in rows.first.inner_text()
    job = world.failed[0]
    row = page.locator("tr", has=page.locator(f"a[href='/studies/{job}']")).first
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(".message.ok")).to_have_text("The job was queued again.")
    assert console.ledger.study_by_id(job).state == JobState.BUILT
    assert console.ledger.study_by_id(world.failed[1]).state == JobState.FAILED
    (item,) = [i for i in console.ctx.outbox.items(job) if i.kind == "hl7"]
    assert (item.state, item.attempts) == (ItemState.PENDING, 0)
    (record,) = [a for a in console.ctx.accounts.audit_page(limit=50) if a["action"] == "retry"]
    assert (record["user"], record["role"], record["job"], record["outcome"]) == \
        ("operator", "operator", job, "ok")
    page.get_by_role("button", name="Retry all").click()
    expect(page.locator(".message.ok")).to_have_text("1 job was queued again.")
    assert console.ledger.study_by_id(world.failed[1]).state == JobState.BUILT
    expect(page.get_by_text("No failed jobs.")).to_be_visible()
    shoot(page, "failures-after-retry")


def test_a_series_description_holding_a_script_tag_renders_as_text(
        console: Console, world: scene.Scene, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, console.url, "radiologist")
    page.goto(f"{console.url}/studies/{world.script_job}")
    shoot(page, "study")
    cell = page.locator("td.description")
    expect(cell).to_have_text(scene.SCRIPT)
    assert page.locator("main script").count() == 0
    row = page.locator("section", has_text="Series").locator("tbody tr")
    assert row.locator("td").all_inner_texts()[:4] == ["7", scene.SCRIPT, "CT", "3"]
    assert dialogs == []


def test_a_german_browser_gets_the_overview_in_german(
        console: Console, world: scene.Scene, browser: Browser) -> None:
    context = browser.new_context(locale="de-DE", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, console.url, "admin")
    expect(page.locator("h1")).to_have_text("Übersicht")
    assert page.locator("html").get_attribute("lang") == "de"
    nav = page.locator("header nav a").all_inner_texts()
    assert nav[:2] == ["Übersicht", "Studien"] and "Fehler" in nav
    assert page.get_by_text("Fehlgeschlagene Aufträge").is_visible()
    assert page.get_by_role("button", name="Abmelden").is_visible()
    # dates in German: "7. Dez." style day labels under the chart
    labels = page.locator("svg.chart text").all_text_contents()
    assert any(re.fullmatch(r"\d{1,2}\. \w+\.?", label) for label in labels), labels
    shoot(page, "overview-de")
    page.goto(f"{console.url}/studies/{world.failed[0]}")
    expect(page.locator("h1")).to_contain_text("Auftrag #")
    expect(page.locator("h1 .badge")).to_have_text("Fehlgeschlagen")
    shoot(page, "study-de")
    context.close()


def test_login_says_plainly_when_the_account_is_locked(console: Console, page: Page) -> None:
    for _ in range(3):
        log_in(page, console.url, "clinician", "wrong password")
        expect(page.locator(".message.error")).to_have_text("Wrong user name or password.")
    shoot(page, "login-wrong")
    log_in(page, console.url, "clinician")  # the right password, while locked
    expect(page.locator(".message.error")).to_contain_text("this account is locked")
    shoot(page, "login-locked")
    assert page.url.endswith("/login")


def test_studies_list_filters_and_pages(console: Console, world: scene.Scene,
                                        page: Page) -> None:
    log_in(page, console.url, "operator")
    page.goto(console.url + "/studies")
    shoot(page, "studies")
    rows = page.locator("table.list tbody tr")
    assert rows.count() == 29  # every study; one page (50 rows)
    first = rows.first.locator("a").inner_text()
    assert first == f"#{world.script_job}"  # newest first
    page.select_option("#state", "FAILED")
    page.get_by_role("button", name="Filter").click()
    assert sorted(rows.locator("a").all_inner_texts()) == sorted(f"#{j}" for j in world.failed)
    page.goto(console.url + "/studies?state=DONE&limit=5")
    page.goto(console.url + "/studies?from=2000-01-01&to=2000-01-31")
    expect(page.get_by_text("No studies match these filters.")).to_be_visible()
    rows.first.page.goto(f"{console.url}/studies?state=DONE")
    rows.first.locator("a").click()
    expect(page.locator("h1 .badge")).to_have_text("Done")
    shoot(page, "study-done")


def test_pages_carry_their_security_headers_and_posts_need_the_form_token(
        console: Console, world: scene.Scene) -> None:
    with httpx.Client(base_url=console.url, follow_redirects=False) as client:
        assert client.get("/").status_code == 303
        login = client.get("/login")
        csp = login.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert login.headers["x-frame-options"] == "DENY"
        # the login form without its token (another site's form) opens nothing
        r = client.post("/login", data={"name": "operator", "password": "correct horse battery",
                                        "form_token": "forged"})
        assert r.status_code == 403 and "dicom_node_session" not in r.headers.get("set-cookie", "")
        token = re.search(r'name="form_token" value="([^"]+)"', r.text)[1]  # type: ignore[index]
        r = client.post("/login", data={"name": "operator", "password": "correct horse battery",
                                        "form_token": token})
        assert r.status_code == 303
        job = world.failed[0]
        for data in ({}, {"csrf_token": "forged"}):
            r = client.post(f"/studies/{job}/retry", data=data)
            assert r.status_code == 403 and "Not allowed" in r.text
        assert console.ledger.study_by_id(job).state == JobState.FAILED
        assert client.get("/static/console.css").status_code == 200
        r = client.get("/login?next=//evil.example/")  # logged in: straight on, but only to
        assert r.headers["location"] == "/"  # a path on this site
        client.cookies.clear()
        assert 'name="next" value="/"' in client.get("/login?next=https://evil.example/").text


def test_the_patient_shows_to_radiologists_audited_and_never_to_operators(
        console: Console, world: scene.Scene, browser: Browser) -> None:
    name = str(pydicom.dcmread(console.ctx.settings.spool_path / "real/0.dcm").PatientName)
    for role, sees in ((Role.RADIOLOGIST, True), (Role.OPERATOR, False)):
        context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
        page = context.new_page()
        log_in(page, console.url, role.value)
        page.goto(f"{console.url}/studies/{world.script_job}")
        panel = page.locator("section", has=page.locator("h2", has_text="Patient"))
        assert panel.count() == (1 if sees else 0)
        assert (name in page.content()) is sees
        if sees:
            shoot(page, "study-radiologist")
        page.goto(f"{console.url}/studies")
        assert name not in page.content()  # a list never shows identity
        context.close()
    views = [a for a in console.ctx.accounts.audit_page(limit=100)
             if a["action"] == "view-identity"]
    assert [(v["user"], v["job"]) for v in views] == [("radiologist", world.script_job)]


def test_results_show_on_the_study_and_filter_the_list(
        console: Console, world: scene.Scene, page: Page) -> None:
    job = world.done[0]
    with console.ledger.engine.begin() as conn:
        conn.execute(db.results.insert().values(
            study_id=job, generation=1, model="lung-ct", model_version="2.1.0",
            triage="URGENT", finding="nodule 14 mm, right upper lobe", current=True,
            created_at=datetime.now(UTC).replace(tzinfo=None), folder="results/x"))
    report = console.ctx.settings.var_path / "outbox" / "x" / "report.pdf"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"%PDF-1.4 a report\n")
    log_in(page, console.url, "clinician")
    page.goto(f"{console.url}/studies/{job}")
    run = page.locator("section", has=page.locator("h2", has_text="Results")).locator("tbody tr")
    assert run.locator("td").all_inner_texts() == [
        "lung-ct 2.1.0", "Urgent", "nodule 14 mm, right upper lobe", "1", "PDF report"]
    href = run.get_by_role("link", name="PDF report").get_attribute("href")
    pdf = page.request.get(f"{console.url}{href}")
    assert (pdf.status, pdf.headers["content-type"]) == (200, "application/pdf")
    assert pdf.body() == b"%PDF-1.4 a report\n"
    uid = console.ledger.study_by_id(job).study_instance_uid
    pacs = page.get_by_role("link", name="Open in the PACS viewer")
    assert pacs.get_attribute("href") == PACS_VIEWER.format(study_uid=uid)
    page.get_by_role("button", name="Log out").click()
    log_in(page, console.url, "operator")  # sees the results, not the files or the PACS link
    page.goto(f"{console.url}/studies/{job}")
    assert run.locator("td").all_inner_texts() == [
        "lung-ct 2.1.0", "Urgent", "nodule 14 mm, right upper lobe", "1"]
    assert page.get_by_role("link", name="Open in the PACS viewer").count() == 0
    page.goto(f"{console.url}/studies")
    page.fill("#model", "lung-ct")
    page.select_option("#triage", "URGENT")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("table.list tbody tr a").all_inner_texts() == [f"#{job}"]
    page.goto(f"{console.url}/studies?ae=CT_ROOM_2")
    assert page.locator("table.list tbody tr a").all_inner_texts() == [f"#{world.script_job}"]
    page.goto(f"{console.url}/studies?model=bad%20name")
    expect(page.locator(".message.error")).to_contain_text("not understood")
