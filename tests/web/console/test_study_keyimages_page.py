"""The Study page's key images in Chromium: a radiologist switches the window preset and the
overlay in place (keyimages.js under the page's CSP), zooms with the buttons, and the images
load; the patient's earlier study is listed beside. Screenshot study-keyimages.png."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

from node.core import patients
from tests.web.console.conftest import Console, log_in, shoot
from tests.web.study_scene import analysed_job

UID, PRIOR_UID = "1.2.826.0.1.3680043.8.498.7702", "1.2.826.0.1.3680043.8.498.7703"
PATIENT = "PAT" + "C" * 13  # the keyed pseudonym the de-identification stage writes


def _same_patient(console: Console, *jobs: int) -> None:
    with console.ledger.engine.begin() as conn:
        for job in jobs:
            patients.record(conn, job, PATIENT)


def _loaded(page: Page, selector: str) -> bool:
    return bool(page.eval_on_selector_all(
        selector, "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)"))


def test_a_radiologist_switches_preset_and_overlay_and_zooms(console: Console,
                                                             page: Page) -> None:
    prior = analysed_job(console.ledger, console.ctx.settings, PRIOR_UID, volume_ml=1398.0)
    job = analysed_job(console.ledger, console.ctx.settings, UID, volume_ml=1412.5)
    _same_patient(console, prior, job)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.on("console", lambda m: failed.append(m.text) if m.type == "error"
            and not m.location.get("url", "").endswith("/favicon.ico") else None)
    log_in(page, console.url, "radiologist")
    page.goto(f"{console.url}/studies/{job}")
    panel = page.locator("#key-images")
    expect(panel.locator("h2")).to_have_text("Key images")
    expect(panel.locator(".ai-label")).to_contain_text("AI-generated overlay")
    expect(panel.locator(".keyimage-run h3")).to_contain_text("brain-mask")
    expect(panel.locator(".legend")).to_contain_text("Brain")
    expect(panel.locator(".legend")).to_contain_text("1,412.5 mL")
    page.wait_for_function("() => [...document.querySelectorAll('#key-images img')]"
                           ".every(e => e.complete && e.naturalWidth > 0)")
    expect(panel.get_by_role("link", name="Soft tissue")).to_have_attribute("aria-current",
                                                                            "true")
    # the preset: the grey layer changes in place, the page does not reload
    panel.get_by_role("link", name="Brain").click()
    expect(panel.locator("img.base")).to_have_attribute("src", f"/studies/{job}/key-images/"
                                                        f"{_run(panel)}/1/image.png?preset=brain")
    page.wait_for_function("() => document.querySelector('#key-images img.base').complete")
    assert _loaded(page, "#key-images img.base")
    assert "preset=brain" in page.url
    # the overlay: a toggle button (the no-script link is hidden)
    toggle = panel.get_by_role("button", name="Overlay")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    expect(panel.locator("img.overlay")).to_be_hidden()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.press("Enter")  # the keyboard reaches it
    expect(panel.locator("img.overlay")).to_be_visible()
    # zoom: the stack grows inside its scrolling viewport
    width = panel.locator(".stack").bounding_box()
    panel.get_by_role("button", name="Zoom in").click()
    expect(panel.locator(".zoom-level")).to_have_text("150\u2009%")
    grown = panel.locator(".stack").bounding_box()
    assert width and grown and grown["width"] > 1.4 * width["width"]
    panel.get_by_role("button", name="Fit").click()
    expect(panel.locator(".zoom-level")).to_have_text("100\u2009%")
    assert failed == []
    earlier = page.locator("#earlier-studies")
    expect(earlier.get_by_role("link", name=f"Job #{prior}")).to_be_visible()
    expect(earlier).to_contain_text("change to this study: +14.5 mL")
    panel.scroll_into_view_if_needed()
    shoot(page, "study-keyimages")


def _run(panel: Locator) -> str:
    """The model run's id, from the grey layer's URL."""
    src = panel.locator("img.base").get_attribute("data-base") or ""
    return src.split("/")[4]
