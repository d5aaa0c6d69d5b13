"""Uploads reach the results, in Chromium against a real ``dicom-node serve`` with the
brain-tumor-demo model: a clinician uploads a PNG of a brain MR slice (stating that it shows
no identifying text) and a NIfTI MR volume on the Upload page; each becomes its own job that
is de-identified, classified and reported, and the Study page shows the model's result.

Both inputs are real data: Colin27's T1 (Debian ``mricron-data``, see tests/README.md). The
PNG is one axial slice of it, scaled to 8 bits and turned so that anterior is up (as a slice
exported from a viewer looks); the NIfTI is an axial slab of 12 of its slices (the whole
181-slice volume would add about a minute of de-identification and upload to CI for nothing
the slab does not show).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.conftest import DICOM_NODE, REPO, free_port, run
from tests.models.test_brain_mask import _nifti
from tests.web.console.conftest import log_in, page, shoot  # noqa: F401 - the fixture

PASSWORD = "clinician password 1"
PATIENT = {"patient_id": "UPL-7", "patient_name": "Upload^Brain", "birth_date": "19650412",
           "accession": "ACC-UPL7"}
#: the job states after the results were built (no destination: it ends DONE)
BUILT = {"BUILT", "DELIVERED", "REPORTED", "DONE"}


def brain_png(path: Path) -> Path:
    """One real axial slice of Colin27 (through the lateral ventricles) as an 8-bit PNG."""
    volume = np.asarray(_nifti("ch2.nii.gz").dataobj, dtype=np.float32)  # RAS: x, y, z
    plane = np.rot90(volume[:, :, 100])  # rows: anterior to posterior; columns: right to left
    scaled = 255 * (plane - plane.min()) / (plane.max() - plane.min())
    buffer = io.BytesIO()
    Image.fromarray(scaled.astype(np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def brain_slab(path: Path) -> Path:
    """12 axial slices of Colin27 as a NIfTI volume (header and affine kept by nibabel)."""
    nib.save(_nifti("ch2.nii.gz").slicer[:, :, 86:98], path)
    return path


def _upload(tab: Page, url: str, file: Path, *, picture: bool) -> int:
    tab.goto(f"{url}/upload")
    tab.set_input_files("#file", str(file))
    for field, value in PATIENT.items():
        tab.fill(f"#{field}", value)
    tab.select_option("#modality", "MR")
    tab.select_option("#body_part", "HEAD")
    if picture:
        tab.check("#identifying_text_no")
    with tab.expect_navigation():
        tab.get_by_role("button", name="Upload").click()
    expect(tab.locator("#upload-result .message.ok")).to_contain_text("0 quarantined")
    return int(tab.locator("#upload-result a").inner_text().split()[-1])


def _wait_built(tab: Page, url: str, job: int, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = tab.request.get(f"{url}/api/v1/studies/{job}").json()
        if row.get("state") in BUILT or row.get("state") in ("FAILED", "QUARANTINED"):
            break
        time.sleep(0.5)
    assert row.get("state") in BUILT, row
    return row


def _panel(tab: Page, heading: str) -> Locator:
    """The Study page's panel under this heading (other panels mention results too)."""
    return tab.locator("section.panel", has=tab.get_by_role("heading", name=heading,
                                                             exact=True))


@pytest.mark.integration
@pytest.mark.slow
def test_an_uploaded_png_and_nifti_reach_their_results_on_the_study_page(
        node_factory: Any, page: Page, tmp_path: Path) -> None:  # noqa: F811 - fixture
    models = tmp_path / "models"
    models.mkdir()
    (models / "brain-tumor-demo").symlink_to(REPO / "models" / "brain-tumor-demo")
    web_port = free_port()
    node = node_factory({"completion": {"quiet_period_s": 0.5},
                         "models": {"dir": str(models), "enabled": ["brain-tumor-demo"],
                                    "device": "cpu"},
                         "web": {"enabled": True, "port": web_port}})
    node.write_config()
    added = run([*DICOM_NODE, "--config", str(node.config), "user", "add", "doc", "--role",
                 "clinician"], cwd=node.workdir, input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    node.start()
    url = f"http://127.0.0.1:{web_port}"
    page.set_extra_http_headers({"Accept-Language": "en"})
    log_in(page, url, "doc", PASSWORD)
    picture = _upload(page, url, brain_png(tmp_path / "brain-slice.png"), picture=True)
    shoot(page, "upload-brain-png")
    volume = _upload(page, url, brain_slab(tmp_path / "colin27-slab.nii.gz"), picture=False)
    assert picture != volume
    for job, series in ((picture, "Uploaded picture"), (volume, "Imported NIfTI volume")):
        _wait_built(page, url, job)
        page.goto(f"{url}/studies/{job}")
        expect(_panel(page, "Series")).to_contain_text(series)
        results = _panel(page, "Results").locator("tbody tr")
        expect(results).to_have_count(1)
        cells = results.first.locator("td").all_inner_texts()
        assert cells[0].startswith("brain-tumor-demo") and "0.1.1" in cells[0], cells
        assert "DEMONSTRATION" in cells[2] or "tumour" in cells[2].lower(), cells
        shoot(page, f"upload-results-{'png' if job == picture else 'nifti'}")
    node.stop()
    log = node.log()
    assert "Upload^Brain" not in log and "UPL-7" not in log  # no identity in the log
