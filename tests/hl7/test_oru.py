"""ORU^R01 of real model results, read back with the independent ``hl7`` parser.

Every value is compared with the ORIGINAL source attribute or the model's result it must carry;
hl7apy (which built the message) is only used once more, to re-parse and validate it strictly.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
from datetime import datetime

import hl7
import pytest
from hl7apy import parser as hl7apy_parser
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import MaxLengthReached
from hl7apy.validation import Validator

from node.core.contract import AI_DISCLAIMER, Finding, Measurement, ResultContext, Triage
from node.core.errors import PermanentError
from node.core.manifest import CodedConcept
from node.core.settings import Hl7Destination, Hl7Settings
from node.hl7.oru import (
    MessageHeader,
    build_oru,
    control_id,
    filler_order_number,
    message_header,
)
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
        # one flag: on the classifier's finding, or on lung-ct's triage measurement
        flags = [val(obx, 8) for obx in observations(msg) if val(obx, 8)]
        assert flags == [FLAG[triage]]


def test_the_real_lung_triage_is_sent(lung_ctx: ResultContext) -> None:
    msg = oru(lung_ctx)
    assert lung_ctx.result.triage == Triage.PRIORITY  # the phantom's emphysema index
    assert val(msg.segment("OBR"), 5) == "A"
    (flagged,) = [obx for obx in observations(msg) if val(obx, 8)]
    (basis,) = [m for m in lung_ctx.result.measurements
                if m.name == lung_ctx.manifest.triage.measurement]
    assert basis.concept is not None
    assert (val(flagged, 3, 1), val(flagged, 3, 2)) == (basis.concept.value, basis.concept.meaning)
    assert val(flagged, 8) == "A"


def test_measurements_are_grouped_by_segment_with_their_site(ctx: ResultContext) -> None:
    """OBX-4: one sub-ID per segment (its finding site first, then its measurements), one for
    the measurements of no segment; OBX-3 + OBX-4 never repeat under the OBR."""
    obxs = observations(oru(ctx))
    r = ctx.result
    assert [val(obx, 1) for obx in obxs] == [str(n) for n in range(1, len(obxs) + 1)]
    keys = [(val(o, 3, 1), val(o, 3, 3), val(o, 3, 4), val(o, 4)) for o in obxs]
    assert len(keys) == len(set(keys))
    grouped: dict[str, list[hl7.Segment]] = {}
    for obx in obxs:
        if val(obx, 4):
            grouped.setdefault(val(obx, 4), []).append(obx)
    assert list(grouped) == [str(n) for n in range(1, len(grouped) + 1)]  # 1, 2, 3, ...
    loose = [m for m in r.measurements if m.segment_label not in {s.label for s in r.segments}]
    assert len(grouped) == len(r.segments) + bool(loose) + bool(r.findings)
    for number, segment in enumerate(r.segments, start=1):
        site, *values = grouped[str(number)]
        assert (val(site, 2), val(site, 3, 1), val(site, 3, 3)) == ("CE", "363698007", "SCT")
        assert (val(site, 5, 1), val(site, 5, 2), val(site, 5, 3)) == (
            segment.type.value, segment.type.meaning, segment.type.scheme)
        mine = [m for m in r.measurements if m.segment_label == segment.label]
        assert_measurements(values, mine)
    if loose:
        assert_measurements(grouped[str(len(r.segments) + 1)], loose)
    for obx in obxs:
        assert val(obx, 11) == "P"
        assert val(obx, 14) == val(oru(ctx).segment("OBR"), 7)
        assert (val(obx, 17, 1), val(obx, 17, 3)) == ("AI-INFERENCE", "99DCMNODE")
        assert val(obx, 18) == f"{ctx.manifest.name} {ctx.manifest.version}"


def assert_measurements(obxs: list[hl7.Segment], measurements: list[Measurement]) -> None:
    assert len(obxs) == len(measurements)
    for obx, m in zip(obxs, measurements, strict=True):
        assert val(obx, 2) == "NM"
        assert m.concept is not None
        assert (val(obx, 3, 1), val(obx, 3, 2), val(obx, 3, 3)) == (
            m.concept.value, m.concept.meaning, m.concept.scheme)
        if m.concept.scheme != "99DCMNODE":  # a shared concept ('Volume'): the name beside it
            assert (val(obx, 3, 4), val(obx, 3, 5), val(obx, 3, 6)) == (
                re.sub(r"[^A-Z0-9]+", "-", m.name.upper()), m.name, "99DCMNODE")
        assert float(val(obx, 5)) == pytest.approx(m.value, abs=5e-5)
        assert (val(obx, 6, 1), val(obx, 6, 2), val(obx, 6, 3)) == (m.unit, m.unit, "UCUM")


def test_a_classifier_reports_one_finding_and_the_probabilities_of_the_others(
        tumor_ctx: ResultContext) -> None:
    """Issue 11 item 3: the predicted class is the one finding; the others are probabilities."""
    findings = tumor_ctx.result.findings
    predicted = sorted(findings, key=lambda f: f.probability)[-1]
    obxs = [obx for obx in observations(oru(tumor_ctx)) if val(obx, 4)]
    assert {val(obx, 4) for obx in obxs} == {"1"}  # one group: the classification
    finding, *probabilities = obxs
    assert (val(finding, 2), val(finding, 3, 1), val(finding, 3, 3)) == ("CE", "121071", "DCM")
    assert (val(finding, 5, 1), val(finding, 5, 2), val(finding, 5, 3)) == (
        predicted.concept.value, predicted.concept.meaning, predicted.concept.scheme)
    assert val(finding, 8) == "N"
    ordered = [predicted, *(f for f in findings if f is not predicted)]
    assert len(probabilities) == len(ordered)
    for obx, f in zip(probabilities, ordered, strict=True):
        assert (val(obx, 3, 1), val(obx, 3, 3)) == (f"P-{f.concept.value}", "99DCMNODE")
        assert val(obx, 3, 2).startswith("Probability of ")
        assert (val(obx, 6, 1), val(obx, 6, 3)) == ("1", "UCUM")
        assert val(obx, 8) == ""  # a probability is not a finding: no abnormal flag
        if f.probability < 0.0001:  # the real glioma probability (4.8e-05): never "0"
            assert (val(obx, 2), val(obx, 5, 1), val(obx, 5, 2)) == ("SN", "<", "0.0001")
        else:
            assert val(obx, 2) == "NM"
            assert float(val(obx, 5)) == round(f.probability, 4)
    assert any(f.probability < 0.0001 for f in findings)  # the SN case above was exercised


def test_probabilities_that_round_to_0_or_1_are_sent_as_bounds(
        tumor_ctx: ResultContext) -> None:
    findings = tumor_ctx.result.findings
    sure = tuple(dataclasses.replace(f, probability=p)
                 for f, p in zip(findings, (0.999995, 0.000003, 0.000001, 0.000001), strict=True))
    ctx = dataclasses.replace(tumor_ctx, result=dataclasses.replace(tumor_ctx.result,
                                                                   findings=sure))
    obxs = [obx for obx in observations(oru(ctx)) if val(obx, 4)]
    assert [(val(o, 2), val(o, 5, 1), val(o, 5, 2)) for o in obxs[1:]] == [
        ("SN", ">", "0.9999"), ("SN", "<", "0.0001"), ("SN", "<", "0.0001"),
        ("SN", "<", "0.0001")]
    text = " ".join(repetitions(observations(oru(ctx))[-2], 5))
    assert f"{findings[0].concept.meaning}, probability > 0.9999" in text
    for f in findings[1:]:
        assert f"{f.concept.meaning} < 0.0001" in text
    assert not re.search(r" [01][;.]( |$)", text)  # no probability written as 0 or 1


def repetitions(segment: hl7.Segment, field: int) -> list[str]:
    """Every repetition of a field, unescaped."""
    value = segment[field]
    if not isinstance(value[0], hl7.Repetition):
        return [val(segment, field)]
    return [str(segment.extract_field(1, field, n, 1, 1)) for n in range(1, len(value) + 1)]


def test_summary_and_study_uid_observations(ctx: ResultContext) -> None:
    *_, summary, study = observations(oru(ctx))
    assert (val(summary, 2), val(summary, 3, 1), val(summary, 4)) == ("TX", "AI-SUMMARY", "")
    paragraphs = repetitions(summary, 5)
    assert all(0 < len(p) <= 199 for p in paragraphs)
    text = " ".join(paragraphs)
    assert f"{ctx.manifest.name} {ctx.manifest.version}" in text
    assert f"triage {ctx.result.triage.value}" in text
    assert all(f.concept.meaning in text for f in ctx.result.findings)
    assert all(m.name in text for m in ctx.result.measurements)
    if ctx.result.findings:
        predicted = max(ctx.result.findings, key=lambda f: f.probability)
        assert paragraphs[1].startswith(f"Finding: {predicted.concept.meaning}, probability ")
        assert paragraphs[2].startswith("Probabilities of the classes not found: ")
        assert not re.search(r"\b(Glioma|meningioma|adenoma) 0\b(?!\.)", text)
    assert (val(study, 2), val(study, 3, 1), val(study, 3, 3), val(study, 4)) == (
        "ST", "110180", "DCM", "")
    assert val(study, 5) == str(ctx.sources[0].StudyInstanceUID)


def test_a_long_summary_is_split_into_paragraphs_that_pass_strict_parsing(
        lung_ctx: ResultContext) -> None:
    many = tuple(Measurement(f"Lobe {n} volume with a long descriptive name", 1000.0 + n, "mL")
                 for n in range(12))
    ctx = dataclasses.replace(lung_ctx, result=dataclasses.replace(
        lung_ctx.result, measurements=(*lung_ctx.result.measurements, *many)))
    text = build_oru(ctx, header(ctx), SETTINGS)
    assert_strictly_valid(text)
    paragraphs = repetitions(observations(hl7.parse(text))[-2], 5)
    assert len(paragraphs) >= 4 and all(len(p) <= 199 for p in paragraphs)
    assert all(m.name in " ".join(paragraphs) for m in many)


def test_pdf_report_round_trips(tumor_ctx: ResultContext) -> None:
    pdf = build_pdf(tumor_ctx, [])
    assert pdf.startswith(b"%PDF")
    ed = observations(oru(tumor_ctx, pdf))[-1]
    assert (val(ed, 2), val(ed, 3, 1), val(ed, 4)) == ("ED", "AI-REPORT-PDF", "")
    assert (val(ed, 5, 2), val(ed, 5, 3), val(ed, 5, 4)) == ("application", "pdf", "Base64")
    assert base64.b64decode(val(ed, 5, 5), validate=True) == pdf


def test_hl7_delimiters_in_names_and_text_survive(brain_ctx: ResultContext) -> None:
    """Every delimiter (| ^ & ~ and the escape character) and a literal escape sequence, in
    patient data, the accession number, a measurement's name and a class's meaning: each value
    stays one value, reads back unescaped, and the message still passes strict validation."""
    ctx = hospital(brain_ctx, PatientName="O'Brien|Smith&Co~X^Ann^Marie^Dr^III",
                   PatientID="MRN^7&8|9~0", IssuerOfPatientID="HOSP&1",
                   AccessionNumber="ACC|1^2")
    odd = Measurement(name=r"Volume \F\ \ ^ & | ~ check", value=1.5, unit="mL")
    odd_class = CodedConcept("ODD-1", "99DCMNODE", r"Class ^ & | ~ \ \T\ odd")
    ctx = dataclasses.replace(ctx, result=dataclasses.replace(
        ctx.result, measurements=(*ctx.result.measurements, odd),
        findings=(Finding(odd_class, 0.75),
                  Finding(CodedConcept("OTHER", "99DCMNODE", "Other"), 0.25))))
    text = build_oru(ctx, header(ctx), SETTINGS)
    assert_strictly_valid(text)
    msg = hl7.parse(text)
    assert [s[0][0] for s in msg].count("PID") == 1
    pid = msg.segment("PID")
    assert len(pid) == 9  # PID-8 is still the last field: nothing split off
    assert (val(pid, 3, 1), val(pid, 3, 4)) == ("MRN^7&8|9~0", "HOSP&1")
    assert [val(pid, 5, n) for n in range(1, 6)] == ["O'Brien|Smith&Co~X", "Ann", "Marie",
                                                     "III", "Dr"]
    assert val(msg.segment("OBR"), 2) == "ACC|1^2"
    assert val(msg.segment("OBR"), 25) == "P"
    obxs = observations(msg)
    assert all(len(obx) == 20 for obx in obxs)  # OBX-19 is the last field of every OBX
    (measured,) = [obx for obx in obxs if val(obx, 3, 2) == odd.name]
    assert (val(measured, 5), val(measured, 6, 1)) == ("1.5", "mL")
    (finding,) = [obx for obx in obxs if val(obx, 3, 1) == "121071"]
    assert (val(finding, 5, 1), val(finding, 5, 2)) == ("ODD-1", odd_class.meaning)
    summary = " ".join(repetitions(obxs[-2], 5))
    assert odd.name in summary and odd_class.meaning in summary


def test_a_backslash_in_the_patient_name_keeps_its_first_value(brain_ctx: ResultContext) -> None:
    """DICOM reads a backslash as a value separator: PN with one is two values; HL7 gets one."""
    ctx = hospital(brain_ctx, PatientName="Doe^Jane\\Roe^Richard")
    assert_strictly_valid(text := build_oru(ctx, header(ctx), SETTINGS))
    pid = hl7.parse(text).segment("PID")
    assert (val(pid, 5, 1), val(pid, 5, 2)) == ("Doe", "Jane")


def assert_strictly_valid(text: str) -> None:
    """hl7apy's strict parse and its validator, and the ``hl7`` package's parse."""
    parsed = hl7apy_parser.parse_message(text, validation_level=VALIDATION_LEVEL.STRICT,
                                         find_groups=True)
    assert Validator.validate(parsed)
    assert parsed.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR.obr_25.value == "P"
    assert str(hl7.parse(text)).rstrip("\r") == text  # it reads every segment whole


def test_every_oru_of_the_shipped_models_passes_strict_validation(ctx: ResultContext) -> None:
    """The three shipped models' real results, as a hospital's images would carry them and
    at every triage: each message passes hl7apy STRICT (parse and validator) and ``hl7``."""
    for each in (ctx, hospital(ctx)):
        for triage in Triage:
            each = dataclasses.replace(each, result=dataclasses.replace(each.result,
                                                                        triage=triage))
            assert_strictly_valid(build_oru(each, header(each), SETTINGS))


def test_a_message_with_the_pdf_is_strictly_valid_but_for_the_pdf_itself(
        tumor_ctx: ResultContext) -> None:
    """hl7apy reads every OBX-5 as an ST of at most 199 characters, whatever OBX-2 says, so no
    embedded PDF (ED, base64) can pass its strict parser; everything else in such a message
    does, and the ED round-trips through ``hl7`` (test_pdf_report_round_trips)."""
    text = build_oru(tumor_ctx, header(tumor_ctx), SETTINGS, build_pdf(tumor_ctx, []))
    segments = text.split("\r")
    assert segments[-1].startswith(f"OBX|{len(segments) - 6}|ED|AI-REPORT-PDF^")
    assert_strictly_valid("\r".join(segments[:-1]))
    with pytest.raises(MaxLengthReached):
        hl7apy_parser.parse_message(text, validation_level=VALIDATION_LEVEL.STRICT,
                                    find_groups=True)


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
