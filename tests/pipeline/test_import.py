"""Import into a real ``dicom-node serve``: ``dicom-node import`` of a PNG and of Colin27's
NIfTI (Debian's mricron-data) reaches the end of the flow like a C-STORE'd study (completed,
de-identified; the picture, a Secondary Capture of modality OT, is held back by the
de-identifier as any OT image with no pixel rule (deid.pixel_rules) is); the NIfTI becomes an MR series that dciodvfy accepts with zero errors, with
the geometry of the volume's affine (spacing, orientation, slice order)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image

from node.pipeline.ingest.details import Details
from node.pipeline.ingest.volume import image_series

#: the states a study is in once it has been de-identified
_DEIDENTIFIED = ("DEIDENTIFIED", "INFERRED", "BUILT", "DELIVERED", "REPORTED", "DONE")
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True,
                         timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")]


def _colin() -> bytes:
    if not COLIN27.exists():
        pytest.fail(f"{COLIN27} is missing: apt-get install -y mricron-data")
    return COLIN27.read_bytes()


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_colin27_becomes_a_valid_series_with_the_affine_geometry(modality: str,
                                                                 tmp_path: Path) -> None:
    img = nibabel.load(COLIN27)
    series = image_series(_colin(), gzipped=True, study_uid=pydicom.uid.generate_uid(),
                          details=Details("COLIN", "Colin^Twentyseven", modality=modality))
    nx, ny, nz = img.shape
    assert len(series) == nz
    first = series[0]
    assert (first.Rows, first.Columns, first.Modality) == (ny, nx, modality)
    assert [float(v) for v in first.PixelSpacing] == [1.0, 1.0]
    assert float(first.SliceThickness) == 1.0
    # RAS+ (nibabel) to LPS+ (DICOM): the first two axes change sign
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :3]
    expected_iop = [*(lps[:, 0] / np.linalg.norm(lps[:, 0])),
                    *(lps[:, 1] / np.linalg.norm(lps[:, 1]))]
    assert np.allclose([float(v) for v in first.ImageOrientationPatient], expected_iop)
    normal = np.cross(expected_iop[:3], expected_iop[3:])
    for k in (0, 1, nz // 2, nz - 1):
        ds = series[k]
        assert ds.InstanceNumber == k + 1
        voxel = (img.affine @ [0, 0, k, 1])[:3] * [-1, -1, 1]
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], voxel, atol=1e-3)
    steps = np.diff([np.dot([float(v) for v in s.ImagePositionPatient], normal)
                     for s in series])
    assert np.allclose(steps, 1.0, atol=1e-3)  # slice order along the normal, 1 mm apart
    volume = np.asarray(img.dataobj, dtype=np.float32)
    middle = series[nz // 2].pixel_array.astype(np.float32)
    if modality == "CT":
        middle = middle * float(series[0].RescaleSlope) + float(series[0].RescaleIntercept)
        assert np.allclose(middle, np.clip(np.rint(volume[:, :, nz // 2].T), -1024, None))
    else:
        assert np.corrcoef(middle.ravel(), volume[:, :, nz // 2].T.ravel())[0, 1] > 0.999
    for k in (0, nz // 2, nz - 1):
        assert _errors(series[k], tmp_path / f"{modality}-{k}.dcm") == []


def _png(path: Path) -> Path:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (128, 160, 3), dtype=np.uint8)).save(path, "PNG")
    return path


def _job(stdout: str) -> int:
    found = re.search(r"^job (\d+)$", stdout, re.MULTILINE)
    assert found, stdout
    return int(found.group(1))


def test_cli_imports_a_png_and_colin27_into_a_running_node(node_factory,
                                                           tmp_path: Path) -> None:
    node = node_factory({"completion": {"quiet_period_s": 0.5}})
    node.start()
    picture = node.cli("import", str(_png(tmp_path / "photo.jpg")),  # named .jpg, is a PNG
                       "--patient-id", "IMP-1", "--patient-name", "Import^Picture",
                       "--birth-date", "19800202", "--sex", "M", "--accession", "ACC-IMP1")
    assert picture.returncode == 0, picture.stderr
    assert "1 object(s) stored" in picture.stdout
    volume = node.cli("import", str(COLIN27),
                      "--patient-id", "IMP-2", "--patient-name", "Import^Volume",
                      "--modality", "MR")
    assert volume.returncode == 0, volume.stderr
    assert "181 object(s) stored" in volume.stdout
    jobs = {_job(picture.stdout), _job(volume.stdout)}
    assert len(jobs) == 2
    rows = {r["id"]: r for r in node.status() if r["id"] in jobs}
    assert {r["calling_ae_title"] for r in rows.values()} == {"UPLOAD"}
    # the picture went through de-identification as any Secondary Capture does: nobody can
    # vouch that a photo holds no burned-in text, so the de-identifier holds it back
    sc = node.wait_state(rows[_job(picture.stdout)]["study_instance_uid"], "DONE", "FAILED",
                         "QUARANTINED", timeout=120)
    assert (sc["state"], sc["completion_reason"]) == ("QUARANTINED", "quiet-period"), sc
    assert sc["state_reason"] == "0 instances de-identified, 1 quarantined (burned-in text)"
    # the MR series completes and is de-identified whole; inference may still be running
    mr = node.wait_state(rows[_job(volume.stdout)]["study_instance_uid"], *_DEIDENTIFIED,
                         timeout=120)
    assert (mr["instances"], mr["completion_reason"]) == (181, "quiet-period"), mr
    assert mr["state_reason"].startswith("181 instances de-identified, 0 quarantined") or \
        mr["state"] != "DEIDENTIFIED", mr
    # nothing of the patients in the node's log
    for value in ("IMP-1", "Import^Picture", "IMP-2", "Import^Volume", "ACC-IMP1"):
        assert value not in node.log()
    refused = node.cli("import", str(tmp_path / "photo.jpg"))  # no patient details
    assert refused.returncode == 1 and "patient ID is required" in refused.stderr
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    refused = node.cli("import", str(text), "--patient-id", "X", "--patient-name", "Y^Z")
    assert refused.returncode == 1 and "judged by its content" in refused.stderr
    (row,) = [r for r in node.quarantine() if "judged by its content" in r["reason"]]
    assert row["calling_ae_title"] == "UPLOAD"
