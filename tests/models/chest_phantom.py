"""A synthetic chest CT phantom whose lung volumes and LAA%-950 are known exactly.

Synthetic on purpose: no full chest CT volume installs offline (see shared FACTS), and exact
ground truth needs a phantom. Array (slices, rows, columns) in HU, float32, standard axial
orientation (columns run to the patient's left, slices to the head):

- air (-1000 HU) around an elliptic body cylinder of soft tissue (40 HU);
- a table under the body: a +300 HU shell around a -960 HU foam core (air-like, not lung);
- two lung ellipsoids (-850 HU): the right lung (image left, low columns) larger than the left;
- a trachea (air) from the top slice down to a carina above the lungs, and two main bronchi
  running from it into the upper medial part of each lung;
- vessels: +40 HU spheres well inside the lungs (they count as lung, as after hole filling);
- emphysema: one -980 HU ellipsoid inside each lung's lower part (counts as lung);
- Gaussian noise (sigma 15 HU) everywhere.

Truth: each lung is its ellipsoid's voxels, the bronchus lumen inside it included (airways inside
the lungs are lung; the trachea and the bronchi outside the lungs are not); the emphysema index is
the percentage of truth-lung voxels below -950 HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.core.contract import Geometry, Volume

SPACING = (1.25, 0.7, 0.7)
AIR, TISSUE, LUNG, EMPHYSEMA, FOAM, SHELL = -1000.0, 40.0, -850.0, -980.0, -960.0, 300.0
NOISE_HU = 15.0


@dataclass(frozen=True)
class Phantom:
    volume: Volume
    right: np.ndarray  # truth masks
    left: np.ndarray
    vessels: np.ndarray  # inside the lungs: they count as lung
    emphysema: np.ndarray  # idem

    @property
    def right_ml(self) -> float:
        return float(self.right.sum()) * self.volume.geometry.voxel_volume_ml

    @property
    def left_ml(self) -> float:
        return float(self.left.sum()) * self.volume.geometry.voxel_volume_ml

    @property
    def laa_percent(self) -> float:
        lung = self.right | self.left
        return 100.0 * float((lung & (self.volume.array < -950)).sum()) / float(lung.sum())


def _ellipsoid_box(shape: tuple[int, int, int], centre: tuple[float, ...],
                   radii: tuple[float, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """An ellipsoid (centre and radii in voxels) as its bounding box and the mask inside it."""
    box = tuple(slice(max(0, int(c - r) - 1), min(n, int(c + r) + 2))
                for c, r, n in zip(centre, radii, shape, strict=True))
    grids = np.ogrid[box]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return box, np.asarray(dist <= 1.0)


def _ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]
               ) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    box, inside = _ellipsoid_box(shape, centre, radii)
    out[box] = inside
    return out


def _tube(shape: tuple[int, int, int], start: tuple[float, float, float],
          end: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Voxels within radius_mm of the segment start-end (voxel coordinates)."""
    sp = np.array(SPACING)
    a, b = np.array(start) * sp, np.array(end) * sp
    r = radius_mm / sp
    lo = np.maximum(np.floor(np.minimum(start, end) - r - 1), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(start, end) + r + 2), shape).astype(int)
    grids = np.ogrid[tuple(slice(int(l_), int(h)) for l_, h in zip(lo, hi, strict=True))]
    p = [g * s for g, s in zip(grids, sp, strict=True)]
    d = b - a
    t = sum((pi - ai) * di for pi, ai, di in zip(p, a, d, strict=True)) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    dist2 = sum((pi - (ai + t * di)) ** 2 for pi, ai, di in zip(p, a, d, strict=True))
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(int(l_), int(h)) for l_, h in zip(lo, hi, strict=True))] = dist2 <= radius_mm**2
    return out


def _vessels(lung: np.ndarray, avoid: np.ndarray, rng: np.random.Generator, count: int
             ) -> np.ndarray:
    """Spheres of 3-4 mm radius whose surroundings (2x radius) lie inside ``lung``."""
    out = np.zeros(lung.shape, dtype=bool)
    points = np.argwhere(lung[::4, ::8, ::8]) * np.array([4, 8, 8])
    placed = 0
    for index in rng.permutation(len(points)):
        z, r, c = points[index]
        radius_mm = rng.uniform(3.0, 4.0)
        radii = tuple(radius_mm / s for s in SPACING)
        box, margin = _ellipsoid_box(lung.shape, (z, r, c), tuple(2 * x for x in radii))
        if (margin & ~lung[box]).any() or (margin & (avoid[box] | out[box])).any():
            continue
        box, inside = _ellipsoid_box(lung.shape, (z, r, c), radii)
        out[box] |= inside
        placed += 1
        if placed == count:
            break
    return out


def chest_phantom(slices: int = 300, size: int = 512, seed: int = 0,
                  row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0),
                  touching: bool = False, emphysema_at_bronchus: bool = False) -> Phantom:
    """The phantom (scaled to ``slices`` x ``size`` x ``size``).

    With ``row_direction`` (-1, 0, 0) the columns run to the patient's right: the same picture
    then shows the larger lung (low columns) as the patient's *left* lung, i.e. the truth masks
    swap sides. With ``touching`` a bar of lung joins the lungs in front of the mediastinum (an
    anterior junction); its voxels belong to the lung on their side of the middle column. With
    ``emphysema_at_bronchus`` more emphysema lies around the left bronchus where it enters the
    lung: airway region growing below -950 HU would leak into it.
    """
    rng = np.random.default_rng(seed)
    shape = (slices, size, size)
    fz, fxy = slices / 300.0, size / 512.0

    def zc(v: float) -> float:
        return v * fz

    def xy(v: float) -> float:
        return v * fxy

    hu = np.full(shape, AIR, dtype=np.float32)
    rows, cols = np.ogrid[:size, :size]
    body = ((rows - xy(256)) / xy(180)) ** 2 + ((cols - xy(256)) / xy(240)) ** 2 <= 1.0
    hu[:, body] = TISSUE
    table = np.zeros((size, size), dtype=bool)
    table[int(xy(440)):int(xy(456)), int(xy(40)):int(xy(472))] = True
    foam = np.zeros_like(table)
    foam[int(xy(443)):int(xy(453)), int(xy(43)):int(xy(469))] = True
    hu[:, table] = SHELL
    hu[:, foam] = FOAM

    image_left = _ellipsoid(shape, (zc(150), xy(250), xy(165)), (zc(100), xy(120), xy(70)))
    image_right = _ellipsoid(shape, (zc(145), xy(250), xy(350)), (zc(95), xy(115), xy(62)))
    if touching:
        bar = np.zeros(shape, dtype=bool)
        bar[int(zc(130)):int(zc(170)), int(xy(150)):int(xy(166)), int(xy(200)):int(xy(320))] = True
        middle = np.zeros(shape, dtype=bool)
        middle[:, :, : int(xy(256))] = True
        image_left |= bar & middle & ~image_right
        image_right |= bar & ~middle & ~image_left
    lungs = image_left | image_right
    hu[lungs] = LUNG
    emphysema = (_ellipsoid(shape, (zc(110), xy(262), xy(163)), (zc(40), xy(72), xy(44)))
                 | _ellipsoid(shape, (zc(105), xy(258), xy(350)), (zc(36), xy(66), xy(38))))
    assert not (emphysema & ~lungs).any(), "emphysema must lie inside the lungs"
    if emphysema_at_bronchus:
        emphysema |= image_right & _ellipsoid(shape, (zc(195), xy(240), xy(322)),
                                              (zc(60), xy(70), xy(30)))
    hu[emphysema] = EMPHYSEMA
    carina = (zc(255), xy(205), xy(256))
    airway = _tube(shape, (slices - 1, xy(205), xy(256)), carina, radius_mm=8.0)
    airway |= _tube(shape, carina, (zc(200), xy(240), xy(212)), radius_mm=5.5)
    airway |= _tube(shape, carina, (zc(195), xy(240), xy(312)), radius_mm=5.0)
    hu[airway] = AIR
    vessels = _vessels(lungs, emphysema | airway, rng, count=60)
    hu[vessels] = TISSUE

    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(NOISE_HU)
    geometry = Geometry(
        origin=(-180.0, -180.0, -200.0),
        row_direction=row_direction,
        column_direction=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        spacing=SPACING,
    )
    volume = Volume(array=hu, geometry=geometry, modality="CT")
    if row_direction[0] >= 0:
        return Phantom(volume, image_left, image_right, vessels, emphysema)
    return Phantom(volume, image_right, image_left, vessels, emphysema)


def write_ct_series(volume: Volume, folder: Path) -> list[Path]:
    """Write a phantom as a real DICOM CT series (other headers from pydicom-data's 693_UNCR)."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.data import UID_PREFIX, sample_file

    g = volume.geometry
    ds = pydicom.dcmread(sample_file("693_UNCR.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(UID_PREFIX), generate_uid(UID_PREFIX)
    ds.FrameOfReferenceUID = generate_uid(UID_PREFIX)
    ds.Rows, ds.Columns = volume.array.shape[1:]
    ds.PixelSpacing = [g.spacing[1], g.spacing[2]]
    ds.SliceThickness = g.spacing[0]
    ds.ImageOrientationPatient = [*g.row_direction, *g.column_direction]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    paths = []
    for i, plane in enumerate(volume.array):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_PREFIX)
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [g.origin[k] + i * g.spacing[0] * g.normal[k] for k in range(3)]
        ds.PixelData = (np.rint(plane) + 1024).astype(np.int16).tobytes()
        path = folder / f"ct{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
