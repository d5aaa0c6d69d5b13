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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from node.core.contract import Geometry, Volume
from node.core.errors import ConfigError
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.registry import load_model

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "brain-mask"
MRICRON = Path("/usr/share/mricron/templates")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _nifti(name: str) -> nib.Nifti1Image:
    path = MRICRON / name
    if not path.exists():
        pytest.fail(f"{path} is missing: apt-get install -y mricron-data (Colin27 T1 and ch2bet)")
    return nib.load(path)


def _write_series(image: nib.Nifti1Image, folder: Path) -> None:
    """One MR instance per axial slice; rows run posterior, columns run left (LPS axial)."""
    data = np.asarray(image.dataobj)
    nx, ny, nz = data.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row_dir, col_dir = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)  # LPS: toward left, toward posterior
    spacing = [float(z) for z in image.header.get_zooms()[:3]]
    order = list(range(nz))
    random.Random(0).shuffle(order)  # written out of order: the reader must sort
    for number, k in enumerate(order, start=1):
        # pixel (r, c) is voxel (nx-1-c, ny-1-r, k): LPS x grows with c, LPS y with r
        pixels = data[::-1, ::-1, k].T.astype(np.int16)
        corner_ras = image.affine @ np.array([nx - 1, ny - 1, k, 1.0])
        position = RAS_TO_LPS @ corner_ras[:3]
        ds = _mr_slice(study, series, frame, pixels)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # between rows (y), between columns (x)
        ds.SliceThickness = spacing[2]
        ds.SpacingBetweenSlices = spacing[2]
        ds.SliceLocation = f"{position[2]:.4f}"
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
    assert dice >= 0.92
    # Colin27 lies in MNI space, larger than an average head: ch2bet itself is 1737 mL, and
    # deepbrain's mask runs about 1.4 mm wider than BET's (1948 mL with deepbrain's own code).
    ref_ml = reference.sum() * volume.geometry.voxel_volume_ml
    assert 1000.0 <= measurement.value <= 2100.0
    assert abs(measurement.value - ref_ml) <= 0.15 * ref_ml
    assert set(result.timings_s) == {"preprocess", "forward", "postprocess"}


def test_corrupted_weights_raise_checksum_error(tmp_path: Path) -> None:
    folder = tmp_path / "brain-mask"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    weights = folder / "brain_unet3d.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(ConfigError, match="models/brain-mask: weights checksum mismatch"):
        load_model(folder, "cpu")
