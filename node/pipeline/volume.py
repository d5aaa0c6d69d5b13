"""A volume and its geometry: what a model receives (built from de-identified instances)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Patient-space geometry of a (slices, rows, columns) array, DICOM conventions.

    ``origin`` is the Image Position (Patient) of the first slice; ``row_direction`` and
    ``column_direction`` the Image Orientation (Patient) cosines; ``normal`` points from the
    first slice to the last; ``spacing`` is (between slices, between rows, between columns) in
    mm; ``sop_instance_uids`` are the source slices in array order (empty for synthetic input).
    """

    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    normal: tuple[float, float, float]
    spacing: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...] = ()

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class Volume:
    """Pixel values in physical units where defined (HU for CT), (slices, rows, columns)."""

    array: np.ndarray
    geometry: Geometry
    modality: str
    series_instance_uid: str = ""
    series_description: str = ""
