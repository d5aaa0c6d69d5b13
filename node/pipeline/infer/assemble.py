"""Volume assembly: de-identified instances of one series -> a Volume with its geometry.

Slices are sorted along the slice normal by Image Position (Patient); pixel values are rescaled
(Rescale Slope/Intercept: HU for CT), MONOCHROME1 is inverted, enhanced multi-frame CT/MR is
read frame by frame from its functional groups, and compressed transfer syntaxes are decoded by
pydicom's pixel plug-ins (pylibjpeg). A series that would give a wrong volume raises
:class:`VolumeError` with a specific reason: mixed orientations or sizes, missing slices,
uneven spacing, missing geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from node.core.contract import Geometry, Volume
from node.core.errors import PermanentError

#: relative tolerance on slice spacing before a series counts as unevenly spaced
SPACING_TOLERANCE = 0.05
#: Secondary Capture Image Storage
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: orientation cosines may differ this much between slices of one stack
ORIENTATION_TOLERANCE = 1e-3


class VolumeError(PermanentError):
    """The series cannot be assembled into one regular volume."""


@dataclass(frozen=True)
class _Slice:
    """One image plane: its geometry, and how to get its stored values (decoded when filled)."""

    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int]
    stored: Callable[[], np.ndarray]
    transform: tuple[float, float, str]  # Rescale Slope, Rescale Intercept, photometric
    sop_instance_uid: str


def assemble(datasets: Sequence[Dataset]) -> Volume:
    """Build the volume of one series (single-frame slices or one enhanced multi-frame).

    The headers are checked and sorted first; the pixel data are then decoded straight into
    one float32 array in slice order (no per-slice float copies, no stacking).
    """
    if not datasets:
        raise VolumeError("the series has no instances")
    slices: list[_Slice] = []
    for ds in datasets:
        slices.extend(_frames(ds))
    if len(slices) < 1:
        raise VolumeError("the series has no image frames")
    first = datasets[0]
    return _stack(slices, str(first.get("Modality", "")), str(first.get("SeriesInstanceUID", "")),
                  str(first.get("SeriesDescription", "")))


def _pixels(ds: Dataset) -> np.ndarray:
    """The stored values, decoded as ``ds.pixel_array`` would, without keeping a copy in ``ds``
    (the data sets outlive the volume: a cached array per slice doubled the memory)."""
    try:
        arr = pixel_array(ds)
    except Exception as exc:  # decoder errors come in many types; re-raised as VolumeError
        raise VolumeError(f"pixel data cannot be decoded ({type(exc).__name__})") from exc
    return np.asarray(arr)


def _rescale_into(out: np.ndarray, arr: np.ndarray, slope: float, intercept: float,
                  photometric: str) -> None:
    """``out`` (float32) = the stored values ``arr``, MONOCHROME1 inverted, then rescaled."""
    out[...] = arr
    if photometric == "MONOCHROME1":
        np.subtract(out.max() + out.min(), out, out=out)
    if slope != 1.0 or intercept != 0.0:
        np.multiply(out, np.float32(slope), out=out)
        np.add(out, np.float32(intercept), out=out)


def _frames(ds: Dataset) -> list[_Slice]:
    if "PixelData" not in ds:
        raise VolumeError("an instance has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError("colour images cannot form a volume")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return [_single(ds, (float(ds.get("RescaleSlope", 1) or 1),
                             float(ds.get("RescaleIntercept", 0) or 0), photometric))]
    return _multiframe(ds, _pixels(ds), photometric)


def _geometry_of(ds: Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    if _is_picture(ds):
        return _picture_plane(ds)
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        raise VolumeError(
            "an image lacks Image Position/Orientation (Patient) or Pixel Spacing"
        ) from exc
    return position, orientation, spacing


def _is_picture(ds: Dataset) -> bool:
    """A single-frame Secondary Capture without Image Plane attributes: a picture (a PNG or JPEG
    upload, a scanned film), whose place in the patient is unknown."""
    return (str(ds.get("SOPClassUID", "")) == SECONDARY_CAPTURE
            and "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
            and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def _picture_plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A picture's plane in image coordinates: origin 0, rows along x, columns along y, and
    the Pixel Spacing (SC's calibration macro) or Nominal Scanned Pixel Spacing where given,
    else 1 mm (the picture's size in mm is unknown; a model that needs it refuses it)."""
    spacing = ds.get("PixelSpacing") or ds.get("NominalScannedPixelSpacing") or (1.0, 1.0)
    try:
        pair = (float(spacing[0]), float(spacing[1]))
    except (ValueError, TypeError, IndexError) as exc:
        raise VolumeError("a picture's pixel spacing is not two numbers") from exc
    return np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), pair


def _single(ds: Dataset, transform: tuple[float, float, str]) -> _Slice:
    try:
        shape = (int(ds.Rows), int(ds.Columns))
    except (AttributeError, ValueError, TypeError) as exc:
        raise VolumeError("pixel data cannot be decoded (no Rows or Columns)") from exc
    position, orientation, spacing = _geometry_of(ds)
    return _Slice(position, orientation, spacing, shape, lambda: _pixels(ds), transform,
                  str(ds.get("SOPInstanceUID", "")))


def _group(ds: Dataset, per_frame: Dataset | None, keyword: str) -> Dataset | None:
    """A functional group macro item from the per-frame item, else the shared one."""
    for source in (per_frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]  # type: ignore[no-any-return]
    return None


def _multiframe(ds: Dataset, arr: np.ndarray, photometric: str) -> list[_Slice]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != arr.shape[0]:
        raise VolumeError("a multi-frame image lacks per-frame functional groups")
    out = []
    for index, item in enumerate(per_frame):
        plane = _group(ds, item, "PlanePositionSequence")
        orient = _group(ds, item, "PlaneOrientationSequence")
        measures = _group(ds, item, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise VolumeError(f"frame {index + 1} lacks its plane position, orientation or spacing")
        transform = _group(ds, item, "PixelValueTransformationSequence")
        slope = float(transform.get("RescaleSlope", 1)) if transform is not None else 1.0
        intercept = float(transform.get("RescaleIntercept", 0)) if transform is not None else 0.0
        frame = arr[index]
        out.append(_Slice(
            np.array([float(v) for v in plane.ImagePositionPatient]),
            np.array([float(v) for v in orient.ImageOrientationPatient]),
            (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
            (int(frame.shape[0]), int(frame.shape[1])), _held(frame),
            (slope, intercept, photometric), f"{ds.get('SOPInstanceUID', '')}",
        ))
    return out


def _held(frame: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: frame


def _stack(slices: list[_Slice], modality: str, series_uid: str, description: str) -> Volume:
    ref = slices[0]
    for s in slices[1:]:
        if np.abs(s.orientation - ref.orientation).max() > ORIENTATION_TOLERANCE:
            raise VolumeError("the series mixes image orientations")
        if s.shape != ref.shape:
            raise VolumeError("the series mixes image sizes")
        if np.abs(np.array(s.pixel_spacing) - np.array(ref.pixel_spacing)).max() > 1e-4:
            raise VolumeError("the series mixes pixel spacings")
    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    distances = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    spacing_z = _slice_spacing(distances)
    array = np.empty((len(slices), *ref.shape), dtype=np.float32)
    for plane, s in zip(array, slices, strict=True):
        stored = s.stored()
        if stored.shape != ref.shape:  # the header's Rows/Columns were not the pixel data's
            raise VolumeError("the series mixes image sizes")
        _rescale_into(plane, stored, *s.transform)
    geometry = Geometry(
        origin=tuple(float(v) for v in slices[0].position),  # type: ignore[arg-type]
        row_direction=tuple(float(v) for v in row_dir),  # type: ignore[arg-type]
        column_direction=tuple(float(v) for v in col_dir),  # type: ignore[arg-type]
        normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
        spacing=(spacing_z, ref.pixel_spacing[0], ref.pixel_spacing[1]),
        sop_instance_uids=tuple(s.sop_instance_uid for s in slices),
    )
    return Volume(array=array, geometry=geometry, modality=modality,
                  series_instance_uid=series_uid, series_description=description)


def _slice_spacing(distances: np.ndarray) -> float:
    if len(distances) == 1:
        return 1.0
    gaps = np.diff(distances)
    if (gaps < 1e-3).any():
        raise VolumeError("two slices share one position (duplicate or multi-acquisition series)")
    median = float(np.median(gaps))
    ratios = gaps / median
    if (np.abs(ratios - 1) <= SPACING_TOLERANCE).all():
        return median
    worst = float(ratios.max())
    if worst >= 2 - SPACING_TOLERANCE and abs(worst - round(worst)) <= SPACING_TOLERANCE:
        raise VolumeError(f"slices are missing: a gap of {round(worst) - 1} slice(s) in the series")
    raise VolumeError("slice spacing is uneven")
