"""De-identification: one test per rule and option of PS3.15 Annex E as the node applies them."""

from __future__ import annotations

import base64
import copy
import csv
import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.core import db
from node.core.errors import ConfigError
from node.core.keys import DeidKeys, load_keys, new_secret
from node.core.pseudonyms import PseudonymStore, WrongKey
from node.core.settings import DeidSettings, PixelRule
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.iod import PRESENT_ONLY_WITH
from node.pipeline.deid.pixels import BurnedInText
from node.pipeline.deid.profile import DEFAULT_TABLE, OPTIONS, load_profile
from node.pipeline.deid.reidentify import pseudonyms_in, reidentify
from tests.data import UID_PREFIX, sample_file

KEYS = DeidKeys.from_secret(base64.b64decode(new_secret()))
REPO = Path(__file__).resolve().parents[3]


def ct() -> Dataset:
    return pydicom.dcmread(sample_file("CT_small.dcm"))


def run(ds: Dataset, keys: DeidKeys = KEYS, **options: object) -> Dataset:
    return deidentify(ds, load_profile(DeidSettings(**options)), keys).dataset  # type: ignore[arg-type]


def table() -> list[dict[str, str]]:
    text = DEFAULT_TABLE.read_text()
    return list(csv.DictReader(io.StringIO("".join(
        line for line in text.splitlines(keepends=True) if not line.startswith("#")))))


# ----------------------------------------------------------------------------- basic profile


def test_each_basic_action_on_a_real_ct() -> None:
    original = ct()
    out = run(ct())
    assert "InstitutionAddress" not in out or not out.InstitutionAddress  # X (absent here)
    assert "StudyDescription" not in out  # X
    assert "AdditionalPatientHistory" not in out  # X
    assert out.StudyDate in (None, "")  # Z
    assert out.ReferringPhysicianName in (None, "")  # Z
    assert out.SeriesDate == "19000101"  # X/D -> D: a valid dummy
    assert out.InstitutionName == "ANONYMIZED"  # X/Z/D -> D
    assert out.SOPClassUID == original.SOPClassUID  # not in the table: kept
    assert out.PixelData == original.PixelData
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert out[keyword].value == KEYS.uid(original[keyword].value)  # U
        assert out[keyword].value.startswith("2.25.")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert not any(elem.tag.is_private for elem in out)  # private attributes and creators
    assert out.PatientName != original.PatientName and out.PatientID != original.PatientID


def test_sequences_at_any_depth() -> None:
    ds = ct()
    leaf = Dataset()
    leaf.PersonName = "Deep^Nested"
    leaf.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    mid = Dataset()
    mid.PersonIdentificationCodeSequence = Sequence([leaf])
    mid.InstitutionName = "Nested Hospital"
    ds.PhysiciansOfRecordIdentificationSequence = Sequence([mid])
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    uid = ds.SOPInstanceUID
    out = run(ds)
    assert "PhysiciansOfRecordIdentificationSequence" not in out  # X on the sequence
    # a kept sequence is walked: the reference is remapped consistently with the instance
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == KEYS.uid(uid) == out.SOPInstanceUID
    ds2 = ct()
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = ds2.SOPInstanceUID
    inner.OperatorsName = "Nested^Operator"
    inner.ReferencedStudySequence = Sequence([Dataset()])  # X/Z at level 3, not in the IOD
    outer = Dataset()
    outer.ReferencedImageSequence = Sequence([inner])
    ds2.SourceImageSequence = Sequence([outer])  # level 1 -> 2 -> 3
    out2 = run(ds2)
    deep = out2.SourceImageSequence[0].ReferencedImageSequence[0]
    assert deep.ReferencedSOPInstanceUID == out2.SOPInstanceUID
    assert deep.OperatorsName == "ANONYMIZED"  # X/Z/D -> D
    assert "ReferencedStudySequence" not in deep  # X where the IOD does not require it


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def test_sequences_follow_their_type_in_the_iod() -> None:
    """X/Z, X/D, X/Z/D and D on sequences: removed where the IOD leaves them optional (never
    zero items there), zero items where it makes them Type 2, a valid item where Type 1."""
    ds = ct()  # CT Image: Referenced Study and Performed Procedure Step are Type 3
    ds.ReferencedStudySequence = Sequence([_item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=generate_uid())])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([_item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3", ReferencedSOPInstanceUID=generate_uid())])
    ds.OperatorIdentificationSequence = Sequence([_item(
        PersonIdentificationCodeSequence=Sequence([_item(
            CodeValue="LANR-99", CodingSchemeDesignator="99KRI", CodeMeaning="Dr. Weber")]))])
    # Specimen Preparation Sequence is Type 2 in the Specimen module's items
    ds.SpecimenDescriptionSequence = Sequence([_item(
        SpecimenIdentifier="S-1", SpecimenUID=generate_uid(),
        SpecimenPreparationSequence=Sequence([_item(SpecimenPreparationStepContentItemSequence=Sequence())]))])
    out = run(ds)
    for keyword in ("ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
                    "OperatorIdentificationSequence"):
        assert keyword not in out, keyword
    specimen = out.SpecimenDescriptionSequence[0]
    assert "SpecimenPreparationSequence" in specimen and len(specimen.SpecimenPreparationSequence) == 0

    sr = Dataset()  # Comprehensive SR: Verifying Observer Sequence is Type 1C, its code Type 2
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    sr.SOPInstanceUID = generate_uid()
    sr.VerifyingObserverSequence = Sequence([_item(
        VerifyingObserverName="Becker^Jonas", VerifyingOrganization="Klinikum Ost",
        VerificationDateTime="20240918101500",
        VerifyingObserverIdentificationCodeSequence=Sequence([_item(
            CodeValue="LANR-42", CodingSchemeDesignator="99KRI", CodeMeaning="Becker")]))])
    sr.ContentSequence = Sequence([_item(RelationshipType="CONTAINS", ValueType="TEXT",
                                         TextValue="Befund fuer Frau Mueller")])
    raw = io.BytesIO()
    out_sr = run(sr)
    out_sr.save_as(raw, implicit_vr=False, little_endian=True)
    observer = out_sr.VerifyingObserverSequence[0]  # kept: one item, its values replaced
    assert observer.VerifyingObserverName == "ANONYMIZED"
    assert len(observer.VerifyingObserverIdentificationCodeSequence) == 0
    # an SR content tree carries free text the table does not name: never walked and kept
    assert len(out_sr.ContentSequence) == 0
    for text in (b"Becker", b"Klinikum", b"Mueller", b"LANR"):
        assert text not in raw.getvalue()


def test_a_type_1_code_sequence_gets_a_dummy_code_and_conditions_follow() -> None:
    ds = Dataset()  # Protocol Approval: Institution Code Sequence is Type 1C in its items
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.200.3"
    ds.SOPInstanceUID = generate_uid()
    ds.ApprovalSequence = Sequence([_item(InstitutionCodeSequence=Sequence([_item(
        CodeValue="KRI-01", CodingSchemeDesignator="99KRI", CodeMeaning="Klinikum Ost")]))])
    ds.ResponsiblePerson = "Mueller^Karl"  # X: its role (1C on it) must go with it
    ds.ResponsiblePersonRole = "SPOUSE"
    ds.ClinicalTrialProtocolEthicsCommitteeName = "Ethik Ost"  # 1C on the approval number (X)
    ds.ClinicalTrialProtocolEthicsCommitteeApprovalNumber = "EK-2024-17"
    out = run(ds)
    code = out.ApprovalSequence[0].InstitutionCodeSequence
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in code] == [
        ("ANONYMIZED", "99DEID", "ANONYMIZED")]
    for keyword in ("ResponsiblePerson", "ResponsiblePersonRole",
                    "ClinicalTrialProtocolEthicsCommitteeName",
                    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"):
        assert keyword not in out, keyword


def test_pseudonyms_are_consistent_and_keyed() -> None:
    a, b = run(ct()), run(ct())
    assert (a.SOPInstanceUID, a.PatientID, a.PatientName) == (b.SOPInstanceUID, b.PatientID, b.PatientName)
    other_key = DeidKeys.from_secret(base64.b64decode(new_secret()))
    c = run(ct(), keys=other_key)
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.PatientID != a.PatientID
    acc = ct()
    acc.AccessionNumber = "ACC-778899"
    out = run(acc)
    assert out.AccessionNumber.startswith("A") and len(out.AccessionNumber) <= 16
    assert "778899" not in out.AccessionNumber


def test_marks_the_output_with_method_and_cid_7050_codes() -> None:
    out = run(ct(), retain_patient_characteristics=True, clean_descriptors=True)
    assert out.PatientIdentityRemoved == "YES"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113108", "DCM"), ("113105", "DCM")]
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


# ---------------------------------------------------------------------------------- options


def _everything() -> Dataset:
    """A CT carrying a value for every non-repeating, non-UID attribute the table names."""
    from pydicom.datadict import dictionary_VR

    ds = ct()
    samples = {"DA": "19870623", "TM": "142233", "DT": "19870623142233", "AS": "036Y",
               "DS": "1.5", "IS": "7", "US": 1, "UL": 1, "SS": 1, "SL": 1, "FL": 1.0, "FD": 1.0,
               "CS": "VALUE", "AE": "SOMEAE"}
    for row in table():
        tag = row["tag"]
        if "x" in tag or tag.startswith(("0000", "0002", "FFFA", "FFFC")):
            continue
        try:
            vr = dictionary_VR(int(tag, 16))
        except KeyError:
            continue
        if vr in ("SQ", "UI", "OB", "OW", "UN", "OB or OW", "US or SS", "US or OW", "US or SS or OW"):
            continue
        value = samples.get(vr, f"Value {tag}")
        ds.add_new(int(tag, 16), vr, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_changes_only_what_its_column_names(option: str) -> None:
    base = run(_everything())
    with_option = run(_everything(), **{option: True})
    column = {int(r["tag"], 16) for r in table() if "x" not in r["tag"] and r[option].strip()}
    marks = {0x00120063, 0x00120064, 0x00280303}
    changed = {e.tag for e in with_option if e.tag not in marks and (e.tag not in base or base[e.tag].value != e.value)}
    changed |= {e.tag for e in base if e.tag not in with_option}
    assert changed <= column, f"{option} changed attributes outside its column: {sorted(hex(t) for t in changed - column)}"
    # and an option that retains (K) really retains
    keeps = [int(r["tag"], 16) for r in table() if "x" not in r["tag"] and r[option].strip() == "K"]
    original = _everything()
    # a conditional attribute goes with its condition (PS3.3), whatever the option keeps
    unconditioned = {dep for dep, ctl in PRESENT_ONLY_WITH if ctl not in with_option}
    for tag in keeps:
        if tag in unconditioned:
            assert tag not in with_option, hex(tag)
            continue
        if tag in original and original[tag].VR not in ("SQ", "UI") and tag not in (0x00100010, 0x00100020, 0x00080050):
            assert with_option[tag].value == original[tag].value, hex(tag)


def test_modified_dates_shift_consistently_per_patient() -> None:
    a, b = ct(), ct()
    a.StudyDate = b.StudyDate = "20240115"
    a.AcquisitionDate, b.AcquisitionDate = "20240115", "20240116"
    a.AcquisitionDateTime = "20240115101010.5"
    out_a = run(a, retain_long_modified_dates=True)
    out_b = run(b, retain_long_modified_dates=True)
    assert out_a.StudyDate == out_b.StudyDate != "20240115"
    shift = KEYS.date_shift_days(f"|{ct().PatientID}", 3650)
    import datetime as dt
    assert dt.datetime.strptime(out_a.StudyDate, "%Y%m%d").date() == dt.date(2024, 1, 15) - dt.timedelta(days=shift)
    # intervals between dates survive
    da = dt.datetime.strptime(out_a.AcquisitionDate, "%Y%m%d")
    db_ = dt.datetime.strptime(out_b.AcquisitionDate, "%Y%m%d")
    assert (db_ - da).days == 1
    assert out_a.AcquisitionDateTime.endswith("101010.5")
    assert out_a.LongitudinalTemporalInformationModified == "MODIFIED"
    other = ct()
    other.PatientID = "SOMEONE-ELSE-1"
    other.StudyDate = "20240115"
    assert run(other, retain_long_modified_dates=True).StudyDate != out_a.StudyDate
    full = run(ct(), retain_long_full_dates=True)
    assert full.StudyDate == ct().StudyDate and full.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_clean_descriptors_removes_known_identifiers_only() -> None:
    ds = ct()
    ds.PatientName = "Kowalski^Jan"
    ds.PatientID = "MRN-0042"
    ds.StudyDescription = "CT head KOWALSKI follow-up MRN-0042 call 0049 89 1234567"
    out = run(ds, clean_descriptors=True)
    assert out.StudyDescription == "CT head follow-up call"
    assert "StudyDescription" not in run(ds)


def test_retain_safe_private_keeps_only_listed_elements() -> None:
    ds = ct()
    ds.private_block(0x0029, "SAFE VENDOR", create=True).add_new(0x10, "DS", "1.25")
    ds.private_block(0x0029, "SAFE VENDOR").add_new(0x11, "LO", "Schmidt^Hans")
    out = run(ds, retain_safe_private=True, safe_private=("SAFE VENDOR|0029|10",))
    block = out.private_block(0x0029, "SAFE VENDOR")
    assert block[0x10].value == "1.25"
    assert 0x11 not in block
    assert not any(e.tag.is_private for e in run(ds))


# ------------------------------------------------------------------------------- pixel data


def us_image() -> Dataset:
    ds = ct()
    ds.Modality = "US"
    ds.Manufacturer = "ACME Ultrasound"
    return ds


def test_burned_in_text_is_refused_without_a_rule() -> None:
    with pytest.raises(BurnedInText, match="modality US"):
        run(us_image())
    declared = ct()
    declared.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInText, match="Burned In Annotation is YES"):
        run(declared)
    assert run(us_image(), allow_burned_in=True).Modality == "US"


def test_clean_pixel_data_blanks_rule_regions() -> None:
    rule = PixelRule(name="acme", modality="US", manufacturer="(?i)acme", rows=128, columns=128,
                     regions=((0, 0, 128, 10), (100, 100, 128, 128)))
    ds = us_image()
    before = ds.pixel_array.copy()
    result = deidentify(ds, load_profile(DeidSettings(clean_pixel_data=True, pixel_rules=(rule,))), KEYS)
    after = result.dataset.pixel_array
    assert result.pixels_cleaned
    assert (after[:10, :] == before.min()).all() and (after[100:, 100:] == before.min()).all()
    assert np.array_equal(after[20:90, 20:90], before[20:90, 20:90])
    assert result.dataset.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in result.dataset.DeidentificationMethodCodeSequence]
    # a rule for another size does not match: refused
    other = dataclasses.replace(rule, rows=512)
    with pytest.raises(BurnedInText):
        deidentify(us_image(), load_profile(DeidSettings(clean_pixel_data=True, pixel_rules=(other,))), KEYS)


# ------------------------------------------------------------------- map, keys, re-identification


def test_map_is_encrypted_and_reversible(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'l.sqlite3'}")
    db.create_schema(engine)
    store = PseudonymStore(engine, KEYS)
    original = ct()
    result = deidentify(ct(), load_profile(DeidSettings()), KEYS)
    assert store.save(result.pseudonyms) == len(result.pseudonyms)
    assert store.save(result.pseudonyms) == 0  # idempotent
    with engine.connect() as conn:
        rows = conn.execute(select(db.pseudonyms.c.ciphertext)).scalars().all()
    dump = " ".join(rows)
    for secret in (str(original.PatientID), str(original.PatientName), original.SOPInstanceUID):
        assert secret not in dump
    # a result built in the de-identified space maps back to the original study and patient
    back = result.dataset
    reidentify(back, store.originals(pseudonyms_in(back)))
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName"):
        assert str(back[keyword].value) == str(original[keyword].value), keyword
    assert back.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    # another key cannot read the map
    other = PseudonymStore(engine, DeidKeys.from_secret(base64.b64decode(new_secret())))
    with pytest.raises(WrongKey, match="cannot be decrypted with this de-identification key"):
        other.originals(pseudonyms_in(result.dataset) | {KEYS.uid(original.SOPInstanceUID)})


def test_missing_or_bad_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no de-identification key"):
        load_keys("", environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_keys(str(tmp_path / "absent.key"), environ={})
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 !!")
    with pytest.raises(ConfigError, match="not a base64 key"):
        load_keys(str(bad), environ={})
    assert load_keys("", environ={"DICOM_NODE_DEID_KEY": new_secret()})


# -------------------------------------------------------------------------- validity, the CLI


def _dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return {re.sub(r"\s+", " ", line.strip()) for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")}


def test_output_has_no_new_dciodvfy_errors(tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm"):
        src = sample_file(name)
        out = tmp_path / f"deid-{name}"
        for options in ({}, {"retain_long_modified_dates": True, "retain_patient_characteristics": True,
                             "clean_descriptors": True}):
            run(pydicom.dcmread(src), **options).save_as(out, enforce_file_format=True)
            new = _dciodvfy_errors(out) - _dciodvfy_errors(Path(src))
            assert not new, (name, options, new)


def test_deidentify_command(tmp_path: Path) -> None:
    key = tmp_path / "deid.key"
    cli = [sys.executable, "-m", "node.commands"]
    env_cfg = tmp_path / "node.toml"
    env_cfg.write_text(f'[node]\nvar_dir = "{tmp_path / "var"}"\n[deid]\nkey_file = "{key}"\n')
    missing = subprocess.run([*cli, "--config", str(env_cfg), "deidentify", "x", "--out", "y"],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "deid.key_file: file not found" in missing.stderr
    assert subprocess.run([*cli, "keygen", "--out", str(key)], cwd=REPO).returncode == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm")):
        pydicom.dcmread(sample_file(name)).save_as(src / f"patient-{i}.dcm")
    (src / "notes.txt").write_text("not dicom")
    us = us_image()
    us.SOPInstanceUID = generate_uid(UID_PREFIX)
    us.save_as(src / "us.dcm")
    out = subprocess.run([*cli, "--config", str(env_cfg), "deidentify", str(src), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1  # two refused
    assert "2 de-identified" in out.stdout and "2 refused" in out.stdout
    assert "not a DICOM file" in out.stderr and "modality US" in out.stderr
    written = sorted((tmp_path / "out").iterdir())
    assert len(written) == 2
    for path in written:
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm" and ds.SOPInstanceUID.startswith("2.25.")
        assert ds.PatientIdentityRemoved == "YES"


def test_copy_is_not_needed_input_is_modified_in_place() -> None:
    ds = ct()
    kept = copy.deepcopy(ds)
    out = run(ds)
    assert out is ds and ds.SOPInstanceUID != kept.SOPInstanceUID


def _differences(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Elements whose VR, value or value type differ (group lengths aside: never written)."""
    ours, theirs = ({t for t in set(d.keys()) if t.element != 0} for d in (a, b))
    out = [f"{path}{t}" for t in ours ^ theirs]
    for tag in sorted(ours & theirs):
        x, y = a[tag], b[tag]
        if x.VR == "SQ" and y.VR == "SQ" and len(x.value) == len(y.value):
            for i, (p, q) in enumerate(zip(x.value, y.value, strict=True)):
                out += _differences(p, q, f"{path}{x.keyword}[{i}].")
        elif (x.VR, type(x.value), x.value) != (y.VR, type(y.value), y.value):
            out.append(f"{path}{x.keyword}")
    return out


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "rtplan.dcm",
                                  "eCT_Supplemental.dcm", "liver.dcm"])
def test_the_data_set_in_memory_equals_its_file_read_back(name: str) -> None:
    """The pipeline hands the de-identified data sets it has just written to inference; they
    must be what reading the files would give (emptied values too: '' for text, not None)."""
    for options in ({}, {"retain_long_modified_dates": True, "retain_patient_characteristics": True,
                         "clean_descriptors": True, "retain_safe_private": True}):
        out = run(pydicom.dcmread(sample_file(name)), **options)
        buffer = io.BytesIO()
        out.save_as(buffer, enforce_file_format=True)
        back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        assert _differences(out, back) == [], (name, options)
