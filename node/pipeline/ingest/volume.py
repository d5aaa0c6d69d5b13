"""A NIfTI-1 volume (.nii or .nii.gz) becomes an MR (default) or CT image series.

nibabel reads the file (header, scaling, affine). The affine maps voxel indices to RAS+
millimetres; DICOM's patient coordinates are LPS+, so x and y change sign (PS3.3 C.7.6.2.1.1).
Each slice k of the third axis becomes one image whose columns run along the first axis and
rows along the second: Image Orientation (Patient) is the two in-plane axes' unit vectors,
Image Position (Patient) is voxel (0, 0, k), Pixel Spacing is (row spacing, column spacing) =
(|axis 2|, |axis 1|), Slice Thickness and Spacing Between Slices are |axis 3|. An MR series
is scaled into 12 bits (the MR Image IOD has no rescale); a CT series keeps Hounsfield units
through Rescale Intercept -1024, Slope 1.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import nibabel
import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node import __version__
from node.core.errors import PermanentError
from node.pipeline.ingest.details import PAIRED_BODY_PARTS, VOLUME_MODALITIES, Details

#: most bytes a .nii.gz may expand to
MAX_NIFTI_BYTES = 2 * 1024**3
#: most slices one volume may have
MAX_SLICES = 4096

_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_LPS = np.array([-1.0, -1.0, 1.0])


class BadVolume(PermanentError):
    """A NIfTI file that could not be read or is not a 3D volume."""


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_NIFTI_BYTES + 1)
    except zlib.error:
        raise BadVolume("the .nii.gz could not be decompressed") from None
    if len(out) > MAX_NIFTI_BYTES:
        raise BadVolume("the .nii.gz expands past the size limit")
    return out


def _load(data: bytes, gzipped: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = _gunzip(data) if gzipped else data
    from node.pipeline.ingest.detect import is_nifti1

    if not is_nifti1(raw):
        raise BadVolume("not a NIfTI-1 single file (.nii) after decompression")
    try:
        img = nibabel.Nifti1Image.from_bytes(raw)
        volume = np.asarray(img.get_fdata(dtype=np.float32))
    except (nibabel.filebasedimages.ImageFileError, ValueError, OSError, EOFError) as exc:
        raise BadVolume(f"the NIfTI file could not be read ({type(exc).__name__})") from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3 or volume.shape[2] > MAX_SLICES or min(volume.shape) < 1:
        raise BadVolume(f"not a 3D volume (shape {volume.shape})")
    if not np.isfinite(volume).all():
        volume = np.nan_to_num(volume)
    return volume, np.asarray(img.affine, dtype=float)


def _ds(value: float) -> str:
    return f"{value:.6g}"


def image_series(data: bytes, *, gzipped: bool, details: Details,
                 study_uid: str) -> list[Dataset]:
    """One image per slice, in slice order (Instance Number 1 = voxel k = 0)."""
    modality = details.modality or "MR"
    if modality not in VOLUME_MODALITIES:
        raise BadVolume(f"a NIfTI volume becomes MR or CT, not {modality}")
    volume, affine = _load(data, gzipped)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing <= 0).any():
        raise BadVolume("the NIfTI affine is degenerate")
    row_dir = axes[:, 0] / spacing[0] * _LPS
    col_dir = axes[:, 1] / spacing[1] * _LPS
    if modality == "CT":
        stored = np.clip(np.rint(volume) + 1024, 0, 65535).astype(np.uint16)
    else:
        low, high = float(volume.min()), float(volume.max())
        scale = 4095.0 / (high - low) if high > low else 0.0
        stored = np.rint((volume - low) * scale).astype(np.uint16)
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.now()
    out = []
    for k in range(volume.shape[2]):
        position = (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3] * _LPS
        pixels = np.ascontiguousarray(stored[:, :, k].T)
        out.append(_image(details, modality, pixels, study_uid, series_uid, frame_uid, now,
                          k + 1, [*row_dir, *col_dir], position, spacing))
    return out


def _image(details: Details, modality: str, pixels: np.ndarray, study_uid: str,
           series_uid: str, frame_uid: str, now: datetime, number: int,
           orientation: list[float], position: np.ndarray, spacing: np.ndarray) -> Dataset:
    sop_class = UID(_CT_STORAGE if modality == "CT" else _MR_STORAGE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName = details.patient_id, details.patient_name
    ds.PatientBirthDate, ds.PatientSex = details.birth_date, details.sex
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName, ds.StudyID = "", ""
    ds.AccessionNumber = details.accession
    if details.study_description:
        ds.StudyDescription = details.study_description
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, 1, "Imported NIfTI volume"
    ds.Laterality = ""  # 2C: present and empty (no paired body part is known)
    if details.body_part:
        ds.BodyPartExamined = details.body_part
        if details.body_part not in PAIRED_BODY_PARTS:
            del ds.Laterality  # 2C: absent for an unpaired body part
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer, ds.SoftwareVersions = "dicom-node", f"dicom-node {__version__}"
    ds.InstanceNumber, ds.PatientOrientation = number, ""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else [
        "DERIVED", "SECONDARY", "OTHER"]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.SliceLocation = _ds(float(np.dot(position, np.cross(orientation[:3], orientation[3:]))))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.PixelRepresentation = 16, 0
    if modality == "CT":
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.KVP, ds.AcquisitionNumber = "", 1
    else:
        ds.BitsStored, ds.HighBit = 12, 11
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.EchoTrainLength = "3D", "", ""
        ds.RepetitionTime = ""
    ds.PixelData = pixels.tobytes()
    return ds


