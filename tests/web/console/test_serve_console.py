"""The console of a real ``dicom-node serve``: a study sent with dcmtk's storescu shows in
Chromium on the Overview (counted today, in its state), in the Studies list and on its Study
page with its series, whose Series Description (a script tag, from the real files) is text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import DICOM_NODE, NodeProcess, free_port, run
from tests.data import ct_series
from tests.web.console.conftest import log_in, shoot
from tests.web.console.scene import SCRIPT

PASSWORD = "operator password 1"


def _user(node: NodeProcess, name: str, role: str) -> None:
    result = run([*DICOM_NODE, "--config", str(node.config), "user", "add", name, "--role", role],
                 cwd=node.workdir, input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_a_study_sent_with_storescu_shows_on_the_console_of_serve(
        node_factory: Any, page: Page, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", 6)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.SeriesNumber = SCRIPT, 3
        ds.save_as(path, enforce_file_format=True)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    web_port = free_port()
    node = node_factory({"completion": {"quiet_period_s": 0.5},
                         "web": {"enabled": True, "port": web_port}})
    node.write_config()
    _user(node, "op", "operator")
    node.start()
    node.storescu(*files, calling="CT_ROOM_2")
    # no model is enabled: the job rests once de-identified
    row = node.wait_state(study_uid, "DEIDENTIFIED", timeout=60)
    url = f"http://127.0.0.1:{web_port}"
    page.set_extra_http_headers({"Accept-Language": "en"})
    log_in(page, url, "op", PASSWORD)
    expect(page.locator("h1")).to_have_text("Overview")
    today = page.locator(".figures dd").first.inner_text()
    assert today == "1"
    state_counts = {item.locator("a").get_attribute("href").split("=")[1]:  # type: ignore[union-attr]
                    item.locator(".count").inner_text()
                    for item in page.locator(".states li").all()}
    shoot(page, "serve-overview")
    assert sum(map(int, state_counts.values())) == 1
    page.get_by_role("link", name="Studies", exact=True).click()
    (job,) = page.locator("table.list tbody tr a").all_inner_texts()
    assert page.locator("table.list tbody td").nth(4).inner_text() == "CT_ROOM_2"
    page.locator("table.list tbody tr a").click()
    expect(page.locator("h1")).to_contain_text(job.replace("#", "Job #"))
    series = page.locator("section", has_text="Series").locator("tbody tr td")
    assert series.all_inner_texts()[:4] == ["3", SCRIPT, "CT", "6"]
    shoot(page, "serve-study")
    assert state_counts[row["state"]] == "1"
    node.stop()
    log = node.log()
    assert PASSWORD not in log and "dicom_node_session=" not in log
