"""The evaluation metrics (node/pipeline/evaluate/metrics.py) against values worked out by hand,
and the case reader's DICOM SEG path (a real CT series and a highdicom SEG of a known mask)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest

from node.core.manifest import load_manifest
from node.pipeline.evaluate import metrics
from node.pipeline.evaluate.cases import CaseError, load_image, load_reference
from tests.data import ct_series

REPO = Path(__file__).resolve().parents[2]


def test_dice_of_two_cubes_with_known_overlap() -> None:
    a = np.zeros((20, 20, 20), dtype=bool)
    b = np.zeros_like(a)
    a[0:10, 0:10, 0:10] = True  # 1000 voxels
    b[5:15, 0:10, 0:10] = True  # 1000 voxels, 500 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 500 / 2000)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, np.zeros_like(a)) == 0.0
    assert metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert metrics.volume_error(1100.0, 1000.0) == (100.0, pytest.approx(10.0))
    assert metrics.volume_error(5.0, 0.0) == (5.0, None)


def _sphere(shape: tuple[int, ...], spacing: tuple[float, ...], centre: tuple[float, ...],
            radius: float) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                       indexing="ij")
    return np.asarray(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
                      <= radius**2)


def test_hd95_of_shifted_spheres_in_mm() -> None:
    """Two spheres of radius r, centres d apart along the first axis. A surface point at polar
    angle theta of one lies | sqrt(r^2 - 2 r d cos(theta) + d^2) - r | from the other's surface,
    and cos(theta) is uniform on the sphere's surface (Archimedes). Solving for the distance x:
    P(distance >= x) = 1 - x / d, so the distance is uniform on [0, d] and HD95 = 0.95 d exactly,
    whatever r. The voxels are anisotropic (1.0 x 0.5 x 0.5 mm): the spacing must be used."""
    r, d = 12.0, 4.0
    spacing = (1.0, 0.5, 0.5)
    shape = (40, 64, 64)
    a = _sphere(shape, spacing, (18.0, 16.0, 16.0), r)
    b = _sphere(shape, spacing, (18.0 + d, 16.0, 16.0), r)
    u = np.linspace(-1.0, 1.0, 200_001)
    expected = float(np.percentile(np.abs(np.sqrt(r * r - 2 * r * d * u + d * d) - r), 95))
    got = metrics.hd95(a, b, spacing)
    assert expected == pytest.approx(0.95 * d, abs=1e-3)  # the formula agrees with the hand work
    assert got == pytest.approx(expected, abs=0.5)  # voxel surfaces: within the coarsest voxel
    # concentric spheres: every surface point is exactly the difference of the radii away
    assert metrics.hd95(_sphere(shape, spacing, (18.0, 16.0, 16.0), 9.0), a, spacing) == \
        pytest.approx(3.0, abs=0.5)
    # the same voxels with twice the spacing: twice the distance (the spacing is used, in mm)
    assert metrics.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(2 * got, rel=1e-9)
    assert metrics.hd95(a, a, spacing) == 0.0
    assert metrics.hd95(a, np.zeros_like(a), spacing) is None


def test_classification_rates_and_auc_on_a_tiny_set() -> None:
    truth = [0, 0, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0]
    assert metrics.accuracy(truth, predicted) == pytest.approx(3 / 5)
    assert metrics.confusion_matrix(truth, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 0],
                                                                      [1, 0, 0]]
    assert metrics.sensitivity(truth, predicted, 1) == 1.0  # both 1s found
    assert metrics.specificity(truth, predicted, 1) == pytest.approx(2 / 3)  # one 0 called 1
    assert metrics.sensitivity(truth, predicted, 2) == 0.0
    assert metrics.sensitivity([0, 0], [0, 0], 1) is None  # no positive case: not defined
    assert metrics.specificity([1, 1], [1, 1], 1) is None
    # 4 positive-negative pairs: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert metrics.roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.roc_auc([True, False], [0.5, 0.5]) == 0.5  # a tie counts half
    assert metrics.roc_auc([True, True], [0.2, 0.9]) is None


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean() -> None:
    values = [0.91, 0.93, 0.95, 0.90, 0.97, 0.94]
    first = metrics.mean_with_ci(values)
    assert first == metrics.mean_with_ci(values)  # fixed seed: the same interval on a rerun
    lo, hi = first["ci95"]  # type: ignore[misc]
    assert lo < first["mean"] < hi  # type: ignore[operator]
    assert min(values) <= lo and hi <= max(values)
    assert metrics.mean_with_ci([0.5])["ci95"] == [0.5, 0.5]  # one case: no spread to show
    assert metrics.mean_with_ci([]) == {"mean": None, "ci95": None, "n": 0}


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
def test_seg_reference_is_read_onto_the_series_voxels(tmp_path: Path) -> None:
    """A real CT series (pydicom-data's head CT slice, 4 positions) and a highdicom SEG of a
    known mask on it: the case reader returns that mask on the volume's voxels."""
    paths = ct_series(tmp_path / "image", count=4)
    sources = [pydicom.dcmread(p) for p in paths]
    mask = np.zeros((4, sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[1:3, 100:200, 150:260] = True
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="Region",
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("12738006", "SCT", "Brain"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "reference.dcm")
    manifest = load_manifest(REPO / "models" / "brain-mask")
    image = load_image(tmp_path / "image", manifest, lambda ds: ds)
    assert image.volume.array.shape == mask.shape
    reference = load_reference(tmp_path / "reference.dcm", image)
    order = [str(s.SOPInstanceUID) for s in sources]
    expected = mask[[order.index(u) for u in image.source_uids]]
    assert np.array_equal(reference > 0, expected)
    # a SEG needs a DICOM series; a NIfTI image has no instances to match its frames to
    no_instances = type(image)(image.volume)
    with pytest.raises(CaseError, match="needs a DICOM image series"):
        load_reference(tmp_path / "reference.dcm", no_instances)


def test_nifti_reference_is_mapped_onto_a_dicom_series(tmp_path: Path) -> None:
    """A NIfTI label map on the same grid as a real CT series, stored the NIfTI way round (i
    along the columns, j along the rows, k along the slices, RAS+): read back onto the series'
    voxels through patient coordinates. A map that covers only part of the series is refused."""
    ct_series(tmp_path / "image", count=4)
    manifest = load_manifest(REPO / "models" / "brain-mask")
    image = load_image(tmp_path / "image", manifest, lambda ds: ds)
    g = image.volume.geometry
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = lps_to_ras @ np.array(g.row_direction) * g.spacing[2]
    affine[:3, 1] = lps_to_ras @ np.array(g.column_direction) * g.spacing[1]
    affine[:3, 2] = lps_to_ras @ np.array(g.normal) * g.spacing[0]
    affine[:3, 3] = lps_to_ras @ np.array(g.origin)
    labels = np.zeros(image.volume.array.shape, dtype=np.uint8)  # (slices, rows, columns)
    labels[1:3, 100:200, 150:260] = 1
    labels[3, 10:20, 30:40] = 2
    nibabel.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine).to_filename(
        tmp_path / "reference.nii.gz")
    assert np.array_equal(load_reference(tmp_path / "reference.nii.gz", image), labels)

    nibabel.Nifti1Image(np.transpose(labels[:2], (2, 1, 0)), affine).to_filename(
        tmp_path / "part.nii.gz")
    with pytest.raises(CaseError, match=r"part.nii.gz: does not cover the image \(slice 3"):
        load_reference(tmp_path / "part.nii.gz", image)
