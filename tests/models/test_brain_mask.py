"""The brain-mask model on a real T1 MRI sent as a real DICOM MR series.

Data: the Colin27 single-subject T1 (``ch2.nii.gz``, 181x217x181, 1 mm) and its brain-extracted
reference (``ch2bet.nii.gz``) from Debian's ``mricron-data`` (BSD-3). The test writes ch2 as one
MR Image Storage instance per axial slice (LPS, standard axial orientation), reads the series back
with pydicom, runs the model and compares its mask with ch2bet, which it maps onto the series'
voxels through patient coordinates (independently of how the slices were written).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from node.core.contract import Geometry, Volume
from node.core.errors import ConfigError
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.loaders import import_from
from node.pipeline.infer.registry import load_model

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "brain-mask"
MRICRON = Path("/usr/share/mricron/templates")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_pp = {name: import_from(MODEL_DIR, f"postprocess.py:{name}", "brain-mask") for name in (
    "Postprocess", "read_postprocess", "flip_averaged", "largest_component", "fill_holes")}


def _nifti(name: str) -> nib.Nifti1Image:
    path = MRICRON / name
    if not path.exists():
        pytest.fail(f"{path} is missing: apt-get install -y mricron-data (Colin27 T1 and ch2bet)")
    return nib.load(path)


def _write_series(image: nib.Nifti1Image, folder: Path, plane: str = "axial") -> None:
    """One MR instance per axial (or sagittal) slice of the RAS-ordered NIfTI image.

    Axial: rows run posterior, columns run left (LPS axial). Sagittal: one slice per NIfTI x,
    rows run posterior, columns run down (LPS sagittal, as scanners write it).
    """
    data = np.asarray(image.dataobj)
    nx, ny, nz = data.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing = [float(z) for z in image.header.get_zooms()[:3]]
    if plane == "axial":
        row_dir, col_dir = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)  # LPS: toward left, toward posterior
        count, pixel_spacing, thickness = nz, [spacing[1], spacing[0]], spacing[2]
    elif plane == "sagittal":
        row_dir, col_dir = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)  # toward posterior, toward feet
        count, pixel_spacing, thickness = nx, [spacing[2], spacing[1]], spacing[0]
    else:
        raise ValueError(f"plane must be axial or sagittal, not {plane!r}")
    order = list(range(count))
    random.Random(0).shuffle(order)  # written out of order: the reader must sort
    for number, k in enumerate(order, start=1):
        if plane == "axial":
            # pixel (r, c) is voxel (nx-1-c, ny-1-r, k): LPS x grows with c, LPS y with r
            pixels = data[::-1, ::-1, k].T.astype(np.int16)
            corner = np.array([nx - 1, ny - 1, k, 1.0])
        else:
            # pixel (r, c) is voxel (k, ny-1-c, nz-1-r): LPS y grows with c, LPS z falls with r
            pixels = data[k, ::-1, ::-1].T.astype(np.int16)
            corner = np.array([k, ny - 1, nz - 1, 1.0])
        position = RAS_TO_LPS @ (image.affine @ corner)[:3]
        ds = _mr_slice(study, series, frame, pixels)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.PixelSpacing = pixel_spacing  # between rows, between columns
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SliceLocation = f"{np.dot(position, np.cross(row_dir, col_dir)):.4f}"
        ds.ImageType = ["DERIVED", "PRIMARY", plane.upper()]
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def _mr_slice(study: str, series: str, frame: str, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "Colin27^T1", "COLIN27"
    ds.PatientBirthDate, ds.PatientSex = "", "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250101", "120000", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber = "", "1", 1
    ds.Manufacturer, ds.PositionReferenceIndicator = "", ""
    ds.BodyPartExamined, ds.SeriesDescription = "HEAD", "T1 Colin27 (mricron-data)"
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
    ds.MRAcquisitionType, ds.EchoTrainLength = "3D", 1
    ds.RepetitionTime, ds.EchoTime = 18.0, 10.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PixelData = pixels.tobytes()
    return ds


def _read_series(folder: Path) -> Volume:
    """The node's own volume assembly, on the instances in file-system order."""
    return assemble([pydicom.dcmread(p) for p in folder.glob("*.dcm")])


def _resample_onto(
    image: nib.Nifti1Image, geometry: Geometry, shape: tuple[int, ...]
) -> np.ndarray:
    """Nearest-neighbour lookup of ``image`` at each voxel centre of the DICOM volume."""
    data = np.asarray(image.dataobj)
    world_to_voxel = np.linalg.inv(image.affine)
    n_s, n_r, n_c = shape
    r, c = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    out = np.zeros(shape, dtype=data.dtype)
    origin, normal = np.array(geometry.origin), np.array(geometry.normal)
    row_dir, col_dir = np.array(geometry.row_direction), np.array(geometry.column_direction)
    ds_, dr, dc = geometry.spacing
    for s in range(n_s):
        lps = (origin + s * ds_ * normal)[None, None] + (c * dc)[..., None] * row_dir
        lps = lps + (r * dr)[..., None] * col_dir
        ras = lps @ RAS_TO_LPS.T
        ijk = np.rint(ras @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < data.shape), axis=-1)
        i, j, k = (ijk[..., n] for n in range(3))
        out[s][inside] = data[i[inside], j[inside], k[inside]]
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
def test_brain_mask_on_colin27_dicom_series(tmp_path: Path) -> None:
    t1, bet = _nifti("ch2.nii.gz"), _nifti("ch2bet.nii.gz")
    _write_series(t1, tmp_path)
    volume = _read_series(tmp_path)
    assert volume.array.shape == (181, 217, 181)

    result = load_model(MODEL_DIR, "cpu").model.predict(volume)

    (segment,) = result.segments
    (measurement,) = result.measurements
    reference = _resample_onto(bet, volume.geometry, volume.array.shape) > 0
    assert np.array_equal(_resample_onto(t1, volume.geometry, volume.array.shape), volume.array)
    dice = _dice(segment.mask, reference)
    print(
        f"\nbrain-mask on Colin27: Dice {dice:.4f} against ch2bet, brain volume "
        f"{measurement.value:.1f} mL (ch2bet {reference.sum() / 1000:.1f} mL), timings "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings_s.items())
    )
    assert segment.mask.dtype == np.bool_ and segment.mask.shape == volume.array.shape
    assert segment.geometry == volume.geometry
    assert (segment.label, segment.name, segment.type.value) == (1, "Brain", "12738006")
    assert (measurement.name, measurement.unit, measurement.concept.value) == (
        "Brain volume",
        "mL",
        "118565006",
    )
    assert measurement.value == pytest.approx(segment.mask.sum() * volume.geometry.voxel_volume_ml)
    # measured 0.9364 with the manifest's post-processing (largest component, hole filling),
    # 0.9364 without it (see models/brain-mask/README.md)
    assert dice >= 0.933
    assert ndimage.label(segment.mask, structure=np.ones((3, 3, 3)))[1] == 1
    assert np.array_equal(ndimage.binary_fill_holes(segment.mask), segment.mask)
    # Colin27 lies in MNI space, larger than an average head: ch2bet itself is 1737 mL, and
    # deepbrain's mask runs about 1.4 mm wider than BET's (1948 mL with deepbrain's own code).
    ref_ml = reference.sum() * volume.geometry.voxel_volume_ml
    assert 1000.0 <= measurement.value <= 2100.0
    assert abs(measurement.value - ref_ml) <= 0.15 * ref_ml
    assert set(result.timings_s) == {"preprocess", "forward", "postprocess"}


@pytest.mark.slow
def test_flip_averaging_on_colin27_sagittal_series(tmp_path: Path) -> None:
    """The sagittal series, with the manifest's steps and then with flip averaging added."""
    _write_series(_nifti("ch2.nii.gz"), tmp_path, "sagittal")
    volume = _read_series(tmp_path)
    assert volume.array.shape == (181, 181, 217)
    reference = _resample_onto(_nifti("ch2bet.nii.gz"), volume.geometry, volume.array.shape) > 0
    assert np.array_equal(
        _resample_onto(_nifti("ch2.nii.gz"), volume.geometry, volume.array.shape), volume.array
    )
    model = load_model(MODEL_DIR, "cpu").model
    assert model.postprocess == _pp["Postprocess"](False, True, True)  # as the manifest says
    plain = _dice(model.predict(volume).segments[0].mask, reference)

    model.postprocess = _pp["Postprocess"](True, True, True)
    result = model.predict(volume)
    flipped = _dice(result.segments[0].mask, reference)
    print(f"\nbrain-mask on sagittal Colin27: Dice {plain:.4f}, with flip averaging {flipped:.4f}")
    assert plain >= 0.925  # measured 0.9282
    assert flipped >= 0.931  # measured 0.9339
    assert flipped - plain >= 0.003
    assert 1700.0 <= result.measurements[0].value <= 2000.0  # measured 1970.6 mL


def test_flip_averaging_is_flip_equivariant() -> None:
    """Averaging over all mirrorings gives the mirror image of the result for a mirrored input:
    it fails if a probability is not flipped back onto the input's grid."""
    network = load_model(MODEL_DIR, "cpu").model.network
    t1 = torch.as_tensor(np.asarray(_nifti("ch2.nii.gz").dataobj), dtype=torch.float32)
    x = torch.nn.functional.interpolate(t1[None, None], size=(48, 56, 48), mode="trilinear")
    x = x / x.max()  # a small Colin27: a real head, 5% of the 128^3 cost
    with torch.inference_mode():
        plain = network(x)
        averaged = _pp["flip_averaged"](network, x)
        mirrored = torch.flip(_pp["flip_averaged"](network, torch.flip(x, (2, 4))), (2, 4))
    torch.testing.assert_close(mirrored, averaged, rtol=0, atol=1e-6)
    # the network alone is not equivariant: averaging changes its answer
    assert float((plain - averaged).abs().max()) > 0.05
    assert float(averaged.min()) >= 0.0 and float(averaged.max()) <= 1.0


def test_largest_component_counts_corners_as_connected() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[4, 4, 4] = True  # touches the cube by a corner only: the same component (26-connected)
    mask[7:9, 7:9, 7:9] = True  # 8 voxels apart: dropped
    kept = _pp["largest_component"](mask)
    assert kept.sum() == 28 and kept[4, 4, 4] and not kept[7:9, 7:9, 7:9].any()
    assert not _pp["largest_component"](np.zeros((3, 3, 3), dtype=bool)).any()


def test_fill_holes_in_3d_and_per_slice() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[1:11, 1:11, 1:11] = True
    mask[4:6, 4:6, 4:6] = False  # a closed cavity: filled in 3D
    mask[1:9, 8, 8] = False  # a tunnel open to the outside in 3D, enclosed in each slice of axis 0
    filled = _pp["fill_holes"](mask)
    assert filled[4:6, 4:6, 4:6].all()
    assert not ndimage.binary_fill_holes(mask)[1:9, 8, 8].any()  # 3D alone leaves the tunnel
    assert filled[1:9, 8, 8].all()  # enclosed within each slice of axis 0: filled per slice
    assert not filled[0, 8, 8]  # outside the cube: stays background
    assert not filled[11].any() and not filled[:, 0].any()


def test_postprocess_settings_are_checked(tmp_path: Path) -> None:
    folder = tmp_path / "brain-mask"
    folder.mkdir()
    manifest = (MODEL_DIR / "manifest.toml").read_text(encoding="utf-8")
    assert _pp["read_postprocess"](MODEL_DIR) == _pp["Postprocess"](False, True, True)

    (folder / "manifest.toml").write_text(
        manifest.replace("fill_holes = true", 'fill_holes = "yes"\nlargest_componnet = true'),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        _pp["read_postprocess"](folder)
    assert info.value.problems == [
        "models/brain-mask/manifest.toml [postprocess]: unknown key 'largest_componnet' "
        "(known: flip_average, largest_component, fill_holes)",
        "models/brain-mask/manifest.toml [postprocess].fill_holes: must be true or false",
    ]
    start, end = manifest.index("\n[postprocess]\n"), manifest.index("\n[selection]\n")
    head = manifest[:start] + manifest[end:]
    (folder / "manifest.toml").write_text(head, encoding="utf-8")
    assert _pp["read_postprocess"](folder) == _pp["Postprocess"]()  # no section: all off


def test_corrupted_weights_raise_checksum_error(tmp_path: Path) -> None:
    folder = tmp_path / "brain-mask"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    weights = folder / "brain_unet3d.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(ConfigError, match="models/brain-mask: weights checksum mismatch"):
        load_model(folder, "cpu")
