"""Real DICOM for the tests and benchmarks (see tests/README.md for sources and licences).

``ct_series`` builds a multi-slice CT series from one real slice: pydicom-data's
``693_UNCR.dcm`` (512x512 head CT, 526 KB, MIT). Each instance keeps that slice's real pixel data
and header and gets its own SOP Instance UID, Instance Number, Image Position (Patient) and Slice
Location (1 mm apart along the slice normal), in one new study and series.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

#: Prefix for UIDs the test data generates (pydicom's own root for generated UIDs).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def sample_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not in pydicom's or pydicom-data's test files")
    return Path(str(path))


def ct_series(
    out_dir: Path, count: int = 300, *, study_uid: str | None = None, series_uid: str | None = None
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(sample_file("693_UNCR.dcm"))
    study_uid = study_uid or generate_uid(UID_PREFIX)
    series_uid = series_uid or generate_uid(UID_PREFIX)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(UID_PREFIX)
    origin = [float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    paths = []
    for i in range(count):
        uid = generate_uid(UID_PREFIX)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + i]
        ds.SliceLocation = origin[2] + i
        path = out_dir / f"ct{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
