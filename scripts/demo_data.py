#!/usr/bin/env python3
"""Write the demo studies as DICOM files, ready to send to Orthanc or to the node.

Two studies of two made-up demo patients (every identifier starts with DEMO; birth dates and
accession numbers are invented; nobody real is meant):

- ``mr-brain/``: a T1 brain MRI, the Colin27 single-subject template (``ch2.nii.gz`` from
  Debian's ``mricron-data``, BSD-3, 181x217x181 voxels of 1 mm) as an MR Image Storage series,
  one instance per axial slice, with its true geometry (LPS patient coordinates);
- ``ct-chest/`` (default): a chest CT of the synthetic chest phantom of the tests
  (``tests/models/chest_phantom.py``: body, table, two lungs with known volumes, trachea,
  bronchi, vessels, emphysema; synthetic because no real chest CT volume installs offline),
  with the acquisition header of a real CT slice (pydicom-data's ``693_UNCR.dcm``, MIT); the
  lung model runs on it;
- ``ct-head/`` (``--head-ct``, instead): a head CT series built from that one real slice: its
  pixel data and header on every slice, 5 mm apart.

``demo.json`` beside them lists patients, accession numbers, UIDs and files. UIDs are the same
on every run unless ``--new-uids`` is given (the node and Orthanc ignore an instance they
already have, so use it to run the demo again on the same servers).

    .venv/bin/python scripts/demo_data.py [--out var/demo] [--ct-slices 32] [--new-uids]
    /usr/bin/storescu +sd +r -aec ORTHANC 127.0.0.1 4242 var/demo

Needs numpy and pydicom (installed with the node) and, for the CT, pydicom-data (installed with
the test extras: ``pip install -e '.[test]'`` or ``pip install pydicom-data``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parent.parent
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
CT_SLICE = "693_UNCR.dcm"
#: Root for generated UIDs (pydicom's root for UIDs made by its users).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
DEMO_NOTE = "Demo patient: made-up identity for dicom-node demonstrations, not a real person"


@dataclass(frozen=True)
class DemoPatient:
    """The identity a demo study carries (all fake)."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    accession: str
    study_id: str
    study_description: str
    study_date: str
    study_time: str


MR_PATIENT = DemoPatient(
    name="DEMO^Alex", patient_id="DEMO-000127", birth_date="19680412", sex="M",
    accession="DEMO-MR-0001", study_id="DEMO-MR1", study_description="DEMO MRI brain T1",
    study_date="20250115", study_time="091500",
)
CT_PATIENT = DemoPatient(
    name="DEMO^Sam", patient_id="DEMO-000310", birth_date="19590723", sex="F",
    accession="DEMO-CT-0002", study_id="DEMO-CT1", study_description="DEMO CT head",
    study_date="20250116", study_time="143000",
)
CHEST_PATIENT = DemoPatient(
    name="DEMO^Robin", patient_id="DEMO-000452", birth_date="19511102", sex="F",
    accession="DEMO-CT-0003", study_id="DEMO-CT2", study_description="DEMO CT chest",
    study_date="20250117", study_time="101500",
)


class Uids:
    """UIDs of one demo study: the same on every run for a seed, or new ones (seed None)."""

    def __init__(self, seed: str | None) -> None:
        self.seed = seed

    def __call__(self, *parts: object) -> str:
        if self.seed is None:
            return str(generate_uid(UID_PREFIX))
        return str(generate_uid(UID_PREFIX, entropy_srcs=[self.seed, *map(str, parts)]))


# ---- NIfTI-1 (.nii / .nii.gz), read with the standard library and numpy ----------------------

NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


Header = Callable[[str, int], tuple[Any, ...]]  # (struct format, offset) -> values


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array (x, y, z) and the voxel-to-RAS affine (4x4, mm) of a 3D NIfTI-1 file."""
    with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as f:
        raw = f.read()
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348:
        raise ValueError(f"{path} is not a NIfTI-1 file")

    def header(fmt: str, offset: int) -> tuple[Any, ...]:
        return struct.unpack_from(endian + fmt, raw, offset)

    dims = [int(d) for d in header("8h", 40)]
    if dims[0] < 3 or any(d > 1 for d in dims[4 : dims[0] + 1]):
        raise ValueError(f"{path} is not a single 3D volume")
    dtype = np.dtype(endian + NIFTI_TYPES[int(header("h", 70)[0])])
    shape = tuple(dims[1:4])
    data = np.frombuffer(raw, dtype, int(np.prod(shape)), offset=int(header("f", 108)[0]))
    data = data.reshape(shape, order="F")
    slope, inter = header("2f", 112)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * slope + inter
    return data, nifti_affine(header)


def nifti_affine(header: Header) -> np.ndarray:
    """Voxel-to-RAS: the sform if set, else the qform (quaternion), else the voxel sizes."""
    pixdim = header("8f", 76)
    qform_code, sform_code = header("2h", 252)
    affine = np.eye(4)
    if sform_code > 0:
        affine[:3] = np.array(header("12f", 280)).reshape(3, 4)
    elif qform_code > 0:
        b, c, d, *offset = header("6f", 256)
        a = float(np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d))))
        rotation = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c],
        ])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
        affine[:3, 3] = offset
    else:  # Analyze 7.5: voxel sizes only
        affine[:3, :3] = np.diag(pixdim[1:4])
    return affine


# ---- MR series from a NIfTI volume ------------------------------------------------------------


@dataclass(frozen=True)
class SliceGeometry:
    row_direction: tuple[float, ...]  # along a row (increasing column index)
    column_direction: tuple[float, ...]  # down a column (increasing row index)
    pixel_spacing: tuple[float, float]  # between rows, between columns
    slice_spacing: float
    origin: np.ndarray  # LPS position of voxel (0, 0, 0)
    step: np.ndarray  # LPS move from one slice to the next


def radiological(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, SliceGeometry]:
    """Flip the in-plane axes so rows run toward the patient's left and columns toward the back
    (how axial images are shown), and give the DICOM geometry of the slices along axis 2."""
    lps = RAS_TO_LPS @ affine
    for axis in (0, 1):
        column = lps[:3, axis]
        if column[int(np.argmax(np.abs(column)))] < 0:
            data = np.flip(data, axis)
            lps = lps.copy()
            lps[:3, 3] += column * (data.shape[axis] - 1)
            lps[:3, axis] = -column
    sizes = np.linalg.norm(lps[:3, :3], axis=0)
    geometry = SliceGeometry(
        row_direction=tuple(float(v) for v in lps[:3, 0] / sizes[0]),
        column_direction=tuple(float(v) for v in lps[:3, 1] / sizes[1]),
        pixel_spacing=(float(sizes[1]), float(sizes[0])),
        slice_spacing=float(sizes[2]),
        origin=lps[:3, 3].copy(),
        step=lps[:3, 2].copy(),
    )
    return data, geometry


def _ds(value: float) -> str:
    """A DS value of at most 16 characters."""
    return f"{value:.6g}"


def _patient_study(ds: Dataset, patient: DemoPatient, study_uid: str) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "DEMO"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientComments = DEMO_NOTE
    ds.PatientAge = f"{_age(patient):03d}Y"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = patient.study_date, patient.study_time
    ds.AccessionNumber = patient.accession
    ds.StudyID = patient.study_id
    ds.StudyDescription = patient.study_description
    ds.ReferringPhysicianName = "DEMO^Referrer"
    ds.InstitutionName = "DEMO Hospital"


def _age(patient: DemoPatient) -> int:
    born, seen = patient.birth_date, patient.study_date
    return int(seen[:4]) - int(born[:4]) - (1 if seen[4:] < born[4:] else 0)


def _mr_header(patient: DemoPatient, uids: Uids, geometry: SliceGeometry) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    _patient_study(ds, patient, uids("study"))
    ds.Modality = "MR"
    ds.SeriesInstanceUID = uids("series")
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = patient.study_date, patient.study_time
    ds.SeriesDescription = "T1 3D axial (Colin27 template)"
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uids("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = ""
    ds.AcquisitionDate, ds.AcquisitionTime = patient.study_date, patient.study_time
    ds.ContentDate, ds.ContentTime = patient.study_date, patient.study_time
    ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
    ds.DerivationDescription = "Average of 27 registered T1 scans (Colin27 template)"
    ds.BurnedInAnnotation = "NO"
    # Colin27 was acquired as a T1-weighted 3D spoiled gradient echo at 1.5 T
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 18.0, 10.0, 1
    ds.FlipAngle, ds.MagneticFieldStrength, ds.ImagedNucleus = 30.0, 1.5, "1H"
    ds.NumberOfAverages = 27
    orientation = geometry.row_direction + geometry.column_direction
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(geometry.slice_spacing)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _to_12_bit(data: np.ndarray) -> np.ndarray:
    """Whole numbers in 0..4095 are kept as they are; anything else is scaled into that range."""
    if np.issubdtype(data.dtype, np.integer) and data.min() >= 0 and data.max() <= 4095:
        return data.astype(np.uint16)
    low, high = float(data.min()), float(data.max())
    scaled = (data.astype(np.float64) - low) * (4095.0 / max(high - low, 1e-9))
    return np.rint(scaled).astype(np.uint16)


def mr_series(nifti: Path, out_dir: Path, patient: DemoPatient, uids: Uids) -> list[Path]:
    """One MR Image Storage instance per axial slice of a 3D NIfTI volume."""
    data, affine = read_nifti(nifti)
    data, geometry = radiological(_to_12_bit(data), affine)
    header = _mr_header(patient, uids, geometry)
    low, high = np.percentile(data[data > 0], [1, 99.5]) if data.any() else (0, 4095)
    header.WindowCenter, header.WindowWidth = _ds((low + high) / 2), _ds(max(high - low, 1))
    normal = np.cross(geometry.row_direction, geometry.column_direction)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(data.shape[2]):
        ds = Dataset()
        ds.update(header)
        ds.SOPInstanceUID = uids("instance", k)
        ds.InstanceNumber = k + 1
        position = geometry.origin + k * geometry.step
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        pixels = np.ascontiguousarray(data[:, :, k].T)  # rows follow axis 1, columns axis 0
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        paths.append(_save(ds, out_dir / f"MR{k + 1:05d}.dcm"))
    return paths


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


# ---- CT series from one real slice ------------------------------------------------------------


def ct_slice_path() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(CT_SLICE, download=False)
    if path is None:
        raise FileNotFoundError(f"{CT_SLICE} is missing: pip install pydicom-data")
    return Path(str(path))


def _ct_header(patient: DemoPatient, uids: Uids) -> Dataset:
    ds = pydicom.dcmread(ct_slice_path())
    for element in list(ds):
        if element.tag.element == 0 or element.tag.is_private:  # group lengths, private tags
            del ds[element.tag]
    for keyword in ("PatientIdentityRemoved", "ScheduledProcedureStepID",
                    "InstanceCreationDate", "InstanceCreationTime"):
        if keyword in ds:
            delattr(ds, keyword)
    _patient_study(ds, patient, uids("study"))
    ds.SeriesInstanceUID = uids("series")
    ds.SeriesDescription = "DEMO head 5 mm"
    ds.SeriesDate, ds.SeriesTime = patient.study_date, patient.study_time
    ds.ContentDate, ds.ContentTime = patient.study_date, patient.study_time
    ds.AcquisitionDate, ds.AcquisitionTime = patient.study_date, patient.study_time
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = uids("frame-of-reference")
    return ds


def ct_series(out_dir: Path, count: int, patient: DemoPatient, uids: Uids) -> list[Path]:
    """``count`` CT instances of one real slice, ``SliceThickness`` apart along its normal."""
    ds = _ct_header(patient, uids)
    spacing = float(ds.SliceThickness)
    ds.SpacingBetweenSlices = _ds(spacing)
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = uids("instance", i)
        ds.InstanceNumber = i + 1
        position = origin + i * spacing * normal
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        paths.append(_save(ds, out_dir / f"CT{i + 1:05d}.dcm"))
    return paths


def chest_ct_series(out_dir: Path, slices: int, patient: DemoPatient, uids: Uids,
                    size: int = 256) -> list[Path]:
    """The chest phantom as an axial CT series (HU stored with intercept -1024)."""
    sys.path.insert(0, str(REPO))
    from tests.models.chest_phantom import chest_phantom

    volume = chest_phantom(slices=slices, size=size).volume
    g = volume.geometry
    ds = _ct_header(patient, uids)
    ds.SeriesDescription, ds.BodyPartExamined = "DEMO chest phantom", "CHEST"
    ds.StudyDescription = patient.study_description
    ds.Rows, ds.Columns = volume.array.shape[1:]
    ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[2])]
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(g.spacing[0])
    ds.ImageOrientationPatient = [_ds(v) for v in (*g.row_direction, *g.column_direction)]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, plane in enumerate(volume.array):
        ds.SOPInstanceUID = uids("instance", i)
        ds.InstanceNumber = i + 1
        position = [g.origin[k] + i * g.spacing[0] * g.normal[k] for k in range(3)]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position[2])
        ds.PixelData = (np.rint(plane) + 1024).astype(np.int16).tobytes()
        paths.append(_save(ds, out_dir / f"CT{i + 1:05d}.dcm"))
    return paths


# ---- the command ------------------------------------------------------------------------------


def write_demo(
    out: Path, *, ct_slices: int = 120, new_uids: bool = False, head_ct: bool = False
) -> list[dict[str, object]]:
    """Write both demo studies under ``out``; returns what ``demo.json`` lists."""

    def uids(folder: str) -> Uids:
        return Uids(None if new_uids else f"dicom-node demo {folder}")

    mr_files = mr_series(COLIN27, out / "mr-brain", MR_PATIENT, uids("mr-brain"))
    written = {"mr-brain": (MR_PATIENT, mr_files)}
    if head_ct:
        written["ct-head"] = (CT_PATIENT, ct_series(out / "ct-head", ct_slices, CT_PATIENT,
                                                    uids("ct-head")))
    else:
        written["ct-chest"] = (CHEST_PATIENT, chest_ct_series(
            out / "ct-chest", ct_slices, CHEST_PATIENT, uids("ct-chest")))
    studies: list[dict[str, object]] = []
    for folder, (patient, files) in written.items():
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        studies.append({"folder": folder, **asdict(patient),
                        "study_instance_uid": str(first.StudyInstanceUID),
                        "instances": len(files)})
    (out / "demo.json").write_text(json.dumps(studies, indent=2) + "\n", encoding="utf-8")
    return studies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "var" / "demo",
                        help="folder to write into (default: var/demo)")
    parser.add_argument("--ct-slices", type=int, default=120, help="CT slices (default: 120)")
    parser.add_argument("--head-ct", action="store_true",
                        help="the head CT from one real slice instead of the chest phantom")
    parser.add_argument("--new-uids", action="store_true",
                        help="new study, series and instance UIDs instead of the fixed ones")
    args = parser.parse_args(argv)
    if not COLIN27.exists():
        print(f"{COLIN27} is missing: apt-get install mricron-data", file=sys.stderr)
        return 2
    try:
        studies = write_demo(args.out, ct_slices=args.ct_slices, new_uids=args.new_uids,
                             head_ct=args.head_ct)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    for study in studies:
        print(f"{args.out / str(study['folder'])}: {study['instances']} instances, patient "
              f"{study['name']} ({study['patient_id']}), accession {study['accession']}")
    print(f"send them: /usr/bin/storescu +sd +r -aec ORTHANC 127.0.0.1 4242 {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
