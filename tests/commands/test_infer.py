"""All three default models run from ``dicom-node infer`` on real DICOM series."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from node.commands import main
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.models.test_brain_mask import _nifti, _write_series
from tests.sr_writer.conftest import dciodvfy

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "node.toml"
    path.write_text(f'[node]\nvar_dir = "{path.parent / "var"}"\n'
                    f'[models]\ndir = "{REPO / "models"}"\ndevice = "auto"\n')
    return path


@pytest.fixture(scope="module")
def colin27(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("colin27")
    _write_series(_nifti("ch2.nii.gz"), folder)
    return folder


def infer(config: Path, model: str, series: Path, out: Path) -> dict:  # type: ignore[type-arg]
    assert main(["--config", str(config), "infer", "--model", model, str(series), "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


def check_objects(out: Path, series: Path, *, seg: bool) -> None:
    """All result objects written, valid (dciodvfy: no errors), in the source study."""
    names = {p.name for p in out.iterdir()}
    expected = {"sr.dcm", "kos.dcm", "report-pdf.dcm", "report.pdf", "summary.json"} | ({"seg.dcm"} if seg else set())
    assert expected <= names and any(n.startswith("sc-") for n in names)
    study = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    for path in out.glob("*.dcm"):
        errors, _warnings = dciodvfy(path)
        assert errors == [], (path.name, errors)
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")


def test_brain_mask(config: Path, colin27: Path, tmp_path: Path) -> None:
    summary = infer(config, "brain-mask", colin27, tmp_path)
    (volume,) = summary["measurements"]
    assert volume["name"] == "Brain volume" and volume["unit"] == "mL"
    assert 1000 < volume["value"] < 2100
    assert "AI-generated" in summary["label"] and summary["model"]["version"] == "1.0.0"
    check_objects(tmp_path, colin27, seg=True)
    # the SEG reproduces the model's mask: read back and compare with a second, direct run
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 1


def test_lung_ct(config: Path, tmp_path: Path) -> None:
    phantom = chest_phantom(slices=120, size=256)
    series = tmp_path / "ct"
    series.mkdir()
    write_ct_series(phantom.volume, series)
    summary = infer(config, "lung-ct", series, tmp_path / "out")
    values = {m["name"]: m["value"] for m in summary["measurements"]}
    ml = phantom.volume.geometry.voxel_volume_ml
    assert values["Right lung volume"] == pytest.approx(phantom.right.sum() * ml, rel=0.01)
    assert values["Left lung volume"] == pytest.approx(phantom.left.sum() * ml, rel=0.01)
    assert "Emphysema index LAA%-950" in values
    assert summary["triage"] in ("ROUTINE", "PRIORITY", "URGENT")
    check_objects(tmp_path / "out", series, seg=True)


def test_brain_tumor_demo(config: Path, colin27: Path, tmp_path: Path) -> None:
    summary = infer(config, "brain-tumor-demo", colin27, tmp_path)
    probabilities = [f["probability"] for f in summary["findings"]]
    assert len(probabilities) == 4 and sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert "DEMONSTRATION" in summary["model"]["intended_use"].upper()
    check_objects(tmp_path, colin27, seg=False)


def test_brain_tumor_demo_on_an_uploaded_picture(tmp_path: Path) -> None:
    """A PNG of a real brain MR slice (Colin27, tests/web/test_upload_browser.py) as the
    upload path builds it (an MR Secondary Capture without patient geometry) gets a result,
    and every object built from it (SR, overlay SC, KOS, PDF) is valid: the overlay's edge
    letters come from the picture's Patient Orientation. ``deid.allow_burned_in``: this CLI
    run de-identifies a local file, which the uploader's statement does not cover."""
    from pydicom.uid import generate_uid

    from node.pipeline.ingest.details import Details
    from node.pipeline.ingest.picture import secondary_capture
    from tests.web.test_upload_browser import brain_png

    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nvar_dir = "{tmp_path / "var"}"\n[models]\n'
                      f'dir = "{REPO / "models"}"\ndevice = "auto"\n'
                      "[deid]\nallow_burned_in = true\n")
    series = tmp_path / "picture"
    series.mkdir()
    sc = secondary_capture(brain_png(tmp_path / "slice.png").read_bytes(),
                           Details("P-1", "Upload^Brain", modality="MR", body_part="HEAD"),
                           study_uid=generate_uid(), series_uid=generate_uid(), attested=True)
    sc.save_as(series / "sc.dcm", enforce_file_format=True)
    summary = infer(config, "brain-tumor-demo", series, tmp_path / "out")
    assert len(summary["findings"]) == 4 and summary["predicted_finding"]["code"]
    check_objects(tmp_path / "out", series, seg=False)
