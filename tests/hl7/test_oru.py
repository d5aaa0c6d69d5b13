"""ORU^R01 of real model results, read back with the independent ``hl7`` parser.

Every value is compared with the ORIGINAL source attribute or the model's result it must carry;
hl7apy (which built the message) is only used once more, to re-parse and validate it strictly.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
from datetime import datetime

import hl7
import pytest
from hl7apy import parser as hl7apy_parser
from hl7apy.consts import VALIDATION_LEVEL

from node.config import Hl7Destination, Hl7Settings
from node.errors import PermanentError
from node.hl7.oru import (
    MessageHeader,
    build_oru,
    control_id,
    filler_order_number,
    message_header,
)
from node.pipeline.results import Measurement, Triage
from node.sr_writer.common import AI_DISCLAIMER, ResultContext
from node.sr_writer.pdf import build_pdf

CONTEXTS = ["brain_ctx", "lung_ctx", "tumor_ctx"]
CREATED = datetime(2026, 11, 22, 10, 31, 5)
SETTINGS = Hl7Settings(sending_application="DICOM_NODE", sending_facility="RADIOLOGY",
                       service_id="AI-IMG", service_text="AI image analysis",
                       service_coding_system="99HOSP")
DESTINATION = Hl7Destination(name="emr", host="emr.example.org", port=2575,
                             receiving_application="EPIC", receiving_facility="HOSP")
PRIORITY = {Triage.URGENT: "S", Triage.PRIORITY: "A", Triage.ROUTINE: "R"}
FLAG = {Triage.URGENT: "AA", Triage.PRIORITY: "A", Triage.ROUTINE: "N"}


@pytest.fixture(params=CONTEXTS)
def ctx(request: pytest.FixtureRequest) -> ResultContext:
    value: ResultContext = request.getfixturevalue(request.param)
    return value


def header(ctx: ResultContext) -> MessageHeader:
    return message_header(SETTINGS, DESTINATION, ctx.job_key, CREATED)


def oru(ctx: ResultContext, pdf: bytes | None = None) -> hl7.Message:
    text = build_oru(ctx, header(ctx), SETTINGS, pdf)
    assert "\n" not in text and text.count("\r") >= 6
    return hl7.parse(text)


def val(segment: hl7.Segment, field: int, component: int = 1, sub: int = 1) -> str:
    """The unescaped value (hl7 raises IndexError for a component of a one-value field)."""
    try:
        return str(segment.extract_field(1, field, 1, component, sub))
    except IndexError:
        return ""


def hospital(ctx: ResultContext, **attributes: str) -> ResultContext:
    """``ctx`` whose first source carries what a hospital's images carry and the test data
    lacks (accession number, birth date, issuer of the Patient ID), plus ``attributes``."""
    source = copy.deepcopy(ctx.sources[0])
    source.AccessionNumber = "A2026-0042"
    source.PatientBirthDate = "19561230"
    source.IssuerOfPatientID = "HOSP-MRN"
    for keyword, value in attributes.items():
        setattr(source, keyword, value)
    return dataclasses.replace(ctx, sources=(source, *ctx.sources[1:]))


def observations(msg: hl7.Message) -> list[hl7.Segment]:
    return list(msg.segments("OBX"))


def test_header_and_patient_are_the_original_ones(ctx: ResultContext) -> None:
    msg = oru(ctx)
    source = ctx.sources[0]
    assert [s[0][0] for s in msg][:6] == ["MSH", "PID", "ORC", "OBR", "NTE", "TQ1"]
    msh = msg.segment("MSH")
    assert (val(msh, 9, 1), val(msh, 9, 2), val(msh, 9, 3)) == ("ORU", "R01", "ORU_R01")
    assert val(msh, 12) == "2.5.1"
    assert val(msh, 10) == control_id(ctx.job_key, "emr")
    assert (val(msh, 3), val(msh, 4), val(msh, 5), val(msh, 6)) == (
        "DICOM_NODE", "RADIOLOGY", "EPIC", "HOSP")
    assert (val(msh, 7), val(msh, 11), val(msh, 18)) == ("20261122103105", "P", "UNICODE UTF-8")

    pid = msg.segment("PID")
    assert val(pid, 3) == str(source.PatientID)
    assert val(pid, 5, 1) == source.PatientName.family_name
    assert val(pid, 5, 2) == source.PatientName.given_name
    assert val(pid, 7) == str(source.get("PatientBirthDate", ""))
    assert val(pid, 8) == (str(source.PatientSex) or "U")


def test_order_carries_accession_service_status_and_the_ai_disclaimer(
        ctx: ResultContext) -> None:
    hospital_ctx = hospital(ctx)
    msg = oru(hospital_ctx)
    source = hospital_ctx.sources[0]
    pid, orc, obr = msg.segment("PID"), msg.segment("ORC"), msg.segment("OBR")
    assert (val(pid, 3, 1), val(pid, 3, 4), val(pid, 7)) == (
        str(source.PatientID), "HOSP-MRN", "19561230")
    assert (val(orc, 1), val(orc, 2), val(orc, 3)) == (
        "RE", "A2026-0042", filler_order_number(ctx.job_key))
    assert (val(obr, 2), val(obr, 18), val(obr, 3)) == (
        "A2026-0042", "A2026-0042", filler_order_number(ctx.job_key))
    assert (val(obr, 4, 1), val(obr, 4, 2), val(obr, 4, 3)) == (
        "AI-IMG", "AI image analysis", "99HOSP")
    assert val(obr, 25) == "P"
    assert val(obr, 22) == "20261122103105"
    study_time = f"{source.StudyDate}{source.StudyTime}" if source.get("StudyDate") else ""
    assert val(obr, 7) == study_time
    nte = msg.segment("NTE")
    assert AI_DISCLAIMER in val(nte, 3)
    assert f"{ctx.manifest.name} {ctx.manifest.version}" in val(nte, 3)


@pytest.mark.parametrize("triage", list(Triage))
def test_priority_and_abnormal_flags_follow_the_triage(tumor_ctx: ResultContext,
                                                       lung_ctx: ResultContext,
                                                       triage: Triage) -> None:
    for ctx in (tumor_ctx, lung_ctx):
        ctx = dataclasses.replace(ctx, result=dataclasses.replace(ctx.result, triage=triage))
        msg = oru(ctx)
        assert val(msg.segment("OBR"), 5) == PRIORITY[triage]
        tq1 = msg.segment("TQ1")
        assert (val(tq1, 9, 1), val(tq1, 9, 3)) == (PRIORITY[triage], "HL70485")
        flags = [val(obx, 8) for obx in observations(msg) if val(obx, 8)]
        expected = len(ctx.result.findings) or 1  # lung-ct: its triage measurement only
        assert flags == [FLAG[triage]] * expected


def test_the_real_lung_triage_is_sent(lung_ctx: ResultContext) -> None:
    msg = oru(lung_ctx)
    assert lung_ctx.result.triage == Triage.PRIORITY  # the phantom's emphysema index
    assert val(msg.segment("OBR"), 5) == "A"
    (flagged,) = [obx for obx in observations(msg) if val(obx, 8)]
    assert val(flagged, 3, 5) == lung_ctx.manifest.triage.measurement
    assert val(flagged, 8) == "A"


def test_one_observation_per_finding_and_measurement(ctx: ResultContext) -> None:
    msg = oru(ctx)
    obxs = observations(msg)
    findings, measurements = ctx.result.findings, ctx.result.measurements
    assert [val(obx, 1) for obx in obxs] == [str(n) for n in range(1, len(obxs) + 1)]
    assert len(obxs) == len(findings) + len(measurements) + 2  # + summary, study UID
    for obx, finding in zip(obxs, findings, strict=False):
        assert val(obx, 2) == "NM"
        assert (val(obx, 3, 1), val(obx, 3, 2), val(obx, 3, 3)) == (
            finding.concept.value, finding.concept.meaning, finding.concept.scheme)
        assert float(val(obx, 5)) == round(finding.probability, 4)
        assert (val(obx, 6, 1), val(obx, 6, 3)) == ("1", "UCUM")
        assert val(obx, 8) == FLAG[ctx.result.triage]
    for obx, m in zip(obxs[len(findings):], measurements, strict=False):
        assert val(obx, 2) == "NM"
        assert m.concept is not None
        assert (val(obx, 3, 1), val(obx, 3, 2), val(obx, 3, 3)) == (
            m.concept.value, m.concept.meaning, m.concept.scheme)
        assert val(obx, 3, 5) == m.name  # lung-ct's three volumes share SCT 'Volume'
        assert float(val(obx, 5)) == pytest.approx(m.value, abs=5e-5)
        assert (val(obx, 6, 1), val(obx, 6, 2), val(obx, 6, 3)) == (m.unit, m.unit, "UCUM")
    same_code = [val(o, 4) for o in obxs if val(o, 3) == "118565006"]
    assert same_code == [str(n) for n in range(1, len(same_code) + 1)]
    for obx in obxs:
        assert val(obx, 11) == "P"
        assert val(obx, 14) == val(msg.segment("OBR"), 7)
        assert ctx.manifest.name in val(obx, 17, 2) and ctx.manifest.version in val(obx, 17, 2)
        assert val(obx, 18) == f"{ctx.manifest.name} {ctx.manifest.version}"


def test_summary_and_study_uid_observations(ctx: ResultContext) -> None:
    *_, summary, study = observations(oru(ctx))
    assert val(summary, 2) == "TX"
    text = val(summary, 5)
    assert f"{ctx.manifest.name} {ctx.manifest.version}" in text
    assert f"triage {ctx.result.triage.value}" in text
    assert all(f.concept.meaning in text for f in ctx.result.findings)
    assert all(m.name in text for m in ctx.result.measurements)
    assert (val(study, 2), val(study, 3, 1), val(study, 3, 3)) == ("ST", "110180", "DCM")
    assert val(study, 5) == str(ctx.sources[0].StudyInstanceUID)


def test_pdf_report_round_trips(tumor_ctx: ResultContext) -> None:
    pdf = build_pdf(tumor_ctx, [])
    assert pdf.startswith(b"%PDF")
    ed = observations(oru(tumor_ctx, pdf))[-1]
    assert val(ed, 2) == "ED"
    assert (val(ed, 5, 2), val(ed, 5, 3), val(ed, 5, 4)) == ("application", "pdf", "Base64")
    assert base64.b64decode(val(ed, 5, 5), validate=True) == pdf


def test_hl7_delimiters_in_names_and_text_survive(brain_ctx: ResultContext) -> None:
    ctx = hospital(brain_ctx, PatientName="O'Brien|Smith&Co~X^Ann^Marie^Dr^III",
                   PatientID="MRN^7&8|9~0", IssuerOfPatientID="HOSP&1",
                   AccessionNumber="ACC|1^2")
    odd = Measurement(name=r"Volume \F\ \ ^ & | ~ check", value=1.5, unit="mL")
    ctx = dataclasses.replace(ctx, result=dataclasses.replace(
        ctx.result, measurements=(*ctx.result.measurements, odd)))
    msg = oru(ctx)
    assert [s[0][0] for s in msg].count("PID") == 1
    pid = msg.segment("PID")
    assert len(pid) == 9  # PID-8 is still the last field: nothing split off
    assert (val(pid, 3, 1), val(pid, 3, 4)) == ("MRN^7&8|9~0", "HOSP&1")
    assert [val(pid, 5, n) for n in range(1, 6)] == ["O'Brien|Smith&Co~X", "Ann", "Marie",
                                                     "III", "Dr"]
    assert val(msg.segment("OBR"), 2) == "ACC|1^2"
    assert val(msg.segment("OBR"), 25) == "P"
    obx = observations(msg)[len(ctx.result.measurements) - 1]
    assert (val(obx, 3, 2), val(obx, 5), val(obx, 6, 1)) == (odd.name, "1.5", "mL")
    assert odd.name in val(observations(msg)[-2], 5)


def test_message_is_valid_v251_for_hl7apy_too(lung_ctx: ResultContext) -> None:
    text = build_oru(lung_ctx, header(lung_ctx), SETTINGS, b"%PDF-1.4 tiny")
    # parsed tolerantly: hl7apy's STRICT parser reads every OBX-5 as an ST (at most 199
    # characters) whatever OBX-2 says; validate() then checks structure, cardinality and types
    parsed = hl7apy_parser.parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT,
                                         find_groups=True)
    assert parsed.validate()
    assert parsed.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR.obr_25.value == "P"


def test_control_id_is_deterministic_and_short(brain_ctx: ResultContext,
                                               lung_ctx: ResultContext) -> None:
    first = control_id(brain_ctx.job_key, "emr")
    assert first == control_id(brain_ctx.job_key, "emr")
    assert len(first) <= 20
    assert len({first, control_id(brain_ctx.job_key, "lab"),
                control_id(lung_ctx.job_key, "emr")}) == 3
    again = build_oru(brain_ctx, header(brain_ctx), SETTINGS)
    assert again == build_oru(brain_ctx, header(brain_ctx), SETTINGS)  # a retry: same bytes
    assert hl7.parse(again)["MSH.F10"] == first


def test_no_patient_id_is_a_permanent_error_without_patient_data(
        brain_ctx: ResultContext) -> None:
    ctx = hospital(brain_ctx, PatientID="")
    with pytest.raises(PermanentError, match="no Patient ID") as info:
        build_oru(ctx, header(ctx), SETTINGS)
    assert "Colin27" not in str(info.value)
