"""``dicom-node evaluate`` on real data: brain-mask on Colin27 (one model run, with ch2bet as the
reference, beside three broken cases that fail before the model runs), brain-tumor-demo on a labelled set of real
Colin27 slices (PNG pictures and one DICOM instance) the test writes; the PDF read back.

Data: Colin27 T1 ``ch2.nii.gz`` and its BET mask ``ch2bet.nii.gz`` (Debian ``mricron-data``).
lung-ct on the chest phantom of tests/models/chest_phantom.py scores two segments apart.
Every Colin27 slice is a healthy brain, so every label is "no tumour": the classifier's false
"meningioma" on the skull base shows as a specificity below 1 for that class.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from node.commands import main
from node.core.manifest import load_manifest
from node.pipeline.infer.loaders import sha256_of
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.models.test_brain_mask import MRICRON, _mr_slice, _nifti

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path("/tmp/console-shots")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "node.toml"
    path.write_text(f'[node]\nvar_dir = "{path.parent / "var"}"\n'
                    f'[models]\ndir = "{REPO / "models"}"\ndevice = "cpu"\n')
    return path


def _evaluate(config: Path, model: str, data: Path, out: Path) -> tuple[int, dict[str, Any]]:
    status = main(["--config", str(config), "evaluate", "--model", model, "--data", str(data),
                   "--out", str(out)])
    return status, json.loads((out / "evaluation.json").read_text(encoding="utf-8"))


def _pdf_text(path: Path) -> str:
    done = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True, timeout=30)
    return done.stdout


def _segmentation_set(data: Path) -> None:
    t1, bet = MRICRON / "ch2.nii.gz", MRICRON / "ch2bet.nii.gz"
    (data / "colin27-nifti").mkdir(parents=True)
    shutil.copy(t1, data / "colin27-nifti" / "image.nii.gz")
    shutil.copy(bet, data / "colin27-nifti" / "reference.nii.gz")
    (data / "no-reference").mkdir()
    shutil.copy(t1, data / "no-reference" / "image.nii.gz")
    (data / "other-grid").mkdir()  # a half-resolution image, the full-resolution mask
    image = _nifti("ch2.nii.gz")
    half = image.__class__(np.asarray(image.dataobj)[::2, ::2, ::2],
                           image.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    half.to_filename(data / "other-grid" / "image.nii.gz")
    shutil.copy(bet, data / "other-grid" / "reference.nii.gz")
    (data / "unreadable").mkdir()
    (data / "unreadable" / "image.nii.gz").write_bytes(b"not a NIfTI file at all")
    shutil.copy(bet, data / "unreadable" / "reference.nii.gz")


def test_brain_mask_on_colin27(config: Path, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    _segmentation_set(data)
    status, report = _evaluate(config, "brain-mask", data, out)

    assert status == 0
    assert (report["cases_total"], report["cases_evaluated"], report["cases_failed"]) == (4, 1, 3)
    manifest = load_manifest(REPO / "models" / "brain-mask")
    assert report["model"] == {"name": "brain-mask", "version": manifest.version,
                               "task": "segmentation", "weights_file": "brain_unet3d.pt",
                               "weights_sha256": sha256_of(manifest.weights_path),  # type: ignore[arg-type]
                               "device": "cpu"}
    cases = {c["case"]: c for c in report["cases"]}
    errors = {name: c.get("error") for name, c in cases.items() if c["status"] == "failed"}
    assert errors == {
        "no-reference": "reference mask missing (reference.nii.gz, reference.nii or "
                        "reference.dcm)",
        "other-grid": "reference.nii.gz: shape (181, 217, 181) does not match the image's "
                      "(91, 109, 91)",
        "unreadable": "image.nii.gz: not a readable NIfTI file (ImageFileError)",
    }
    b = cases["colin27-nifti"]["segments"]["Brain"]
    # the model's README: 0.9364 on the axial DICOM series; the NIfTI array's axis order differs
    assert b["dice"] == pytest.approx(0.9352, abs=0.001)
    assert b["reference_ml"] == pytest.approx(1737.2, abs=0.1)
    assert b["volume_error_ml"] == pytest.approx(b["volume_ml"] - 1737.2, abs=0.1)
    assert 150.0 < b["volume_error_ml"] < 300.0  # the 1.4 mm wider shell of the README
    assert 2.0 < b["hd95_mm"] < 15.0  # measured 9.95 mm (models/brain-mask/README.md says why)
    summary = report["summary"]["Brain"]
    assert summary["dice"] == {"mean": b["dice"], "ci95": [b["dice"], b["dice"]], "n": 1}
    assert summary["hd95_mm"]["mean"] == b["hd95_mm"]

    text = _pdf_text(out / "evaluation.pdf")
    for expected in ("Model evaluation report: brain-mask", "AI-generated",
                     report["model"]["weights_sha256"], "4: 1 evaluated, 3 failed",
                     f"{b['dice']:.4f}", f"{b['dice']:.4f} to {b['dice']:.4f}",
                     f"{b['hd95_mm']:.2f}", "reference mask missing", "HD95", "other-grid"):
        assert expected in text, expected
    SHOTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-singlefile", str(out / "evaluation.pdf"),
                    str(SHOTS / "evaluate-report")], check=True, timeout=60)
    assert (SHOTS / "evaluate-report.png").stat().st_size > 10_000


def test_no_case_evaluated_exits_1_with_a_report(config: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "empty-case").mkdir(parents=True)
    status, report = _evaluate(config, "brain-mask", tmp_path / "data", tmp_path / "out")
    assert status == 1
    assert report["cases_evaluated"] == 0 and report["cases"][0]["status"] == "failed"
    assert report["summary"]["Brain"]["dice"] == {"mean": None, "ci95": None, "n": 0}
    assert "image missing" in _pdf_text(tmp_path / "out" / "evaluation.pdf")


def _png(data: np.ndarray, k: int, path: Path) -> None:
    """Axial slice k as the 8-bit picture a viewer exports (min-max to 0..255)."""
    pixels = data[::-1, ::-1, k].T.astype(float)
    pixels = np.rint(255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_brain_tumor_demo_on_labelled_colin27_slices(config: Path, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    t1 = np.asarray(_nifti("ch2.nii.gz").dataobj)
    _png(t1, 30, data / "skull-base.png")  # the model calls this healthy slice "meningioma"
    ds = _mr_slice(generate_uid(), generate_uid(), generate_uid(),
                   t1[::-1, ::-1, 100].T.astype(np.int16))
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.save_as(data / "slice-100.dcm", enforce_file_format=True)
    (data / "labels.csv").write_text(
        "file,label\n"
        "skull-base.png,notumour-demo\n"  # by code value
        "slice-100.dcm,\"No tumour (DEMONSTRATION model, not validated)\"\n"  # by name
        "missing.png,2\n"  # by index
        "skull-base.png,astrocytoma\n"
        ",2\n", encoding="utf-8")
    status, report = _evaluate(config, "brain-tumor-demo", data, out)

    assert status == 0
    assert (report["cases_evaluated"], report["cases_failed"]) == (2, 3)
    ok = {c["case"]: c for c in report["cases"] if c["status"] == "ok"}
    assert ok["skull-base.png"]["predicted"].startswith("Meningioma")
    assert ok["slice-100.dcm"]["predicted"].startswith("No tumour")
    assert all(abs(sum(c["probabilities"].values()) - 1.0) < 1e-5 for c in ok.values())
    failed = [(c["case"], c["error"]) for c in report["cases"] if c["status"] == "failed"]
    assert failed == [("missing.png", "missing.png: missing"),
                      ("skull-base.png", "label 'astrocytoma' is not a class of model "
                                         "brain-tumor-demo"),
                      ("line 6", "no file named in labels.csv")]
    s = report["summary"]
    assert s["accuracy"]["value"] == 0.5
    assert s["accuracy"]["ci95"] == [0.0, 1.0]  # two cases: a resample holds 0, 1 or 2 right
    no_tumour = s["per_class"]["No tumour (DEMONSTRATION model, not validated)"]
    meningioma = s["per_class"]["Meningioma (DEMONSTRATION model, not validated)"]
    assert no_tumour["sensitivity"]["value"] == 0.5
    assert no_tumour["specificity"]["value"] is None  # no case of another class
    assert meningioma["specificity"]["value"] == 0.5
    assert meningioma["sensitivity"]["value"] is None and meningioma["roc_auc"]["value"] is None
    assert s["confusion_matrix"]["counts"] == [[0] * 4, [0] * 4, [0, 1, 1, 0], [0] * 4]

    text = _pdf_text(out / "evaluation.pdf")
    for expected in ("brain-tumor-demo", "Accuracy 0.500 (95% interval 0.000 to 1.000)", "Confusion matrix", "skull-base.png",
                     "Meningioma", "not a class of model", "n/a"):
        assert expected in text, expected
    assert pydicom.dcmread(data / "slice-100.dcm").PatientName == "Colin27^T1"  # input untouched


def test_lung_ct_per_segment_on_the_chest_phantom(config: Path, tmp_path: Path) -> None:
    """Two segments scored apart: the chest phantom (tests/models/chest_phantom.py, exactly known
    lungs) as a CT series, its truth as a NIfTI label map (1 right, 2 left) in the NIfTI axis
    order, mapped onto the series through patient coordinates."""
    case = tmp_path / "data" / "phantom"
    (case / "image").mkdir(parents=True)
    phantom = chest_phantom(slices=40, size=128)  # small: the scoring, not the model, is tested
    write_ct_series(phantom.volume, case / "image")
    g = phantom.volume.geometry
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    for axis, (direction, spacing) in enumerate(((g.row_direction, g.spacing[2]),
                                                 (g.column_direction, g.spacing[1]),
                                                 (g.normal, g.spacing[0]))):
        affine[:3, axis] = lps_to_ras @ np.array(direction) * spacing
    affine[:3, 3] = lps_to_ras @ np.array(g.origin)
    labels = np.zeros(phantom.volume.array.shape, dtype=np.uint8)
    labels[phantom.right], labels[phantom.left] = 1, 2
    nibabel.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine).to_filename(
        case / "reference.nii.gz")
    status, report = _evaluate(config, "lung-ct", tmp_path / "data", tmp_path / "out")

    assert status == 0
    segments = report["cases"][0]["segments"]
    assert set(segments) == {"Right lung", "Left lung"}
    assert segments["Right lung"]["reference_ml"] == pytest.approx(phantom.right_ml)
    assert segments["Left lung"]["reference_ml"] == pytest.approx(phantom.left_ml)
    for s in segments.values():  # measured: Dice 0.980, HD95 1.4 mm, -4.0 % on both lungs
        assert s["dice"] > 0.97 and 0.5 < s["hd95_mm"] < 2.5 and -6.0 < s["volume_error_pct"] < -2.0
    assert set(report["summary"]) == {"Right lung", "Left lung"}
