"""The lung-ct model: lung volumes and LAA%-950 on a phantom with known truth, and real CT.

Synthetic: ``chest_phantom.py`` (no chest CT volume installs offline; exact truth needs a phantom).
Real: single CT slices from pydicom's wheel (``CT_small.dcm``: a cropped chest slice, 128x128)
and pydicom-data (``693_UNCR.dcm``: head; ``explicit_VR-UN.dcm``: abdomen, JPEG 2000). Each is
repeated into a short series (one copy per 5 mm along the slice normal, each with its own SOP
Instance UID) and assembled by the node's own ``assemble``, as a received series would be.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from node.core.contract import Geometry, ModelResult, Triage, Volume
from node.core.errors import ConfigError, PermanentError
from node.core.manifest import load_manifest
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.registry import LoadedModel, load_model
from tests.models.chest_phantom import Phantom, chest_phantom

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "lung-ct"
EMPHYSEMA = "Emphysema index LAA%-950"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(MODEL_DIR, "cpu")


@pytest.fixture(scope="module")
def full_phantom() -> Phantom:
    return chest_phantom(300, 512)


@pytest.fixture(scope="module")
def full_result(loaded: LoadedModel, full_phantom: Phantom) -> tuple[ModelResult, float]:
    start = time.perf_counter()
    result = loaded.model.predict(full_phantom.volume)
    return result, time.perf_counter() - start


def _values(result: ModelResult) -> dict[str, float]:
    return {m.name: m.value for m in result.measurements}


def _masks(result: ModelResult) -> tuple[np.ndarray, np.ndarray]:
    by_label = {s.label: s.mask for s in result.segments}
    return by_label[1], by_label[2]


def _check_phantom(result: ModelResult, phantom: Phantom) -> None:
    values = _values(result)
    right, left = _masks(result)
    assert values["Right lung volume"] == pytest.approx(phantom.right_ml, rel=0.01)
    assert values["Left lung volume"] == pytest.approx(phantom.left_ml, rel=0.01)
    assert values["Total lung volume"] == pytest.approx(phantom.right_ml + phantom.left_ml,
                                                        rel=0.01)
    assert values[EMPHYSEMA] == pytest.approx(phantom.laa_percent, abs=1.0)
    # the right mask lies on the truth's right lung, not just with a similar volume
    assert (right & phantom.right).sum() >= 0.99 * phantom.right.sum()
    assert (left & phantom.left).sum() >= 0.99 * phantom.left.sum()
    assert (right & phantom.left).sum() <= 0.001 * right.sum()
    assert (left & phantom.right).sum() <= 0.001 * left.sum()


@pytest.mark.slow
def test_phantom_volumes_emphysema_triage_and_time(
    full_result: tuple[ModelResult, float], full_phantom: Phantom
) -> None:
    phantom = full_phantom
    result, elapsed = full_result
    print(f"\nlung-ct on 300x512x512: {elapsed:.2f} s {result.timings_s}")
    _check_phantom(result, phantom)
    right, left = _masks(result)
    values = _values(result)
    print(f"right {values['Right lung volume']:.1f} mL (truth {phantom.right_ml:.1f}), "
          f"left {values['Left lung volume']:.1f} mL (truth {phantom.left_ml:.1f}), "
          f"LAA%-950 {values[EMPHYSEMA]:.2f} (truth {phantom.laa_percent:.2f})")
    # the patient's right lung is on the image's left (low columns) in standard axial CT
    columns = np.arange(right.shape[2])
    assert (right.sum(axis=(0, 1)) * columns).sum() / right.sum() < right.shape[2] / 2
    assert (left.sum(axis=(0, 1)) * columns).sum() / left.sum() > left.shape[2] / 2
    # vessels and emphysema inside the lungs are lung
    lung = right | left
    assert (lung & phantom.vessels).sum() >= 0.99 * phantom.vessels.sum()
    assert (lung & phantom.emphysema).sum() >= 0.99 * phantom.emphysema.sum()
    assert 10.0 < phantom.laa_percent < 25.0
    assert result.triage == Triage.PRIORITY
    assert len(result.key_slices) == 1
    assert phantom.emphysema[result.key_slices[0]].any()
    assert set(result.timings_s) == {"preprocess", "segment", "measure"}
    assert elapsed < 10.0


@pytest.mark.slow
def test_segments_and_measurements_are_coded(
    full_result: tuple[ModelResult, float], full_phantom: Phantom
) -> None:
    result, _ = full_result
    assert (result.model_name, result.model_version) == ("lung-ct", "1.0.0")
    segments = {s.label: s for s in result.segments}
    assert segments[1].name == "Right lung" and segments[1].type.value == "3341006"
    assert segments[2].name == "Left lung" and segments[2].type.value == "44029006"
    for segment in segments.values():
        assert segment.category.value == "91723000"
        assert segment.mask.shape == full_phantom.volume.array.shape
        assert segment.mask.dtype == bool
        assert segment.geometry == full_phantom.volume.geometry
    units = {m.name: (m.unit, m.segment_label) for m in result.measurements}
    assert units == {"Right lung volume": ("mL", 1), "Left lung volume": ("mL", 2),
                     "Total lung volume": ("mL", None), EMPHYSEMA: ("%", None)}
    assert all(m.concept is not None for m in result.measurements)


@pytest.mark.parametrize(
    "variant", ["flipped columns", "touching lungs", "head first", "emphysema at the bronchus"]
)
def test_phantom_variants(loaded: LoadedModel, variant: str) -> None:
    if variant == "flipped columns":
        # columns run to the patient's right: the larger (image-left) lung is the left lung
        phantom = chest_phantom(120, 256, row_direction=(-1.0, 0.0, 0.0))
        assert phantom.left_ml > phantom.right_ml
    elif variant == "touching lungs":
        phantom = chest_phantom(120, 256, touching=True)
    elif variant == "emphysema at the bronchus":
        # the airway's region growing must not take the emphysema it touches out of the lung
        phantom = chest_phantom(120, 256, emphysema_at_bronchus=True)
        assert phantom.laa_percent > chest_phantom(120, 256).laa_percent + 3.0
    else:  # slices stored from the head down: the trachea is at the first slices
        base = chest_phantom(120, 256)
        geometry = dataclasses.replace(base.volume.geometry, normal=(0.0, 0.0, -1.0))
        volume = dataclasses.replace(base.volume, array=base.volume.array[::-1].copy(),
                                     geometry=geometry)
        phantom = Phantom(volume, base.right[::-1], base.left[::-1], base.vessels[::-1],
                          base.emphysema[::-1])
    _check_phantom(loaded.model.predict(phantom.volume), phantom)


def test_lung_bases_without_trachea_are_urgent(loaded: LoadedModel) -> None:
    """A scan of the lower half only: no trachea to find, heavier emphysema (> 25 %)."""
    base = chest_phantom(120, 256)
    phantom = Phantom(dataclasses.replace(base.volume, array=base.volume.array[:60]),
                      base.right[:60], base.left[:60], base.vessels[:60], base.emphysema[:60])
    result = loaded.model.predict(phantom.volume)
    _check_phantom(result, phantom)
    assert phantom.laa_percent > 25.0
    assert result.triage == Triage.URGENT


def _manifest_copy(tmp_path: Path, text: str) -> dict[str, object]:
    """Model arguments for a copy of the manifest with ``text`` (as the registry builds them)."""
    folder = tmp_path / "lung-ct"
    folder.mkdir()
    (folder / "manifest.toml").write_text(text, encoding="utf-8")
    return {"folder": folder, "device": "cpu", "manifest": load_manifest(folder)}


@pytest.mark.parametrize(
    ("priority_above", "urgent_above", "expected"),
    [(5.0, 14.0, Triage.URGENT), (14.0, 30.0, Triage.PRIORITY), (20.0, 30.0, Triage.ROUTINE)],
)
def test_triage_follows_the_manifest_thresholds(
    loaded: LoadedModel, tmp_path: Path, priority_above: float, urgent_above: float,
    expected: Triage,
) -> None:
    text = (MODEL_DIR / "manifest.toml").read_text(encoding="utf-8")
    text = text.replace("priority_above = 10.0", f"priority_above = {priority_above}")
    text = text.replace("urgent_above = 25.0", f"urgent_above = {urgent_above}")
    model = type(loaded.model)(**_manifest_copy(tmp_path, text))
    phantom = chest_phantom(120, 256)
    assert 14.0 < phantom.laa_percent < 20.0
    assert model.predict(phantom.volume).triage == expected


def test_inconsistent_manifest_is_refused(loaded: LoadedModel, tmp_path: Path) -> None:
    text = (MODEL_DIR / "manifest.toml").read_text(encoding="utf-8")
    kwargs = _manifest_copy(tmp_path, text.replace("urgent_above = 25.0", "urgent_above = 5.0"))
    with pytest.raises(ConfigError, match="urgent_above"):
        type(loaded.model)(**kwargs)


def _real_series(name: str, count: int = 30, gap_mm: float = 5.0) -> Volume:
    """One real slice repeated ``count`` times, ``gap_mm`` apart along its normal, assembled."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not in pydicom's or pydicom-data's test files"
    original = pydicom.dcmread(path)
    orientation = [float(v) for v in original.ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in original.ImagePositionPatient])
    copies = []
    for i in range(count):
        ds = copy.deepcopy(original)
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [float(v) for v in origin + i * gap_mm * normal]
        copies.append(ds)
    return assemble(copies)


def test_real_chest_slice_finds_both_lungs(loaded: LoadedModel) -> None:
    """CT_small.dcm: a 85 mm field of view around a thoracic vertebra, lung on both sides."""
    volume = _real_series("CT_small.dcm")
    result = loaded.model.predict(volume)
    values = _values(result)
    right, left = _masks(result)
    slice_ml = volume.geometry.voxel_volume_ml * volume.array[0].size
    reference = float((volume.array[0] < -400).mean()) * slice_ml * len(volume.array)
    print(f"\nCT_small x30: right {values['Right lung volume']:.1f} mL, left "
          f"{values['Left lung volume']:.1f} mL; pixels below -400 HU: {reference:.1f} mL")
    # both lungs, each a sizeable part of the slice, together close to the low-density area
    assert values["Right lung volume"] > 0.3 * reference
    assert values["Left lung volume"] > 0.3 * reference
    assert values["Total lung volume"] == pytest.approx(reference, rel=0.1)
    # the patient's right lung on the image's left (Image Orientation (Patient) is 1\0\0\0\1\0)
    assert right[:, :, 64:].sum() < 0.05 * right.sum()
    assert left[:, :, :64].sum() < 0.05 * left.sum()
    assert values[EMPHYSEMA] < 1.0
    assert result.triage == Triage.ROUTINE


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "explicit_VR-UN.dcm"])
def test_real_head_and_abdomen_ct_have_no_lungs(loaded: LoadedModel, name: str) -> None:
    """Head (air in the scalp, head holder) and abdomen (bowel gas, table): no lung."""
    volume = _real_series(name)
    result = loaded.model.predict(volume)
    values = _values(result)
    assert values["Total lung volume"] < 1.0
    assert {s.label for s in result.segments} == {1, 2}
    if values["Total lung volume"] == 0.0:
        assert EMPHYSEMA not in values
        assert result.key_slices == ()
        assert not any(s.mask.any() for s in result.segments)
    assert result.triage == Triage.ROUTINE


def test_non_ct_volume_is_refused(loaded: LoadedModel) -> None:
    geometry = Geometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                        (1.0, 1.0, 1.0))
    volume = Volume(np.zeros((20, 32, 32), dtype=np.float32), geometry, "MR")
    with pytest.raises(PermanentError, match="needs CT"):
        loaded.model.predict(volume)
