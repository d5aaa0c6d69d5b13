"""A PNG or JPEG becomes a Secondary Capture Image (PS3.3 A.8.1), built by highdicom.

Grey pictures stay MONOCHROME2 (8 or 16 bits), everything else is converted to RGB. Pillow's
decompression-bomb guard is kept: a picture over ``MAX_PIXELS`` is refused before it is
decoded.
"""

from __future__ import annotations

import io
from datetime import datetime

import highdicom
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset
from pydicom.uid import generate_uid

from node import __version__
from node.core.errors import PermanentError
from node.pipeline.ingest.details import PAIRED_BODY_PARTS, Details

#: most pixels a picture may have (about 16k x 16k)
MAX_PIXELS = 268_000_000


class BadPicture(PermanentError):
    """A PNG or JPEG that could not be decoded."""


def _pixels(data: bytes) -> tuple[np.ndarray, str, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadPicture(f"the picture has {img.width}x{img.height} pixels (too many)")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.uint16)
                return arr, "MONOCHROME2", 16
            if img.mode in ("L", "1", "LA"):
                return np.asarray(img.convert("L"), dtype=np.uint8), "MONOCHROME2", 8
            return np.asarray(img.convert("RGB"), dtype=np.uint8), "RGB", 8
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadPicture(f"the picture could not be decoded ({type(exc).__name__})") from None


def secondary_capture(data: bytes, details: Details, *, study_uid: str, series_uid: str,
                      instance_number: int = 1, series_number: int = 1,
                      attested: bool = False) -> Dataset:
    """The Secondary Capture Image for one picture, in the given study and series.

    ``attested``: the uploader stated that the picture shows no identifying text; Burned In
    Annotation says NO (the node records who stated it; see ``node.pipeline.ingest``).
    Otherwise Burned In Annotation is left out (unknown), and de-identification holds it.
    """
    pixels, photometric, bits = _pixels(data)
    now = datetime.now()
    ds = highdicom.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=bits,
        coordinate_system="PATIENT",
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="dicom-node",
        patient_id=details.patient_id,
        patient_name=details.patient_name,
        patient_birth_date=details.birth_date or None,
        patient_sex=details.sex or None,
        accession_number=details.accession or None,
        study_date=now.date(),
        study_time=now.time().replace(microsecond=0),
        patient_orientation=("L", "P"),
        software_versions=f"dicom-node {__version__}",
    )
    ds.Modality = details.modality or "OT"
    ds.Laterality = ""  # 2C: present and empty (no paired body part is known)
    if details.study_description:
        ds.StudyDescription = details.study_description
    if details.body_part:
        ds.BodyPartExamined = details.body_part
        if details.body_part not in PAIRED_BODY_PARTS:
            del ds.Laterality  # 2C: absent for an unpaired body part
    if attested:
        ds.BurnedInAnnotation = "NO"
    ds.SeriesDescription = "Uploaded picture"
    return ds
