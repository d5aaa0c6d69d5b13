"""The review gate in a real browser: a radiologist approves one job AWAITING_REVIEW from the
Study page (it moves on to BUILT, audited as "review") and rejects another with a note (it
ends DISCARDED, the note kept as feedback "incorrect"); an operator sees no form. Screenshot
saved."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.sync_api import Browser, Page, expect

from node.core import db, feedback
from node.core.jobstate import JobState
from tests.web.conftest import make_job
from tests.web.console.conftest import Console, log_in, shoot

WAITING = (JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED, JobState.AWAITING_REVIEW)


def _waiting_job(console: Console, uid: str) -> int:
    job = make_job(console.ledger, uid, to=WAITING)
    with console.ledger.engine.begin() as conn:
        conn.execute(db.results.insert().values(
            study_id=job, generation=1, model="lung-ct", model_version="2.1.0",
            triage="URGENT", finding="nodule 14 mm", current=True,
            created_at=datetime.now(UTC).replace(tzinfo=None), folder="results/x"))
    return job


def test_a_radiologist_approves_and_rejects_from_the_study_page(
        console: Console, page: Page, browser: Browser) -> None:
    approved, rejected = _waiting_job(console, "2.25.81"), _waiting_job(console, "2.25.82")
    log_in(page, console.url, "radiologist")
    page.goto(f"{console.url}/studies/{approved}")
    form = page.locator("form.review-form")
    shoot(page, "review")
    with page.expect_navigation():
        form.get_by_role("button", name="Approve").click()
    expect(page.locator(".message.ok")).to_contain_text("Approved")
    assert page.locator("form.review-form").count() == 0
    assert console.ledger.study_by_id(approved).state == JobState.BUILT

    page.goto(f"{console.url}/studies/{rejected}")
    page.locator("form.review-form").get_by_label("Note").fill("motion artefacts")
    with page.expect_navigation():
        page.locator("form.review-form").get_by_role("button", name="Reject").click()
    expect(page.locator(".message.ok")).to_contain_text("Rejected: nothing was sent.")
    assert console.ledger.study_by_id(rejected).state == JobState.DISCARDED
    given = feedback.for_study(console.ledger.engine, rejected)
    assert [(g.verdict, g.note, g.user) for g in given] == \
        [("incorrect", "motion artefacts", "radiologist")]
    records = [(a["job"], a["outcome"]) for a in console.ctx.accounts.audit_page(limit=50)
               if a["action"] == "review"]
    assert sorted(records) == [(approved, "ok"), (rejected, "ok")]

    third = _waiting_job(console, "2.25.83")
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    other = context.new_page()
    log_in(other, console.url, "operator")
    other.goto(f"{console.url}/studies/{third}")
    assert other.locator("form.review-form").count() == 0
    context.close()
