"""Volume assembly and series selection on real DICOM (pydicom, pydicom-data)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from node.core.manifest import Selection
from node.pipeline.infer.assemble import VolumeError, assemble
from node.pipeline.infer.series import eligible, orientation_of, select_series, summarize
from tests.data import ct_series, sample_file


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    paths = ct_series(tmp_path_factory.mktemp("ct"), 12)
    return [pydicom.dcmread(p) for p in paths]


def test_slices_sorted_along_the_normal_and_rescaled_to_hu(series: list[pydicom.Dataset]) -> None:
    shuffled = series[:]
    random.Random(7).shuffle(shuffled)
    vol = assemble(shuffled)
    assert vol.array.shape == (12, 512, 512)
    first = series[0]
    expected = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.allclose(vol.array[0], expected)
    assert vol.array.min() < -900  # air in HU
    assert vol.geometry.sop_instance_uids == tuple(s.SOPInstanceUID for s in series)
    assert vol.geometry.spacing[0] == pytest.approx(1.0)
    assert vol.geometry.spacing[1:] == tuple(float(v) for v in first.PixelSpacing)
    assert vol.geometry.normal == pytest.approx((0.0, 0.0, 1.0))
    assert vol.modality == "CT"


def test_missing_slice_uneven_spacing_duplicates_and_mixed_orientation(series: list[pydicom.Dataset]) -> None:
    with pytest.raises(VolumeError, match="slices are missing: a gap of 1 slice"):
        assemble(series[:5] + series[6:])
    uneven = copy.deepcopy(series[:4])
    uneven[3].ImagePositionPatient = [*uneven[3].ImagePositionPatient[:2], uneven[3].ImagePositionPatient[2] + 0.5]
    with pytest.raises(VolumeError, match="uneven"):
        assemble(uneven)
    with pytest.raises(VolumeError, match="share one position"):
        assemble([*series[:3], series[1]])
    tilted = copy.deepcopy(series[:3])
    tilted[2].ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]
    with pytest.raises(VolumeError, match="mixes image orientations"):
        assemble(tilted)
    no_geometry = copy.deepcopy(series[:2])
    del no_geometry[1].ImagePositionPatient
    with pytest.raises(VolumeError, match="lacks Image Position"):
        assemble(no_geometry)


def test_monochrome1_is_inverted(series: list[pydicom.Dataset]) -> None:
    inverted = copy.deepcopy(series[:2])
    for ds in inverted:
        ds.PhotometricInterpretation = "MONOCHROME1"
    normal, flipped = assemble(series[:2]).array, assemble(inverted).array
    # bright in MONOCHROME1 is dark: the order of values is reversed
    assert np.corrcoef(normal.ravel()[::97], flipped.ravel()[::97])[0, 1] < -0.99


def test_compressed_series_is_decoded(series: list[pydicom.Dataset]) -> None:
    compressed = copy.deepcopy(series[:3])
    for ds in compressed:
        ds.compress(RLELossless)
    assert np.array_equal(assemble(compressed).array, assemble(series[:3]).array)


def test_enhanced_multiframe_ct() -> None:
    ds = pydicom.dcmread(sample_file("eCT_Supplemental.dcm"))
    vol = assemble([ds])
    assert vol.array.shape[0] == 2
    assert vol.geometry.spacing[0] > 0


def test_multiframe_without_functional_groups_is_refused() -> None:
    with pytest.raises(VolumeError):
        assemble([pydicom.dcmread(sample_file("emri_small.dcm"))])


def test_series_selection(series: list[pydicom.Dataset]) -> None:
    mr = pydicom.dcmread(sample_file("MR_small.dcm"), stop_before_pixels=True)
    infos = summarize([*series, mr])
    ct = next(i for i in infos if i.modality == "CT")
    assert (ct.slices, ct.orientation) == (12, "axial")
    rules = Selection(modalities=("CT",), min_slices=10, orientations=("axial",))
    assert select_series(infos, rules) == ct
    assert "fewer than 20" in (eligible(ct, Selection(modalities=("CT",), min_slices=20)) or "")
    assert select_series(infos, Selection(modalities=("PT",))) is None
    assert eligible(ct, Selection(series_description="(?i)lung")) == "series description does not match"
    assert orientation_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert orientation_of([1, 0, 0, 0, 0, -1]) == "coronal"
    assert orientation_of([1, 0, 0, 0, 0.7071, -0.7071]) == "oblique"




def _picture(series_uid: str) -> pydicom.Dataset:
    """An uploaded picture's Secondary Capture (node.pipeline.ingest.picture), of a real MR
    slice (pydicom's MR_small.dcm, scaled to 8 bits as a PNG export would be)."""
    import io

    from PIL import Image

    from node.pipeline.ingest.details import Details
    from node.pipeline.ingest.picture import secondary_capture

    pixels = pydicom.dcmread(sample_file("MR_small.dcm")).pixel_array.astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray((255 * pixels / pixels.max()).astype(np.uint8)).save(buffer, "PNG")
    return secondary_capture(buffer.getvalue(), Details("P", "A^B", modality="MR"),
                             study_uid="2.25.1", series_uid=series_uid)


def test_a_picture_is_one_plane_in_image_coordinates() -> None:
    picture = _picture("2.25.2")
    vol = assemble([picture])
    assert vol.array.shape == (1, 64, 64) and vol.modality == "MR"
    assert np.array_equal(vol.array[0], picture.pixel_array)
    assert vol.geometry.spacing == (1.0, 1.0, 1.0)  # its size in mm is not known
    assert vol.geometry.sop_instance_uids == (picture.SOPInstanceUID,)
    # two pictures are no volume (the upload path gives each a series of its own)
    with pytest.raises(VolumeError, match="share one position"):
        assemble([picture, _picture("2.25.2")])
