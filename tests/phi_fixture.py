"""A realistic, PHI-laden CT image for de-identification leak tests.

``phi_dataset()`` starts from pydicom's ``CT_small.dcm`` (a valid CT Image with real pixels) and
plants identifying values in it:

* realistic values for the usual suspects (patient name, MRN, birth date, address, phone,
  e-mail, accession number, institution, station, physicians, request attributes, comments,
  descriptions containing the patient's surname, device serial number, ...);
* a value for EVERY attribute of ``config/deid/table-e1-1.csv`` (DICOM PS3.15 Table E.1-1) whose
  basic profile action is not K, that is not a UID, not a repeating group and known to pydicom.
  Each text value carries a unique marker ``PHI-ggggeeee`` (the tag), e.g. ``PHI-00101000
  Kaufmann`` (LO) or ``Kaufmann^PHI-00101000`` (PN); sequences get an item with a nested
  PN (Person Name) and LO (Institution Name) carrying ``PHI-ggggeeee.1`` / ``.2`` markers;
* a fresh UID (``generate_uid()``) for every UI attribute of the table;
* a private block "ACME HOSPITAL PHI" (group 0009) with two PHI-bearing elements and a harmless
  "SIEMENS CSA HEADER" block (group 0029) with a numeric value.

It returns the dataset and the list of planted PHI strings (each at least 6 characters, searched
byte for byte: the dataset uses Specific Character Set ISO_IR 192, so the bytes are UTF-8 as in
logs and database text). Dates, times and numbers are planted too but are not in the list.
``original_uids(ds)`` returns the instance UIDs in a dataset (for "no original UID survives").

Run as a script to write the file and print the counts and the skipped table entries::

    python tests/phi_fixture.py /tmp/phi.dcm [--dciodvfy]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.datadict import dictionary_has_tag, dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

TABLE_PATH = Path(__file__).resolve().parents[1] / "config" / "deid" / "table-e1-1.csv"
SOURCE_FILE = "CT_small.dcm"

#: Only strings at least this long go into the leak-check list.
MIN_MARKER_LEN = 6
#: Root of the DICOM registry's well-known UIDs (SOP classes, transfer syntaxes, ...).
WELL_KNOWN_UID_ROOT = "1.2.840.10008."

# --- the patient and the encounter ------------------------------------------------------------
PATIENT_NAME = "Müller^Anna^Maria^Dr."
PATIENT_FAMILY_NAME = "Müller"
MRN = "MRN-4471902"
ACCESSION = "ACC20261122-0042"
BIRTH_DATE = "19510314"
STUDY_DATE = "20240918"
INSTITUTION = "Klinikum Rechts der Isar"
INSTITUTION_ADDRESS = "Ismaninger Strasse 22, 81675 München"
REQUESTED_PROCEDURE_ID = "RP-0042-7731"
SCHEDULED_STEP_ID = "SPS-0042-01"

#: Realistic values by keyword; each text value is itself a leak-check string.
REALISTIC: dict[str, str | list[str]] = {
    "PatientName": PATIENT_NAME,
    "PatientID": MRN,
    "IssuerOfPatientID": "KRI-PAS-MUENCHEN",
    "OtherPatientIDs": ["KVNR-A123456789", "PAS-0099817"],
    "OtherPatientNames": ["Schneider^Anna^Maria", "Mueller-Schneider^Anna"],
    "PatientBirthName": "Schneider^Anna^Maria",
    "PatientMotherBirthName": "Hoffmann^Gertrud",
    "PatientAddress": "Hauptstrasse 17, 80331 München",
    "PatientTelephoneNumbers": "+49 89 5501 2233",
    "PatientTelecomInformation": "mailto:anna.mueller1951@example-mail.de, tel:+49-171-5502233",
    "MilitaryRank": "Oberstleutnant a.D.",
    "EthnicGroup": "Sorbisch",
    "Occupation": "Lokfuehrerin",
    "MedicalRecordLocator": "ARCHIV-R3-4471902",
    "InsurancePlanIdentification": "AOK-BY-778812-03",
    "PatientReligiousPreference": "römisch-katholisch",
    "AccessionNumber": ACCESSION,
    "InstitutionName": INSTITUTION,
    "InstitutionAddress": INSTITUTION_ADDRESS,
    "InstitutionalDepartmentName": "Institut für Diagnostische und Interventionelle Radiologie",
    "StationName": "CT-ROOM-3-HOST",
    "StationAETitle": "KRI_CT3_SCU",
    "ReferringPhysicianName": "Weber^Thomas^^Dr. med.",
    "ConsultingPhysicianName": "Richter^Sabine^^Dr. med.",
    "PhysiciansOfRecord": "Schäfer^Martin^^Dr. med.",
    "PerformingPhysicianName": "Fischer^Claudia^^Dr. med.",
    "NameOfPhysiciansReadingStudy": "Becker^Jonas^^Prof. Dr.",
    "RequestingPhysician": "Wagner^Petra^^Dr. med.",
    "OperatorsName": ["Schulz^Lena", "Hartmann^Jens"],
    "StudyID": "STU-20240918-07",
    "StudyDescription": f"CT Thorax KM Lungenembolie {PATIENT_FAMILY_NAME} Anna",
    "SeriesDescription": f"Thorax 1.5 mm Weichteil ({PATIENT_FAMILY_NAME})",
    "PatientComments": (
        f"Patientin {PATIENT_FAMILY_NAME}, Anna ({MRN}): Platzangst, "
        "Kontrastmittelallergie ausgeschlossen, Tochter unter +49 89 5501 2299 erreichbar."
    ),
    "ImageComments": (
        f"Nachrekonstruktion für {PATIENT_NAME}, {MRN}, auf Wunsch von Dr. Weber (Station 3B)"
    ),
    "StudyComments": f"Vergleich mit Voruntersuchung {PATIENT_FAMILY_NAME} Anna {MRN} vom 12.03.2023",
    "AdditionalPatientHistory": (
        f"Z.n. Mamma-Ca links 2019 (Pat. {PATIENT_FAMILY_NAME}), Raucherin bis 2010, "
        "Ehemann Karl Müller pflegebedürftig"
    ),
    "AdmittingDiagnosesDescription": f"V.a. Lungenembolie bei Patientin {PATIENT_FAMILY_NAME}",
    "DeviceSerialNumber": "SN-CT-88412-KRI",
    "RequestedProcedureID": REQUESTED_PROCEDURE_ID,
    "ScheduledProcedureStepID": SCHEDULED_STEP_ID,
    "PerformedProcedureStepID": "PPS-0042-01",
    "AdmissionID": "ADM-2024-0918-113",
    "ResponsiblePerson": "Müller^Karl",
}

#: Non-text values that must be valid for the CT IOD (enumerated values, ages, numbers).
FIXED: dict[str, Any] = {
    "PatientBirthDate": BIRTH_DATE,
    "PatientBirthTime": "061500",
    "PatientSex": "F",
    "PatientAge": "073Y",
    "PatientSize": "1.68",
    "PatientWeight": "71.5",
    "SmokingStatus": "NO",
    "PregnancyStatus": 4,
    "PatientSexNeutered": "UNALTERED",
    "StudyDate": STUDY_DATE,
    "SeriesDate": STUDY_DATE,
    "AcquisitionDate": STUDY_DATE,
    "ContentDate": STUDY_DATE,
    "InstanceCreationDate": STUDY_DATE,
    "StudyTime": "081512",
    "SeriesTime": "082033",
    "AcquisitionTime": "082110",
    "ContentTime": "082145",
    "InstanceCreationTime": "082301",
    "AcquisitionDateTime": f"{STUDY_DATE}082110",
    "TimezoneOffsetFromUTC": "+0200",
    "SelectorASValue": "073Y",
    "GPSLatitudeRef": "N",
    "GPSLongitudeRef": "E",
    "GPSStatus": "A",
    "GPSMeasureMode": "3",
    "GPSSpeedRef": "K",
    "GPSTrackRef": "T",
    "GPSImgDirectionRef": "T",
    "GPSDestLatitudeRef": "N",
    "GPSDestLongitudeRef": "E",
    "GPSDestBearingRef": "T",
    "GPSDestDistanceRef": "K",
    "GPSLatitude": ["48", "8", "13.2"],
    "GPSLongitude": ["11", "36", "3.1"],
    "GPSDestLatitude": ["48", "8", "13.2"],
    "GPSDestLongitude": ["11", "36", "3.1"],
    "GPSAltitudeRef": 0,
    "ReasonForTheAttributeModification": "COERCE",
    "InstanceOriginStatus": "LOCAL",
    "LensSpecification": ["24", "70", "2.8", "2.8"],
}

SURNAMES = (
    "Kaufmann", "Schmidt", "Hoffmann", "Krüger", "Zimmermann", "Neumann", "Schwarz", "Braun",
    "Hartmann", "Lehmann", "Köhler", "Maier", "Huber", "Seidel", "Vogel", "Brandt", "Dietrich",
    "Engel", "Frank", "Günther", "Jung", "Keller", "Lorenz", "Ludwig", "Möller", "Peters",
)  # fmt: skip
SENTENCES = (
    "Rückruf bei Frau {s} unter +49 89 4140 {n:04d}",
    "Befund an Hausarzt Dr. {s}, Leopoldstrasse {n}, 80802 München",
    "Pat. {s} gab an, seit {n} Tagen Dyspnoe zu haben",
    "Angehörige ({s}) wünschen Befundkopie, Fax +49 89 4140 {n:04d}",
)

TEXT_VRS = {"LO", "SH", "PN", "LT", "ST", "UT", "UC", "AE", "CS", "UR"}
NUMERIC_VRS = {"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
BYTE_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV"}
SUPPORTED_VRS = TEXT_VRS | NUMERIC_VRS | BYTE_VRS | {"DA", "TM", "DT", "AS", "SQ", "UI"}
# group 0000 is the command set, 0002 the file meta group (built from the dataset), 0004 DICOMDIR
NON_DATASET_GROUPS = {0x0000: "command group", 0x0002: "file meta group", 0x0004: "DICOMDIR"}


@dataclass
class PhiFixture:
    """What ``build_phi_fixture`` produced."""

    ds: FileDataset
    markers: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    set_tags: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, name, reason)

    def add_marker(self, *values: str) -> None:
        for value in values:
            if len(value) >= MIN_MARKER_LEN and value not in self.markers:
                self.markers.append(value)

    def new_uid(self) -> str:
        uid = str(generate_uid())
        self.uids.append(uid)
        return uid


@dataclass(frozen=True)
class TableRow:
    tag: str
    name: str
    basic: str


def load_table(path: Path = TABLE_PATH) -> list[TableRow]:
    with path.open(encoding="utf-8", newline="") as fh:
        lines = (line for line in fh if not line.startswith("#"))
        return [TableRow(r["tag"], r["name"], r["basic"]) for r in csv.DictReader(lines)]


def marker(tag: int, suffix: str = "") -> str:
    return f"PHI-{tag:08X}{suffix}"


def _vm_count(tag: int) -> int:
    vm = dictionary_VM(tag)
    first = vm.split("-")[0]
    return int(first) if first.isdigit() else 1


# --- value builders ----------------------------------------------------------------------------
def _generic_text(vr: str, tag: int, n: int) -> str:
    """A realistic-looking text value for ``vr`` that contains the tag's marker."""
    mark = marker(tag)
    surname = SURNAMES[n % len(SURNAMES)]
    if vr == "PN":
        return f"{surname}^{mark}"
    if vr in ("SH", "AE"):
        return mark  # 12 characters; SH and AE allow 16
    if vr == "CS":
        return mark.replace("-", "_")  # CS: upper case, digits, space, underscore
    if vr == "LO":
        return f"{mark} {surname}"
    if vr == "UR":
        return f"https://ris.klinikum.example/befund/{mark}"
    sentence = SENTENCES[n % len(SENTENCES)].format(s=surname, n=1000 + n * 37)
    return f"{mark} {sentence}"


def _generic_bytes(tag: int, keyword: str) -> bytes:
    text = f"{marker(tag)} {PATIENT_FAMILY_NAME} {MRN}"
    if keyword == "EncapsulatedDocument":
        text = f"%PDF-1.4\n% {text}\n%%EOF\n"
    data = text.encode("utf-8")
    return data + b" " if len(data) % 2 else data


def _generic_number(vr: str, tag: int) -> Any:
    count = _vm_count(tag)
    value: Any = {"DS": "12.5", "IS": "12", "FL": 12.5, "FD": 12.5}.get(vr, 1)
    return [value] * count if count > 1 else value


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_person_and_institution(fx: PhiFixture, tag: int, n: int, item: Dataset) -> None:
    """Nested PN and LO with the markers PHI-ggggeeee.1 and .2 (kept where already set)."""
    surname = SURNAMES[(n + 7) % len(SURNAMES)]
    if "PersonName" not in item:
        item.PersonName = f"{surname}^{marker(tag, '.1')}"
        fx.add_marker(marker(tag, ".1"))
    if "InstitutionName" not in item and "InstitutionCodeSequence" not in item:
        item.InstitutionName = f"{marker(tag, '.2')} Praxis {surname}"
        fx.add_marker(marker(tag, ".2"))


def _generic_item(fx: PhiFixture, tag: int, n: int) -> Dataset:
    """One item with a nested PN and LO carrying markers; code sequences also get a code."""
    item = Dataset()
    keyword = keyword_for_tag(tag)
    if keyword.endswith("CodeSequence"):
        item.update(_code_item(f"KRI{n:04d}", "99KRI", f"{marker(tag, '.3')} Kodierung"))
        fx.add_marker(marker(tag, ".3"))
    elif keyword.startswith("IssuerOf"):  # HL7v2 Hierarchic Designator Macro
        item.LocalNamespaceEntityID = f"{marker(tag, '.3')} KRI-PAS"
        fx.add_marker(marker(tag, ".3"))
    _add_person_and_institution(fx, tag, n, item)
    augment = ITEM_AUGMENTERS.get(keyword)
    if augment is not None:
        augment(fx, tag, item)
    return item


def _augment_patient_photo(fx: PhiFixture, tag: int, item: Dataset) -> None:
    """Referenced Instances and Access Macro (PS3.3 Table 10-3b)."""
    item.TypeOfInstances = "DICOM"
    item.StudyInstanceUID = fx.new_uid()
    item.SeriesInstanceUID = fx.new_uid()
    item.ReferencedSOPSequence = _sop_reference(fx, "1.2.840.10008.5.1.4.1.1.77.1.4")  # VL Photo
    retrieve = Dataset()
    retrieve.RetrieveAETitle = "KRI_FOTO_PACS"
    item.DICOMRetrievalSequence = Sequence([retrieve])
    fx.add_marker("KRI_FOTO_PACS")


def _augment_udi(fx: PhiFixture, tag: int, item: Dataset) -> None:
    item.UniqueDeviceIdentifier = f"(01)04056869003597(21)SN-CT-88412-KRI {marker(tag, '.4')}"
    fx.add_marker(marker(tag, ".4"))


def _augment_signature(fx: PhiFixture, tag: int, item: Dataset) -> None:
    """Digital Signatures Macro (PS3.3 Table C.12-6): a (fake) signature by a named person."""
    item.MACIDNumber = 1
    item.DigitalSignatureUID = fx.new_uid()
    item.DigitalSignatureDateTime = f"{STUDY_DATE}091502"
    item.CertificateType = "X509_1993_SIG"
    item.CertificateOfSigner = f"CN=Dr. Jonas Becker {marker(tag, '.4')}, O={INSTITUTION}".encode()
    item.Signature = bytes(range(64))
    fx.add_marker(marker(tag, ".4"))


def _augment_original_attributes(fx: PhiFixture, tag: int, item: Dataset) -> None:
    """SOP Common Original Attributes Sequence with the patient's earlier (PHI) values."""
    original = Dataset()
    original.PatientName = f"Mueller^Anna^^^{marker(tag, '.4')}"
    original.PatientID = f"OLD-{MRN}"
    item.ModifiedAttributesSequence = Sequence([original])
    item.SourceOfPreviousValues = f"{INSTITUTION} PAS {marker(tag, '.5')}"
    item.AttributeModificationDateTime = f"{STUDY_DATE}093000"
    item.ModifyingSystem = f"KRI-MPI-Abgleich {marker(tag, '.6')}"
    item.ReasonForTheAttributeModification = "CORRECT"
    fx.add_marker(marker(tag, ".4"), f"OLD-{MRN}", marker(tag, ".5"), marker(tag, ".6"))


ITEM_AUGMENTERS: dict[str, Callable[[PhiFixture, int, Dataset], None]] = {
    "ReferencedPatientPhotoSequence": _augment_patient_photo,
    "UDISequence": _augment_udi,
    "DigitalSignaturesSequence": _augment_signature,
    "OriginalAttributesSequence": _augment_original_attributes,
}


def _person_identification(
    fx: PhiFixture, tag: int, person: str, lanr: str, phone: str, email: str
) -> Dataset:
    """Person Identification Macro item (PS3.3 Table 10-1) with two levels of nesting."""
    family, given = person.split("^")[:2]
    item = Dataset()
    item.PersonIdentificationCodeSequence = Sequence(
        [_code_item(lanr, "99KRI-LANR", f"Dr. {given} {family} {marker(tag, '.3')}")]
    )
    item.PersonName = person  # not part of the macro, but real systems put it there
    item.PersonAddress = f"Ismaninger Strasse 22, 81675 München, {marker(tag, '.4')}"
    item.PersonTelephoneNumbers = phone
    item.PersonTelecomInformation = email
    # Institution Name and Institution Code Sequence are mutually exclusive (Type 1C) here
    item.InstitutionAddress = INSTITUTION_ADDRESS
    item.InstitutionCodeSequence = Sequence(
        [_code_item("KRI-260914", "99KRI", f"{INSTITUTION} TUM {marker(tag, '.5')}")]
    )
    item.InstitutionalDepartmentName = f"Radiologie {marker(tag, '.6')}"
    fx.add_marker(
        person, lanr, phone, email, INSTITUTION, INSTITUTION_ADDRESS,
        *(marker(tag, f".{i}") for i in (3, 4, 5, 6)),
    )  # fmt: skip
    return item


PHYSICIAN_SEQUENCES: dict[str, tuple[str, str]] = {
    # sequence keyword -> (name keyword in REALISTIC, LANR)
    "ReferringPhysicianIdentificationSequence": ("ReferringPhysicianName", "LANR 123456701"),
    "ConsultingPhysicianIdentificationSequence": ("ConsultingPhysicianName", "LANR 223456702"),
    "PhysiciansOfRecordIdentificationSequence": ("PhysiciansOfRecord", "LANR 323456703"),
    "PerformingPhysicianIdentificationSequence": ("PerformingPhysicianName", "LANR 423456704"),
    "PhysiciansReadingStudyIdentificationSequence": (
        "NameOfPhysiciansReadingStudy",
        "LANR 523456705",
    ),
    "OperatorIdentificationSequence": ("OperatorsName", "MA-KRI-88120"),
    "RequestingPhysicianIdentificationSequence": ("RequestingPhysician", "LANR 623456706"),
}


def _physician_sequence(fx: PhiFixture, tag: int, keyword: str, n: int) -> Sequence:
    name_keyword, lanr = PHYSICIAN_SEQUENCES[keyword]
    name = REALISTIC[name_keyword]
    person = name[0] if isinstance(name, list) else name
    phone = f"+49 89 4140 {2600 + n:04d}"
    first = person.split("^")[1].lower()
    email = f"{first}.{person.split('^')[0].lower()}@mri.example.de".replace("ä", "ae")
    return Sequence([_person_identification(fx, tag, person, lanr, phone, email)])


def _request_attributes(fx: PhiFixture, tag: int) -> Sequence:
    item = Dataset()
    item.RequestedProcedureID = REQUESTED_PROCEDURE_ID
    item.ScheduledProcedureStepID = SCHEDULED_STEP_ID
    item.AccessionNumber = ACCESSION
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "KRI-RIS-ORBIS"
    item.IssuerOfAccessionNumberSequence = Sequence([issuer])
    item.RequestedProcedureDescription = f"CT Thorax KM, Pat. {PATIENT_FAMILY_NAME} {MRN}"
    item.ScheduledProcedureStepDescription = f"CT Thorax LE-Protokoll {marker(tag, '.7')}"
    item.ReasonForTheRequestedProcedure = f"V.a. LE bei {PATIENT_FAMILY_NAME}, Anna"
    item.ScheduledProtocolCodeSequence = Sequence(
        [_code_item("KRI-CT-TH-LE", "99KRI", f"CT Thorax LE {marker(tag, '.3')}")]
    )
    fx.add_marker(
        REQUESTED_PROCEDURE_ID, SCHEDULED_STEP_ID, ACCESSION, "KRI-RIS-ORBIS",
        item.RequestedProcedureDescription, item.ReasonForTheRequestedProcedure,
        marker(tag, ".3"), marker(tag, ".7"),
    )  # fmt: skip
    return Sequence([item])


def _other_patient_ids(fx: PhiFixture) -> Sequence:
    first = Dataset()
    first.PatientID = "KVNR-A123456789"
    first.IssuerOfPatientID = "AOK Bayern"
    first.TypeOfPatientID = "TEXT"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.276.0.76.4.8.108310400"
    qualifiers.UniversalEntityIDType = "ISO"
    first.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    second = Dataset()
    second.PatientID = "PAS-0099817"
    second.IssuerOfPatientID = "Klinikum Rechts der Isar PAS"
    second.TypeOfPatientID = "TEXT"
    fx.add_marker(
        "KVNR-A123456789", "AOK Bayern", "1.2.276.0.76.4.8.108310400", "PAS-0099817",
        "Klinikum Rechts der Isar PAS",
    )  # fmt: skip
    return Sequence([first, second])


def _sop_reference(fx: PhiFixture, class_uid: str) -> Sequence:
    item = Dataset()
    item.ReferencedSOPClassUID = class_uid
    item.ReferencedSOPInstanceUID = fx.new_uid()
    return Sequence([item])


def _icon_image(fx: PhiFixture, tag: int) -> Sequence:
    """A valid 8x8 MONOCHROME2 icon whose pixel bytes spell out PHI (burned-in text)."""
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 8
    icon.Columns = 8
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = f"{marker(tag)} {PATIENT_FAMILY_NAME} {MRN}".encode().ljust(64, b"\0")
    icon["PixelData"].VR = "OB"
    fx.add_marker(marker(tag))
    return Sequence([icon])


def _code_sequence(fx: PhiFixture, tag: int, value: str, scheme: str, meaning: str) -> Sequence:
    item = _code_item(value, scheme, f"{meaning} {marker(tag)}")
    fx.add_marker(marker(tag))
    return Sequence([item])


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SPECIAL_SEQUENCES = {
    "OtherPatientIDsSequence",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
    "ReferencedImageSequence",
    "SourceImageSequence",
    "IconImageSequence",
    "AdmittingDiagnosesCodeSequence",
    *PHYSICIAN_SEQUENCES,
}


def _special_sequence(fx: PhiFixture, tag: int, keyword: str, n: int) -> Sequence:
    if keyword in PHYSICIAN_SEQUENCES:
        return _physician_sequence(fx, tag, keyword, n)
    if keyword == "OtherPatientIDsSequence":
        return _other_patient_ids(fx)
    if keyword == "RequestAttributesSequence":
        return _request_attributes(fx, tag)
    if keyword == "ReferencedPatientSequence":  # Detached Patient Management (retired)
        return _sop_reference(fx, "1.2.840.10008.3.1.2.1.1")
    if keyword == "ReferencedStudySequence":  # Detached Study Management (retired)
        return _sop_reference(fx, "1.2.840.10008.3.1.2.3.1")
    if keyword == "ReferencedPerformedProcedureStepSequence":  # MPPS
        return _sop_reference(fx, "1.2.840.10008.3.1.2.3.3")
    if keyword in ("ReferencedImageSequence", "SourceImageSequence"):
        return _sop_reference(fx, CT_IMAGE_STORAGE)
    if keyword == "IconImageSequence":
        return _icon_image(fx, tag)
    if keyword == "AdmittingDiagnosesCodeSequence":
        return _code_sequence(fx, tag, "I26.9", "I10", "Lungenembolie ohne Cor pulmonale")
    raise KeyError(keyword)


# --- the dataset -------------------------------------------------------------------------------
def _skip_reason(row: TableRow, tag: int | None) -> str | None:
    if "x" in row.tag:
        return "repeating group (x in tag)"
    if row.basic == "K":
        return "basic action K"
    assert tag is not None
    if tag >> 16 in NON_DATASET_GROUPS:
        return f"not a data set attribute ({NON_DATASET_GROUPS[tag >> 16]})"
    if not dictionary_has_tag(tag):
        return "not in pydicom's data dictionary"
    vr = dictionary_VR(tag)
    if vr not in SUPPORTED_VRS:
        return f"pydicom VR {vr!r} cannot be encoded unambiguously"
    return None


def _plant(fx: PhiFixture, tag: int, n: int) -> None:
    """Set ``tag`` (top level) to a PHI value appropriate to its VR."""
    ds = fx.ds
    vr = dictionary_VR(tag)
    keyword = keyword_for_tag(tag)
    if vr == "UI":
        ds.add_new(tag, vr, fx.new_uid())
    elif keyword in FIXED:
        ds.add_new(tag, vr, FIXED[keyword])
    elif keyword in REALISTIC:
        value = REALISTIC[keyword]
        ds.add_new(tag, vr, value)
        fx.add_marker(*(value if isinstance(value, list) else [value]))
        if vr == "PN":
            names = value if isinstance(value, list) else [value]
            fx.add_marker(*(name.split("^")[0] for name in names))
    elif vr == "SQ":
        if keyword in SPECIAL_SEQUENCES:
            seq = _special_sequence(fx, tag, keyword, n)
            _add_person_and_institution(fx, tag, n, seq[0])
            ds.add_new(tag, vr, seq)
        else:
            ds.add_new(tag, vr, Sequence([_generic_item(fx, tag, n)]))
    elif vr in TEXT_VRS:
        ds.add_new(tag, vr, _generic_text(vr, tag, n))
        fx.add_marker(marker(tag).replace("-", "_") if vr == "CS" else marker(tag))
    elif vr in BYTE_VRS:
        ds.add_new(tag, vr, _generic_bytes(tag, keyword))
        fx.add_marker(marker(tag))
    elif vr in NUMERIC_VRS:
        ds.add_new(tag, vr, _generic_number(vr, tag))
    elif vr == "DA":
        ds.add_new(tag, vr, STUDY_DATE)
    elif vr == "TM":
        ds.add_new(tag, vr, "142233")
    elif vr == "DT":
        ds.add_new(tag, vr, f"{STUDY_DATE}142233")
    elif vr == "AS":
        ds.add_new(tag, vr, "073Y")
    else:  # pragma: no cover - SUPPORTED_VRS is exhaustive
        raise ValueError(f"no value for VR {vr}")


def _complete_modules(fx: PhiFixture) -> None:
    """Attributes outside Table E.1-1 that the planted ones make required (Type 1C/2)."""
    ds = fx.ds
    if "ResponsiblePerson" in ds:
        ds.ResponsiblePersonRole = "SPOUSE"
    if "ContainerIdentifier" in ds:  # Specimen module (PS3.3 C.7.6.22)
        ds.ContainerTypeCodeSequence = Sequence()
        specimen = Dataset()
        specimen.SpecimenIdentifier = f"PATH-24-0918 {PATIENT_FAMILY_NAME} PHI-SPECIMEN-1"
        specimen.SpecimenUID = fx.new_uid()
        specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
        specimen.SpecimenPreparationSequence = Sequence()
        ds.SpecimenDescriptionSequence = Sequence([specimen])
        fx.add_marker("PHI-SPECIMEN-1")
        # CT_small's Laterality is empty; with the Specimen module present dciodvfy rejects it
        # (and an unpaired body part should not have it anyway)
        if "Laterality" in ds and not ds.Laterality:
            del ds.Laterality


def _add_private_blocks(fx: PhiFixture) -> None:
    acme = fx.ds.private_block(0x0009, "ACME HOSPITAL PHI", create=True)
    acme.add_new(0x01, "LO", f"{PATIENT_FAMILY_NAME}^Anna {MRN} PHI-ACME-0901")
    acme.add_new(
        0x02,
        "LT",
        f"PHI-ACME-0902 Aufnahme Station 3B, Pat. {PATIENT_FAMILY_NAME}, geb. 14.03.1951",
    )
    fx.add_marker("PHI-ACME-0901", "PHI-ACME-0902")
    csa = fx.ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x0B, "US", 1)


def build_phi_fixture(table_path: Path = TABLE_PATH) -> PhiFixture:
    """Build the PHI-laden CT instance and everything known about it."""
    source = pydicom.data.get_testdata_file(SOURCE_FILE)
    if source is None:
        raise FileNotFoundError(SOURCE_FILE)
    ds = pydicom.dcmread(source)
    assert isinstance(ds, FileDataset)
    ds.SpecificCharacterSet = "ISO_IR 192"
    fx = PhiFixture(ds)
    for n, row in enumerate(load_table(table_path)):
        tag = None if "x" in row.tag else int(row.tag, 16)
        reason = _skip_reason(row, tag)
        if reason is not None:
            fx.skipped.append((row.tag, row.name, reason))
            continue
        assert tag is not None
        _plant(fx, tag, n)
        fx.set_tags.append(row.tag)
    _complete_modules(fx)
    _add_private_blocks(fx)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return fx


def phi_dataset() -> tuple[FileDataset, list[str]]:
    """A PHI-laden CT image instance and the PHI strings (>= 6 characters) planted in it."""
    fx = build_phi_fixture()
    return fx.ds, list(fx.markers)


def _walk_ui(ds: Dataset) -> Iterator[str]:
    for elem in ds.iterall():
        if elem.VR != "UI" or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        for value in values:
            if value:
                yield str(value).strip("\0 ")


def original_uids(ds: Dataset, *, include_well_known: bool = False) -> set[str]:
    """Every UI value in ``ds`` (recursively, file meta excluded).

    Registry UIDs (root 1.2.840.10008: SOP classes, transfer syntaxes, ...) identify no one and
    are retained by de-identification, so they are left out unless ``include_well_known``.
    """
    return {
        uid for uid in _walk_ui(ds) if include_well_known or not uid.startswith(WELL_KNOWN_UID_ROOT)
    }


# --- script ------------------------------------------------------------------------------------
#: dciodvfy errors that are limitations of dicom3tools, not of the fixture.
DCIODVFY_KNOWN = (
    # dicom3tools' dictionary predates these (2022-2023) attributes of Table E.1-1
    "Attribute with an even group number is not a recognized standard attribute",
    # condition TypeOfInstancesInParentIsCDA evaluates true for Type of Instances DICOM
    "Missing attribute Type 1C Conditional Element=<HL7InstanceIdentifier> "
    "Module=<ReferencedInstancesAndAccessMacro>",
)


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        return ["dciodvfy not installed"]
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the PHI-laden CT fixture")
    parser.add_argument("out", type=Path)
    parser.add_argument("--dciodvfy", action="store_true", help="compare dciodvfy errors")
    args = parser.parse_args(argv)

    fx = build_phi_fixture()
    fx.ds.save_as(args.out, enforce_file_format=True)
    reread = pydicom.dcmread(args.out)
    assert reread.PatientName == PATIENT_NAME
    for tag, name, reason in fx.skipped:
        print(f"skipped {tag} {name}: {reason}")
    print(f"wrote {args.out}")
    print(f"table attributes set: {len(fx.set_tags)}")
    print(f"skipped table entries: {len(fx.skipped)}")
    print(f"PHI markers (>= {MIN_MARKER_LEN} chars): {len(fx.markers)}")
    print(f"UIDs generated: {len(fx.uids)}; original_uids(): {len(original_uids(reread))}")
    if args.dciodvfy:
        source = Path(str(pydicom.data.get_testdata_file(SOURCE_FILE)))
        before, after = _dciodvfy_errors(source), _dciodvfy_errors(args.out)
        print(f"dciodvfy errors, original {SOURCE_FILE}: {len(before)}")
        print("\n".join(f"  {line}" for line in before))
        print(f"dciodvfy errors, fixture: {len(after)}")
        print("\n".join(f"  {line}" for line in after))
        new = [line for line in after if line not in before]
        unexplained = [line for line in new if not any(k in line for k in DCIODVFY_KNOWN)]
        print(f"new errors: {len(new)}, not explained by dicom3tools limits: {len(unexplained)}")
        return 1 if unexplained else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
