"""Feedback in a real browser: a radiologist marks a model result incorrect from the Study page,
corrects its triage and writes a note holding a script tag; the note shows as text, the
Model quality page counts the verdict; an operator sees no form. Screenshots are saved."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.sync_api import Browser, Page, expect

from node.core import db
from tests.web.conftest import make_job
from tests.web.console.conftest import Console, log_in, shoot

NOTE = "Calcified granuloma, not a nodule. <script>alert(1)</script>"


def _job_with_a_run(console: Console) -> int:
    job = make_job(console.ledger, "2.25.77")
    with console.ledger.engine.begin() as conn:
        conn.execute(db.results.insert().values(
            study_id=job, generation=1, model="lung-ct", model_version="2.1.0",
            triage="URGENT", finding="nodule 14 mm, right upper lobe", current=True,
            created_at=datetime.now(UTC).replace(tzinfo=None), folder="results/x"))
    return job


def test_a_radiologists_verdict_shows_as_text_and_counts_on_model_quality(
        console: Console, page: Page, browser: Browser) -> None:
    job = _job_with_a_run(console)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, console.url, "radiologist")
    page.goto(f"{console.url}/studies/{job}")
    form = page.locator("form.feedback-form")
    form.get_by_label("Incorrect").check()
    form.get_by_label("Corrected triage").select_option("ROUTINE")
    form.get_by_label("Note").fill(NOTE)
    with page.expect_navigation():
        form.get_by_role("button", name="Save feedback").click()
    expect(page.locator(".message.ok")).to_contain_text("Your feedback was saved.")
    row = page.locator("table.given tbody tr")
    assert row.locator("td").all_inner_texts()[2:] == ["Incorrect", "Routine", NOTE]
    assert row.locator("td").first.inner_text() == "radiologist"
    assert page.locator("table.given script").count() == 0 and dialogs == []
    shoot(page, "feedback")
    records = [a for a in console.ctx.accounts.audit_page(limit=50) if a["action"] == "feedback"]
    assert [(a["user"], a["job"]) for a in records] == [("radiologist", job)]

    page.get_by_role("link", name="Model quality").click()
    week = page.locator("table.quality tbody tr")
    assert week.count() == 1
    cells = week.locator("td").all_inner_texts()
    assert cells[0] == "lung-ct" and cells[2:] == ["1", "1", "0", "0", "1", "0 %"]
    confusion = page.locator("table.confusion")
    urgent = confusion.locator("tbody tr", has=page.locator("th", has_text="Urgent"))
    assert urgent.locator("td").all_inner_texts() == ["1", "0", "0"]  # AI urgent, said routine
    assert page.locator("a", has_text="CSV").get_attribute("href") == "/api/v1/quality.csv?weeks=8"
    shoot(page, "quality")

    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    other = context.new_page()
    log_in(other, console.url, "operator")
    other.goto(f"{console.url}/studies/{job}")
    assert other.locator("form.feedback-form").count() == 0
    assert NOTE not in other.content() and "granuloma" not in other.content()
    assert other.locator("nav a", has_text="Model quality").count() == 0
    other.goto(f"{console.url}/quality")
    assert "Not allowed" in other.content()
    other.goto(f"{console.url}/studies/{job}")
    context.close()

    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    clinician = context.new_page()
    log_in(clinician, console.url, "clinician")
    clinician.goto(f"{console.url}/studies/{job}")
    assert clinician.locator("form.feedback-form").count() == 0
    assert clinician.locator("table.given td.note").inner_text() == NOTE
    context.close()
