"""HL7 v2.5.1 ORU^R01 of a model's result, for the EMR (pure: no I/O).

One message per model result, built with hl7apy from the ORIGINAL (re-identified) source
instances:

- MSH: the node as sender, the destination as receiver, a control ID derived from the job and
  the destination (a re-sent message carries the same ID, so the EMR can de-duplicate);
- PID: Patient ID (with its issuer), name, birth date and sex of the sources;
- ORC/OBR: the accession number as placer order, the job as filler order, the configured
  service, the study time, result status P (preliminary: an AI result that needs review) and
  the priority of the triage; an NTE with the AI disclaimer and the model; a TQ1 with the
  priority again (TQ1-9, the v2.5.1 successor of OBR-5);
- OBX, in groups as the SR's measurement groups (HL7 v2.5.1 7.4.2.4: OBX-4 groups related
  observations; each group has its own sub-ID, shared by all its OBX):
  - per segment: its finding site (an anatomical segment) or finding as a CE, then its
    measurements (NM, UCUM units);
  - the measurements of no single segment (lung-ct's total volume and emphysema index);
  - a classification: ONE finding, the predicted class (CE, OBX-8 the triage's flag), then the
    probability of every class, the predicted one first, each coded "Probability of <class>"
    (never a finding; NM, or SN '<^0.0001' / '>^0.9999' rather than a rounded 0 or 1);
  the triage's flag is also on the measurement the triage is computed from; a measurement
  with an interval is followed by two OBX of its own, "<name>, lower 95% limit" and "... upper
  ...", in its unit, whose OBX-17 names how the interval was estimated (test-time
  augmentation; a reference range in OBX-7 would read as a normal range). Then, without a
  sub-ID (report level): a model's quality flag (CE, DCM "Analysis Quality Rating" = SCT
  "Uncertain"; its reason is in the summary), a text summary (TX, one paragraph per repetition,
  each within the 199 characters hl7apy's strict parser allows), the Study Instance UID (to open
  the images) and optionally the PDF report (ED, base64). Every OBX is preliminary (OBX-11 P),
  carries the study time (OBX-14) and the time of the analysis (OBX-19), names AI inference (or
  an interval's method) as method (OBX-17) and the model as equipment (OBX-18). Codes of the
  node's own concepts come from ``node.core.local_codes`` and fit their fields whole (CE.1
  holds 20 characters).

Every text value passes through :func:`escape` first: a name or text holding ``| ^ & ~ \\``
stays one value. hl7apy escapes what is assigned to a component, but parses what is assigned
to a field as ER7 (a ``^`` there splits the field), and its escaping leaves a backslash that
already looks like an escape sequence (a literal ``\\F\\``) as it is; on escaped text its own
pass changes nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.core import Message  # type: ignore[import-untyped]
from hl7apy.exceptions import HL7apyException  # type: ignore[import-untyped]
from hl7apy.parser import parse_message  # type: ignore[import-untyped]
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.core import local_codes
from node.core.contract import (
    AI_DISCLAIMER,
    ANALYSIS_QUALITY_RATING,
    MANUFACTURER,
    QUALITY_FLAGS,
    Finding,
    Measurement,
    ResultContext,
    Triage,
    anatomical,
    classification,
)
from node.core.errors import PermanentError
from node.core.local_codes import probability_of
from node.core.manifest import CodedConcept
from node.core.settings import Hl7Destination, Hl7Settings

VERSION = "2.5.1"
#: the coding scheme of the node's own codes (as in the SR and the manifests)
LOCAL_SCHEME = local_codes.SCHEME
#: HL7 table 0211: the message is sent as UTF-8
CHARACTER_SET = "UNICODE UTF-8"
#: OBR-5 and TQ1-9 (HL7 table 0485) by triage
PRIORITY = {Triage.URGENT: "S", Triage.PRIORITY: "A", Triage.ROUTINE: "R"}
_PRIORITY_TEXT = {"S": "Stat", "A": "ASAP", "R": "Routine"}
#: OBX-8 (HL7 table 0078) by triage: critically abnormal, abnormal, normal
ABNORMAL_FLAG = {Triage.URGENT: "AA", Triage.PRIORITY: "A", Triage.ROUTINE: "N"}
_SEXES = ("M", "F", "O")  # DICOM's values that HL7 table 0001 shares; anything else is U
#: the observation codes of the node's own OBX segments
SUMMARY_CODE = (local_codes.SUMMARY.value, local_codes.SUMMARY.meaning, LOCAL_SCHEME)
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")
PDF_CODE = (local_codes.REPORT_PDF.value, local_codes.REPORT_PDF.meaning, LOCAL_SCHEME)
#: OBX-3 of a group's coded first observation: an anatomical segment's site, else its finding
FINDING_SITE_CODE = ("363698007", "Finding site", "SCT")
FINDING_CODE = ("121071", "Finding", "DCM")
#: OBX-17: how every observation was made
METHOD_CODE = (local_codes.INFERENCE.value, local_codes.INFERENCE.meaning, LOCAL_SCHEME)
PROBABILITY_UNIT = ("1", "1", "UCUM")
#: a probability below it (or above 1 - it) is sent as '<' (or '>') it: never as 0 or 1
PROBABILITY_FLOOR = 0.0001
#: the longest text value (or TX paragraph) hl7apy's strict parser accepts in OBX-5
MAX_TEXT = 199
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class MessageHeader:
    """MSH-3..7, MSH-10 and MSH-11 of one message to one destination."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    processing_id: str
    control_id: str
    created: datetime


@dataclass(frozen=True)
class _Observation:
    """One OBX: ``value`` is ER7 already (escaped text, or components of a CE, SN or ED);
    ``more`` are further repetitions of OBX-5 (the paragraphs of a TX after the first)."""

    value_type: str
    code: tuple[str, ...]
    value: str
    units: tuple[str, ...] = ()
    abnormal: str = ""
    sub_id: str = ""  # OBX-4: the group it belongs to; empty for a report-level observation
    more: tuple[str, ...] = ()
    method: tuple[str, ...] = ()  # OBX-17 when not the AI inference (METHOD_CODE)


def message_header(settings: Hl7Settings, destination: Hl7Destination, job_key: str,
                   created: datetime) -> MessageHeader:
    """The header of the job's message to ``destination`` (its control ID included)."""
    return MessageHeader(
        sending_application=settings.sending_application,
        sending_facility=settings.sending_facility,
        receiving_application=destination.receiving_application,
        receiving_facility=destination.receiving_facility,
        processing_id=settings.processing_id,
        control_id=control_id(job_key, destination.name),
        created=created,
    )


def control_id(job_key: str, destination: str) -> str:
    """MSH-10 of the job's message to ``destination``: 20 hex digits, the same on every retry."""
    digest = hashlib.sha256(f"dicom-node|hl7|{job_key}|{destination}".encode()).hexdigest()
    return digest[:20].upper()


def filler_order_number(job_key: str) -> str:
    """ORC-3/OBR-3: the node's identifier of the job's result (16 hex digits)."""
    return hashlib.sha256(f"dicom-node|order|{job_key}".encode()).hexdigest()[:16].upper()


def escape(text: str) -> str:
    """``text`` as one ER7 value: delimiters escaped, control characters (line breaks) as spaces."""
    text = _CONTROL.sub(" ", text)
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return text


def build_oru(ctx: ResultContext, header: MessageHeader, settings: Hl7Settings,
              pdf: bytes | None = None) -> str:
    """The ORU^R01 of ``ctx.result`` as ER7 text, segments separated by carriage returns."""
    if not ctx.sources:
        raise PermanentError(f"{ctx.manifest.name}: no source instances to report on")
    try:
        msg = _message(ctx, header, settings, pdf)
        msg.validate()
        return str(msg.to_er7())
    except HL7apyException as exc:
        # the class only: hl7apy's texts quote the offending value (patient data)
        raise PermanentError(f"{ctx.manifest.name}: hl7apy refused the ORU^R01 "
                             f"({exc.__class__.__name__})") from None


def _message(ctx: ResultContext, header: MessageHeader, settings: Hl7Settings,
             pdf: bytes | None) -> Any:
    source = ctx.sources[0]
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    _msh(msg.msh, header)
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    _pid(result.add_group("ORU_R01_PATIENT").add_segment("PID"), source)
    # hl7apy writes segments in the order they are added: ORC, OBR, NTE, TQ1, OBX as in v2.5.1
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _orc(order.add_segment("ORC"), ctx, header, source)
    _obr(order.add_segment("OBR"), ctx, header, settings, source)
    _nte(order.add_segment("NTE"), ctx)
    _tq1(order.add_group("ORU_R01_TIMING_QTY").add_segment("TQ1"), ctx)
    for set_id, obs in enumerate(_observations(ctx, source, pdf), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        _obx(obx, set_id, obs, ctx, source)
    return msg


# --------------------------------------------------------------------------------------------
# segments


def _msh(msh: Any, header: MessageHeader) -> None:
    fill(msh.msh_3, header.sending_application)
    fill(msh.msh_4, header.sending_facility)
    fill(msh.msh_5, header.receiving_application)
    fill(msh.msh_6, header.receiving_facility)
    fill(msh.msh_7, hl7_datetime(header.created))
    fill(msh.msh_9, "ORU", "R01", "ORU_R01")
    msh.msh_10 = escape(header.control_id)
    fill(msh.msh_11, header.processing_id)
    msh.msh_18 = CHARACTER_SET


def _pid(pid: Any, source: Dataset) -> None:
    patient_id = str(source.get("PatientID", "") or "")
    if not patient_id:
        raise PermanentError("the source images have no Patient ID: the EMR cannot match them")
    pid.pid_1 = "1"
    fill(pid.pid_3, patient_id)
    fill(pid.pid_3.cx_4, *_issuer(source))
    name = source.get("PatientName")
    if isinstance(name, MultiValue):  # a backslash split it: PN holds one name
        name = name[0] if name else None
    if name:
        fill(pid.pid_5.xpn_1, name.family_name)
        fill(pid.pid_5, "", name.given_name, name.middle_name, name.name_suffix,
             name.name_prefix)
    fill(pid.pid_7, _digits(source.get("PatientBirthDate"), 8))
    sex = str(source.get("PatientSex", "") or "").upper()
    pid.pid_8 = sex if sex in _SEXES else "U"


def _issuer(source: Dataset) -> tuple[str, ...]:
    """CX-4 (assigning authority, HD) from Issuer of Patient ID and its qualifiers."""
    issuer = str(source.get("IssuerOfPatientID", "") or "")
    qualifiers = source.get("IssuerOfPatientIDQualifiersSequence")
    if not qualifiers:
        return (issuer,) if issuer else ()
    item = qualifiers[0]
    return (issuer, str(item.get("UniversalEntityID", "") or ""),
            str(item.get("UniversalEntityIDType", "") or ""))


def _orc(orc: Any, ctx: ResultContext, header: MessageHeader, source: Dataset) -> None:
    orc.orc_1 = "RE"
    fill(orc.orc_2, _accession(source))
    fill(orc.orc_3, filler_order_number(ctx.job_key), header.sending_application)
    fill(orc.orc_9, hl7_datetime(header.created))


def _obr(obr: Any, ctx: ResultContext, header: MessageHeader, settings: Hl7Settings,
         source: Dataset) -> None:
    accession = _accession(source)
    obr.obr_1 = "1"
    fill(obr.obr_2, accession)
    fill(obr.obr_3, filler_order_number(ctx.job_key), header.sending_application)
    fill(obr.obr_4, settings.service_id, settings.service_text, settings.service_coding_system)
    obr.obr_5 = PRIORITY[ctx.result.triage]
    fill(obr.obr_7, study_datetime(source))
    if accession:
        obr.obr_18 = escape(accession)
    fill(obr.obr_22, hl7_datetime(header.created))
    obr.obr_25 = "P"


def _nte(nte: Any, ctx: ResultContext) -> None:
    nte.nte_1 = "1"
    nte.nte_2 = "L"  # the filler (the node) is the source of the comment
    nte.nte_3 = escape(f"{AI_DISCLAIMER}. Model: {ctx.algorithm}.")


def _tq1(tq1: Any, ctx: ResultContext) -> None:
    priority = PRIORITY[ctx.result.triage]
    tq1.tq1_1 = "1"
    fill(tq1.tq1_9, priority, _PRIORITY_TEXT[priority], "HL70485")


def _obx(obx: Any, set_id: int, obs: _Observation, ctx: ResultContext,
         source: Dataset) -> None:
    obx.obx_1 = str(set_id)
    obx.obx_2 = obs.value_type
    fill(obx.obx_3, *obs.code)
    if obs.sub_id:
        obx.obx_4 = obs.sub_id
    obx.obx_5 = obs.value
    for repetition in obs.more:
        obx.add_field("OBX_5").value = repetition
    fill(obx.obx_6, *obs.units)
    if obs.abnormal:
        obx.obx_8 = obs.abnormal
    obx.obx_11 = "P"
    fill(obx.obx_14, study_datetime(source))
    fill(obx.obx_17, *(obs.method or METHOD_CODE))
    fill(obx.obx_18, ctx.algorithm, MANUFACTURER)
    fill(obx.obx_19, hl7_datetime(ctx.created))


def fill(element: Any, *values: str) -> None:
    """Set the first components of a composite ``element`` (empty values are left out)."""
    for index, value in enumerate(values, start=1):
        if value:
            setattr(element, f"{element.datatype.lower()}_{index}", escape(value))


# --------------------------------------------------------------------------------------------
# observations


def _observations(ctx: ResultContext, source: Dataset,
                  pdf: bytes | None) -> Iterator[_Observation]:
    """The OBX segments in order: the result's groups, then the report-level observations."""
    for group, observations in enumerate(_groups(ctx), start=1):
        for obs in observations:
            yield dataclasses.replace(obs, sub_id=str(group))
    quality = ctx.result.quality
    if quality is not None:
        flag = QUALITY_FLAGS.get(quality.flag) or local_codes.name_code(quality.flag)
        yield _Observation("CE", _code(ANALYSIS_QUALITY_RATING), _ce(flag))
    first, *more = (escape(p) for p in summary_paragraphs(ctx))
    yield _Observation("TX", SUMMARY_CODE, first, more=tuple(more))
    yield _Observation("ST", STUDY_UID_CODE, escape(str(source.StudyInstanceUID)))
    if pdf is not None:
        data = base64.b64encode(pdf).decode("ascii")
        yield _Observation("ED", PDF_CODE, f"^application^pdf^Base64^{data}")


def _groups(ctx: ResultContext) -> Iterator[list[_Observation]]:
    """One group (one OBX-4 sub-ID) per segment, one for the measurements of no single segment,
    one for the classification: what the SR's measurement groups hold."""
    flag = ABNORMAL_FLAG[ctx.result.triage]
    labels = {s.label for s in ctx.result.segments}

    def measured(m: Measurement) -> list[_Observation]:
        kind, value = _number(m.value)
        units = (m.unit, m.unit, "UCUM")
        first = _Observation(kind, _measurement_code(m), value, units,
                             flag if m.name == ctx.manifest.triage.measurement else "")
        if m.interval is None:
            return [first]
        method = _code(local_codes.uncertainty_method(m.interval.method))
        return [first, *(
            _Observation("NM", _code(local_codes.interval_limit(m.name, side, m.interval.level)),
                         _number(limit)[1], units, method=method)
            for side, limit in (("lower", m.interval.lower), ("upper", m.interval.upper)))]

    for s in ctx.result.segments:
        site = FINDING_SITE_CODE if anatomical(s) else FINDING_CODE
        yield [_Observation("CE", site, _ce(s.type)),
               *(o for m in ctx.result.measurements if m.segment_label == s.label
                 for o in measured(m))]
    loose = [o for m in ctx.result.measurements if m.segment_label not in labels
             for o in measured(m)]
    if loose:
        yield loose
    classes = classification(ctx.result)
    if classes is not None:
        yield [_Observation("CE", FINDING_CODE, _ce(classes.finding.concept), abnormal=flag),
               *(_Observation(*_probability_of(f)) for f in (classes.finding, *classes.others))]


def _code(concept: CodedConcept) -> tuple[str, ...]:
    return concept.value, concept.meaning, concept.scheme


def _ce(concept: CodedConcept) -> str:
    """A coded value as the components of an OBX-5 of type CE."""
    return "^".join(escape(part) for part in _code(concept))


def _measurement_code(m: Measurement) -> tuple[str, ...]:
    """Its concept, with the node's code of its name as alternate (lung-ct's volumes all share
    SNOMED CT 'Volume'); a local concept (e.g. LAA950) or none: the node's code alone."""
    local = _code(local_codes.name_code(m.name))
    if m.concept is None:
        return local
    if local_codes.is_local(m.concept):
        return _code(m.concept)
    return (*_code(m.concept), *local)


#: what the summary says of an AI result before review, and after a radiologist approved it
PRELIMINARY = "(preliminary, needs review)"
APPROVED = "(reviewed and approved by a radiologist)"


def summary_paragraphs(ctx: ResultContext) -> list[str]:
    """The text summary for the EMR, as paragraphs of at most 199 characters once escaped.

    They travel as repetitions of one TX value (HL7 v2.5.1 2.A.78: in TX the repetition
    separator marks a paragraph break), which keeps each within what hl7apy's strict parser
    allows (it reads OBX-5 as ST, at most 199 characters) and the summary one observation."""
    r = ctx.result
    parts = [f"AI {ctx.algorithm} {PRELIMINARY}: triage {r.triage.value}."]
    classes = classification(r)
    if classes is not None:
        f = classes.finding
        parts.append(f"Finding: {f.concept.meaning}, probability "
                     f"{_probability_text(f.probability)}.")
        if classes.others:
            parts.append("Probabilities of the classes not found: " + "; ".join(
                f"{o.concept.meaning} {_probability_text(o.probability)}"
                for o in classes.others) + ".")
    if r.measurements:
        parts.append("Measurements: " + "; ".join(
            f"{m.name} {_number(m.value)[1]} {m.unit}{_interval_text(m)}"
            for m in r.measurements) + ".")
    if r.quality is not None:
        parts.append(f"Quality flag {r.quality.flag}: {r.quality.reason}.")
    return [chunk for part in parts for chunk in _wrap(part, MAX_TEXT)]


def _interval_text(m: Measurement) -> str:
    """' (95% range 1930.4-1968.4, 8 flip passes)', or '' without an interval."""
    i = m.interval
    if i is None:
        return ""
    return (f" ({100.0 * i.level:g}% range {_number(i.lower)[1]}-{_number(i.upper)[1]}, "
            f"{i.samples_text})")


def summary(ctx: ResultContext) -> str:
    """The summary as one line."""
    return " ".join(summary_paragraphs(ctx))


def _wrap(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters once escaped, broken between words."""
    pieces: list[str] = []
    current = ""
    for word in text.split(" "):
        while len(escape(word)) > limit:  # a word longer than a piece: cut it where it must be
            cut = limit
            while len(escape(word[:cut])) > limit:
                cut -= 1
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}" if current else word
        if len(escape(candidate)) <= limit:
            current = candidate
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces


def _probability_of(f: Finding) -> tuple[str, tuple[str, ...], str, tuple[str, ...]]:
    """'Probability of <class>' as an observation: value type, code, value, units."""
    kind, value = _probability(f.probability)
    return kind, _code(probability_of(f.concept)), value, PROBABILITY_UNIT


def _number(value: float) -> tuple[str, str]:
    """An NM value rounded to 4 decimals, without trailing zeros: ('NM', text)."""
    if not math.isfinite(value):
        raise PermanentError("a result value is not a finite number: it cannot be sent as NM")
    text = f"{round(value, 4):.4f}".rstrip("0").rstrip(".")
    return "NM", "0" if text in ("-0", "") else text


def _probability(p: float) -> tuple[str, str]:
    """A probability as NM to 4 decimals, or as SN '<^0.0001' / '>^0.9999' where rounding would
    say 0 or 1 (certainly absent or present, which no classifier knows)."""
    if not math.isfinite(p):
        raise PermanentError("a probability is not a finite number: it cannot be sent")
    if p < PROBABILITY_FLOOR:
        return "SN", f"<^{PROBABILITY_FLOOR}"
    if p > 1 - PROBABILITY_FLOOR:
        return "SN", f">^{1 - PROBABILITY_FLOOR:.4f}"
    return _number(p)


def _probability_text(p: float) -> str:
    kind, value = _probability(p)
    return value.replace("^", " ") if kind == "SN" else value


# --------------------------------------------------------------------------------------------
# dates and identifiers of the sources


def hl7_datetime(value: datetime) -> str:
    """A DTM to the second, with the UTC offset when ``value`` knows it."""
    return value.strftime("%Y%m%d%H%M%S%z")


def study_datetime(source: Dataset) -> str:
    """Study Date and Time as a DTM (time to the second, with the timezone offset if given)."""
    date = _digits(source.get("StudyDate"), 8)
    if not date:
        return ""
    time = _digits(str(source.get("StudyTime", "") or "").split(".")[0], 6)
    offset = str(source.get("TimezoneOffsetFromUTC", "") or "")
    offset = offset if re.fullmatch(r"[+-]\d{4}", offset) else ""
    return date + (time if len(time) in (2, 4, 6) else "") + offset


def _digits(value: object, length: int) -> str:
    """``value`` if it is digits only (at most ``length``), else ''."""
    text = str(value or "").strip()
    return text if _DIGITS.fullmatch(text) and len(text) <= length else ""


def _accession(source: Dataset) -> str:
    return str(source.get("AccessionNumber", "") or "")


def finalise(er7: str, reviewer_id: str, reviewer_name: str) -> str:
    """The ORU ``er7`` made final after a radiologist's review: result status F on OBR-25
    and every OBX-11, and the reviewer as principal result interpreter (OBR-32: NDL whose
    first component is a CNN, ID then family name), and the summary's "preliminary, needs
    review" says it was reviewed and approved. Idempotent: a re-run sets the same."""
    er7 = er7.replace(PRELIMINARY, APPROVED)  # no HL7 delimiter in either: same text escaped
    try:
        msg = parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT)
        order = msg.oru_r01_patient_result.oru_r01_order_observation
        obr = order.obr
        obr.obr_25 = "F"
        obr.obr_32.ndl_1.cnn_1 = escape(reviewer_id)
        if reviewer_name:
            obr.obr_32.ndl_1.cnn_2 = escape(reviewer_name)
        for group in order.oru_r01_observation:
            group.obx.obx_11 = "F"
        msg.validate()
        return str(msg.to_er7())
    except HL7apyException as exc:
        raise PermanentError(f"hl7apy refused the final ORU^R01 "
                             f"({exc.__class__.__name__})") from None
