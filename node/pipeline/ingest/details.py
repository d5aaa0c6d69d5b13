"""The patient and study details an uploader gives for a picture or a volume.

DICOM files carry their own; a PNG, JPEG or NIfTI carries none, so the uploader names the
patient and the study, and the node makes new UIDs. Values are checked against their VRs'
limits (PS3.5 table 6.2-1) so that the objects built from them are valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.core.errors import PermanentError

#: the modalities a NIfTI volume becomes (MR Image, CT Image)
VOLUME_MODALITIES = ("MR", "CT")
#: Body Part Examined values of paired structures (PS3.16 CID 4031), whose series keep an
#: empty Laterality (2C: present, its side unknown); for any other the attribute is left out
PAIRED_BODY_PARTS = frozenset({
    "ANKLE", "ARM", "BREAST", "CLAVICLE", "ELBOW", "EYE", "FEMUR", "FOOT", "FOREARM", "HAND",
    "HIP", "HUMERUS", "KNEE", "LEG", "LUNG", "SHOULDER", "THIGH", "TIBIA", "WRIST", "EAR",
    "KIDNEY", "OVARY", "TESTIS", "SCAPULA", "FIBULA", "RADIUS", "ULNA", "PATELLA",
    "CALCANEUS", "HEEL", "FINGER", "TOE", "THUMB",
})


class MissingDetails(PermanentError):
    """A picture or a volume without the patient details it needs, or with invalid ones."""


class NotAttested(MissingDetails):
    """A picture whose uploader did not state that it shows no identifying text."""


#: why a picture without that statement is refused
NOT_ATTESTED = ("a picture is taken in only when you state that it shows no identifying text "
                "(no name, ID or date in the image); blank or crop such text first")


@dataclass(frozen=True)
class Details:
    patient_id: str = ""
    patient_name: str = ""
    #: YYYYMMDD, or ""
    birth_date: str = ""
    #: M, F, O or ""
    sex: str = ""
    accession: str = ""
    study_description: str = ""
    #: MR or CT for a NIfTI volume; a picture's Secondary Capture keeps it as given (OT if "")
    modality: str = ""
    #: Body Part Examined (PS3.16 CID 4031 code value such as HEAD or BRAIN), or ""
    body_part: str = ""
    #: the uploader's answer for pictures: does the image show identifying text (a name, an
    #: ID, a date burned into its pixels)? "no", "yes", "unsure", or "" (not answered)
    identifying_text: str = ""

    def checked(self) -> Details:
        """These details, or :class:`MissingDetails` naming what is missing or wrong."""
        date = r"(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])"
        rules = [
            (bool(self.patient_id.strip()), "patient ID is required"),
            (len(self.patient_id) <= 64 and "\\" not in self.patient_id,
             "patient ID: at most 64 characters, no backslash"),
            (bool(self.patient_name.strip()), "patient name is required"),
            (len(self.patient_name) <= 64, "patient name: at most 64 characters"),
            (not self.birth_date or re.fullmatch(date, self.birth_date) is not None,
             "birth date: YYYYMMDD"),
            (self.sex in ("", "M", "F", "O"), "sex: M, F or O"),
            (len(self.accession) <= 16, "accession number: at most 16 characters"),
            (len(self.study_description) <= 64, "study description: at most 64 characters"),
            (not self.modality or re.fullmatch(r"[A-Z]{2,16}", self.modality) is not None,
             "modality: a DICOM modality code such as MR, CT or OT"),
            (not self.body_part or re.fullmatch(r"[A-Z0-9_ ]{1,16}", self.body_part) is not None,
             "body part: a code such as HEAD or BRAIN (at most 16 capitals, digits, _)"),
            (self.identifying_text in ("", "no", "yes", "unsure"),
             "identifying text: no, yes or unsure"),
        ]
        problems = [text for ok, text in rules if not ok]
        if problems:
            raise MissingDetails("; ".join(problems))
        return self
