"""A labelled data set read from a folder: its cases, their images as volumes, their references.

The layout (also in ``dicom-node evaluate --help`` and the README):

Segmentation: one folder per case, in name order::

    DATA/<case>/image.nii | image.nii.gz | image/      (image/: one DICOM series, any file names)
    DATA/<case>/reference.nii | reference.nii.gz | reference.dcm   (reference.dcm: a DICOM SEG)

A NIfTI reference is a mask (any value above 0) for a model with one segment, a label map (the
manifest's segment labels) for several. With a NIfTI image it must have the image's shape and
affine; with a DICOM image it is mapped onto the series' voxels through patient coordinates
(nearest voxel) and must cover the series. A DICOM SEG reference needs a DICOM image: its
segment numbers are the manifest's labels, its frames are matched to the series' instances.

Classification: ``DATA/labels.csv`` with the header ``file,label``; ``file`` is relative to DATA:
a PNG or JPEG picture, a DICOM file or a folder of one DICOM series; ``label`` is the class's
index, code value or name as the model's manifest gives them (case-insensitive).

DICOM input is de-identified (the caller's ``deid`` function) before the volume is assembled:
only de-identified data reaches a model. Every problem with a case is a :class:`CaseError` with
a one-line message, so that the caller lists the case as failed and goes on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.core.contract import Geometry, Volume
from node.core.errors import PermanentError
from node.core.manifest import Manifest

LABELS_CSV = "labels.csv"
IMAGE_NAMES = ("image.nii.gz", "image.nii", "image")
REFERENCE_NAMES = ("reference.nii.gz", "reference.nii", "reference.dcm")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LPS = np.array([-1.0, -1.0, 1.0])
_AFFINE_TOLERANCE_MM = 1e-3

Deidentify = Callable[[Dataset], Dataset]


class CaseError(PermanentError):
    """One case cannot be evaluated; the message is one line naming the problem."""


class DataError(PermanentError):
    """The data folder as a whole cannot be read (no cases, no labels.csv, a bad header)."""


@dataclass(frozen=True)
class SegCase:
    name: str
    image: Path | None
    reference: Path | None


@dataclass(frozen=True)
class ClsCase:
    name: str
    image: Path | None  # None: the row names no file
    label: str


@dataclass(frozen=True)
class Image3D:
    """A case's image as the model receives it, with what is needed to place a reference."""

    volume: Volume
    #: the NIfTI affine (voxel i, j, k -> RAS mm) of a NIfTI image, else None
    affine: np.ndarray | None = None
    #: the ORIGINAL SOP Instance UIDs in slice order (DICOM input), for a SEG reference
    source_uids: tuple[str, ...] = ()


def _first(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def segmentation_cases(data: Path) -> list[SegCase]:
    """One case per sub-folder of ``data`` (hidden ones skipped), in name order."""
    if not data.is_dir():
        raise DataError(f"{data}: not a folder")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{data}: no case folders (expected DATA/<case>/image... and reference...)")
    return [SegCase(f.name, _first(f, IMAGE_NAMES), _first(f, REFERENCE_NAMES)) for f in folders]


def classification_cases(data: Path) -> list[ClsCase]:
    """The rows of ``data/labels.csv``; a case is named by its file."""
    path = data / LABELS_CSV
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__})") from None
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header 'file,label' and at least one row")
    cases = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        file, label = (row["file"] or "").strip(), (row["label"] or "").strip()
        cases.append(ClsCase(file or f"line {number}", data / file if file else None, label))
    return cases


def class_index(label: str, manifest: Manifest) -> int:
    """The position in the manifest's findings of a class given by index, code value or name."""
    wanted = label.strip().casefold()
    for position, f in enumerate(manifest.findings):
        if wanted in (str(f.index), f.concept.value.casefold(), f.name.casefold(),
                      f.concept.meaning.casefold()):
            return position
    raise CaseError(f"label {label!r} is not a class of model {manifest.name}")


# -- images -----------------------------------------------------------------------------------


def _nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nibabel.load(path)
        data = np.asarray(img.dataobj)  # type: ignore[attr-defined]
        affine = np.array(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        raise CaseError(f"{path.name}: not a readable NIfTI file ({type(exc).__name__})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path.name}: not a 3D volume (shape {data.shape})")
    return data, affine


def geometry_of_affine(affine: np.ndarray) -> Geometry:
    """The geometry of a NIfTI array read as (k, j, i): slices along its third axis, rows along
    its second, columns along its first (RAS+ to DICOM's LPS+)."""
    axes = affine[:3, :3] * _LPS[:, None]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing <= 0).any():
        raise CaseError("the NIfTI affine is degenerate")
    unit = axes / spacing
    return Geometry(origin=tuple(float(v) for v in affine[:3, 3] * _LPS),  # type: ignore[arg-type]
                    row_direction=tuple(float(v) for v in unit[:, 0]),  # type: ignore[arg-type]
                    column_direction=tuple(float(v) for v in unit[:, 1]),  # type: ignore[arg-type]
                    normal=tuple(float(v) for v in unit[:, 2]),  # type: ignore[arg-type]
                    spacing=(float(spacing[2]), float(spacing[1]), float(spacing[0])))


def _dicom_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _dicom_volume(path: Path, deid: Deidentify) -> Image3D:
    from node.pipeline.infer.assemble import VolumeError, assemble

    originals: list[Dataset] = []
    for file in _dicom_files(path):
        try:
            originals.append(pydicom.dcmread(file))
        except (InvalidDicomError, OSError):
            continue
    if not originals:
        raise CaseError(f"{path.name}: no readable DICOM file")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in originals}
    if len(series) > 1:
        raise CaseError(f"{path.name}: {len(series)} series (one expected)")
    deidentified = [deid(ds) for ds in originals]
    original_of = {str(d.SOPInstanceUID): str(o.SOPInstanceUID)
                   for d, o in zip(deidentified, originals, strict=True)}
    try:
        volume = assemble(deidentified)
    except VolumeError as exc:
        raise CaseError(f"{path.name}: {exc}") from None
    return Image3D(volume, None, tuple(original_of.get(u, "")
                                       for u in volume.geometry.sop_instance_uids))


def _picture_volume(path: Path, modality: str) -> Image3D:
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CaseError(f"{path.name}: not a readable picture ({type(exc).__name__})") from None
    geometry = Geometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                        (1.0, 1.0, 1.0))
    return Image3D(Volume(pixels[None], geometry, modality))


def load_image(path: Path | None, manifest: Manifest, deid: Deidentify) -> Image3D:
    """A case's image: NIfTI, a PNG/JPEG picture, a DICOM file or a folder of one series."""
    if path is None or not path.exists():
        raise CaseError("image missing (image.nii.gz, image.nii or image/)" if path is None
                        else f"{path.name}: missing")
    modality = manifest.selection.modalities[0] if manifest.selection.modalities else "OT"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        data, affine = _nifti(path)
        array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32)
        return Image3D(Volume(array, geometry_of_affine(affine), modality), affine)
    if path.is_file() and name.endswith(PICTURE_SUFFIXES):
        return _picture_volume(path, modality)
    return _dicom_volume(path, deid)


# -- references -------------------------------------------------------------------------------


def load_reference(path: Path | None, image: Image3D) -> np.ndarray:
    """The reference as an integer label map on the image's voxels (slices, rows, columns)."""
    if path is None:
        raise CaseError("reference mask missing (reference.nii.gz, reference.nii or "
                        "reference.dcm)")
    shape = image.volume.array.shape
    if path.name.lower().endswith(".dcm"):
        return _seg_reference(path, image)
    data, affine = _nifti(path)
    if image.affine is not None:
        if data.shape[::-1] != shape:
            raise CaseError(f"{path.name}: shape {data.shape} does not match the image's "
                            f"{shape[::-1]}")
        if not np.allclose(affine, image.affine, atol=_AFFINE_TOLERANCE_MM):
            raise CaseError(f"{path.name}: its affine differs from the image's (another grid)")
        return np.ascontiguousarray(np.transpose(np.rint(data).astype(np.int32), (2, 1, 0)))
    return _nifti_onto(np.rint(data).astype(np.int32), affine, image.volume, path.name)


def _nifti_onto(data: np.ndarray, affine: np.ndarray, volume: Volume, name: str) -> np.ndarray:
    """Nearest-voxel lookup of a NIfTI label map at every voxel centre of a DICOM volume."""
    g = volume.geometry
    n_s, n_r, n_c = volume.array.shape
    to_voxel = np.linalg.inv(affine)
    r, c = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    in_plane = ((c * g.spacing[2])[..., None] * np.array(g.row_direction)
                + (r * g.spacing[1])[..., None] * np.array(g.column_direction))
    out = np.zeros(volume.array.shape, dtype=np.int32)
    for s in range(n_s):
        lps = np.array(g.origin) + s * g.spacing[0] * np.array(g.normal) + in_plane
        ijk = np.rint((lps * _LPS) @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < data.shape), axis=-1)
        if not inside.all():
            raise CaseError(f"{name}: does not cover the image (slice {s + 1} lies outside it)")
        out[s] = data[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    return out


def _seg_reference(path: Path, image: Image3D) -> np.ndarray:
    import highdicom as hd

    if not image.source_uids:
        raise CaseError(f"{path.name}: a DICOM SEG reference needs a DICOM image series")
    try:
        seg = hd.seg.segread(path)
        numbers = [int(n) for n in seg.segment_numbers]
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(image.source_uids), segment_numbers=numbers,
            assert_missing_frames_are_empty=True)
    except (InvalidDicomError, OSError, ValueError, KeyError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CaseError(f"{path.name}: not a SEG of this series ({reason})") from None
    out = np.zeros(image.volume.array.shape, dtype=np.int32)
    for position, number in enumerate(numbers):
        out[np.asarray(pixels[..., position]) > 0] = number
    return out
