"""TID 1500 SR builder: valid (dciodvfy), rendered (dsrdump), and the TID 1500 rules dciodvfy
does not check, read from the written file's content tree."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.core.contract import AI_DISCLAIMER, MANUFACTURER, ResultContext
from node.core.errors import PermanentError
from node.core.manifest import CodedConcept
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import device_uid
from node.sr_writer.seg import build_seg
from node.sr_writer.sr import build_sr
from tests.sr_writer.test_seg import (
    assert_same_patient_and_study,
    assert_valid,
    encoded,
    with_frame_of_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")

# concept names (DCM unless said otherwise)
PROCEDURE_REPORTED = "121058"
OBSERVER_TYPE, DEVICE, DEVICE_UID, DEVICE_MODEL = "121005", "121007", "121012", "121015"
IMAGING_MEASUREMENTS, MEASUREMENT_GROUP = "126010", "125007"
TRACKING_ID, TRACKING_UID, FINDING = "112039", "112040", "121071"
FINDING_SITE = "363698007"  # SCT
ALGORITHM_NAME, ALGORITHM_VERSION = "111001", "111003"
REFERENCED_SEGMENT, SOURCE_FOR_SEGMENTATION = "121191", "121233"
SOURCE_SERIES_FOR_SEGMENTATION = "121232"
PROBABILITY = "122157"
QUALITATIVE_EVALUATIONS = "C0034375"  # UMLS
PRIORITY = "260870009"  # SCT
#: the imaging procedure each context's sources show (never the algorithm)
PROCEDURES = {"brain-mask": ("24590-2", "LN"), "lung-ct": ("25045-6", "LN"),
              "brain-tumor-demo": ("24590-2", "LN")}
TRIAGE_CODES = {"ROUTINE": "50811001", "PRIORITY": "394849002", "URGENT": "103391001"}


@dataclasses.dataclass
class Built:
    ctx: ResultContext
    seg: Dataset | None
    path: Path
    ds: Dataset


ALL = ["brain_ctx", "lung_ctx", "tumor_ctx"]
SEGMENTED = ["brain_ctx", "lung_ctx"]
CLASSIFIED = ["tumor_ctx"]


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    ctx = with_frame_of_reference(request.getfixturevalue(request.param))
    seg = build_seg(ctx) if ctx.result.segments else None
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    build_sr(ctx, seg).save_as(path, enforce_file_format=True)
    return Built(ctx, seg, path, pydicom.dcmread(path))


def name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def children(item: Dataset, concept: str | None = None) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if concept is None or name(c) == concept]


def one(item: Dataset, concept: str) -> Dataset:
    found = children(item, concept)
    assert len(found) == 1, concept
    return found[0]


def walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from walk(child)


def uid(item: Dataset) -> str:
    return str(item.UID)


def code(item: Dataset) -> tuple[str, str]:
    c = item.ConceptCodeSequence[0]
    return (str(c.CodeValue), str(c.CodingSchemeDesignator))


def pair(c: CodedConcept) -> tuple[str, str]:
    return (c.value, c.scheme)


def groups(ds: Dataset) -> list[Dataset]:
    return children(one(ds, IMAGING_MEASUREMENTS), MEASUREMENT_GROUP)


def group_of(ds: Dataset, tracking_uid: str) -> Dataset:
    found = [g for g in groups(ds) if uid(one(g, TRACKING_UID)) == tracking_uid]
    assert len(found) == 1
    return found[0]


def numbers(group: Dataset) -> list[Dataset]:
    return [c for c in children(group) if c.ValueType == "NUM"]


def referenced_uids(items: list[Dataset]) -> list[str]:
    return [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in items]


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_is_valid_dicom(built: Built) -> None:
    assert_valid(built.path)


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_renders_with_dsrdump(built: Built) -> None:
    out = subprocess.run(["/usr/bin/dsrdump", "+Pl", str(built.path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "E:" not in out.stderr
    assert "Imaging Measurement Report" in out.stdout
    for num in (n for g in groups(built.ds) for n in numbers(g)):
        value = num.MeasuredValueSequence[0]
        unit = value.MeasurementUnitsCodeSequence[0].CodeValue
        assert f'="{value.NumericValue}" ({unit},UCUM,' in out.stdout
    assert AI_DISCLAIMER in out.stdout


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_reports_the_imaging_procedure_observed_by_the_node(built: Built) -> None:
    root = built.ds
    assert (root.ConceptNameCodeSequence[0].CodeValue, root.ContentTemplateSequence[0]
            .TemplateIdentifier) == ("126000", "1500")
    assert code(one(root, PROCEDURE_REPORTED)) == PROCEDURES[built.ctx.manifest.name]
    assert code(one(root, OBSERVER_TYPE)) == (DEVICE, "DCM")
    assert uid(one(root, DEVICE_UID)) == device_uid(built.ctx.manifest.name)
    assert one(root, DEVICE_MODEL).TextValue == built.ctx.manifest.name


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_groups_carry_tracking_finding_and_algorithm(built: Built) -> None:
    ctx = built.ctx
    expected = len(ctx.result.segments) + bool(ctx.result.findings) + any(
        m.segment_label is None for m in ctx.result.measurements) + sum(
        len(h.regions) for h in ctx.result.heatmaps)  # one group per heatmap region
    assert len(groups(built.ds)) == expected
    for group in groups(built.ds):
        assert one(group, TRACKING_ID).TextValue.startswith(ctx.manifest.name)
        assert uid(one(group, TRACKING_UID)).startswith("2.25.")
        assert one(group, ALGORITHM_NAME).TextValue == ctx.manifest.name
        assert one(group, ALGORITHM_VERSION).TextValue == ctx.manifest.version
        for num in numbers(group):
            assert one(num, ALGORITHM_NAME).TextValue == ctx.manifest.name


@pytest.mark.parametrize("built", SEGMENTED, indirect=True)
def test_sr_measurements_equal_the_results(built: Built) -> None:
    ctx = built.ctx
    assert ctx.result.measurements
    labels = {s.label: n for n, s in enumerate(ctx.result.segments, start=1)}
    for m in ctx.result.measurements:
        number = labels.get(m.segment_label) if m.segment_label is not None else None
        group = group_of(built.ds, ctx.uid("tracking", number if number else 0))
        assert m.concept is not None
        found = [n for n in numbers(group)
                 if (name(n), n.ConceptNameCodeSequence[0].CodingSchemeDesignator)
                 == pair(m.concept) and n.MeasuredValueSequence[0].FloatingPointValue == m.value]
        assert len(found) == 1, m.name
        value = found[0].MeasuredValueSequence[0]
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == m.unit
        assert value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
        assert math.isclose(float(value.NumericValue), m.value, rel_tol=1e-9)


@pytest.mark.parametrize("built", SEGMENTED, indirect=True)
def test_sr_segment_groups_reference_the_seg(built: Built) -> None:
    ctx, seg = built.ctx, built.seg
    assert seg is not None
    for number, segment in enumerate(ctx.result.segments, start=1):
        group = group_of(built.ds, ctx.uid("tracking", number))
        assert uid(one(group, TRACKING_UID)) == seg.SegmentSequence[number - 1].TrackingUID
        assert code(one(group, FINDING)) == pair(segment.type)
        assert code(one(group, FINDING_SITE)) == pair(segment.type)  # anatomical segments
        ref = one(group, REFERENCED_SEGMENT)
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert ref.ReferencedSOPSequence[0].ReferencedSegmentNumber == number
        on = [str(ctx.sources[i].SOPInstanceUID) for i in range(len(ctx.sources))
              if segment.mask[i].any()]
        assert referenced_uids(children(group, SOURCE_FOR_SEGMENTATION)) == on
    evidence = {str(s.ReferencedSOPInstanceUID)
                for study in built.ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for s in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    assert {str(ds.SOPInstanceUID) for ds in ctx.sources} <= evidence


@pytest.mark.parametrize("built", CLASSIFIED, indirect=True)
def test_sr_classification_is_one_finding_and_the_other_classes_probabilities(
        built: Built) -> None:
    """The predicted class is the only finding; every other class appears only as the
    probability of that class, never as a finding (issue 11, item 3)."""
    ctx = built.ctx
    assert len(ctx.result.findings) == 4
    predicted = sorted(ctx.result.findings, key=lambda f: f.probability)[-1]
    others = [f for f in ctx.result.findings if f is not predicted]
    group = group_of(built.ds, ctx.uid("tracking", 1000))
    assert one(group, TRACKING_ID).TextValue == "brain-tumor-demo: classification"
    findings = [c for c in walk(built.ds) if name(c) == FINDING]
    assert [code(f) for f in findings] == [pair(predicted.concept)]
    value = one(group, PROBABILITY).MeasuredValueSequence[0]
    assert value.FloatingPointValue == predicted.probability
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "{probability}"
    probabilities = {(name(n), n.ConceptNameCodeSequence[0].CodingSchemeDesignator):
                     (n.ConceptNameCodeSequence[0].CodeMeaning,
                      n.MeasuredValueSequence[0].FloatingPointValue)
                     for n in numbers(group) if name(n) != PROBABILITY}
    assert probabilities == {
        (f"P-{f.concept.value}", "99DCMNODE"): (
            f"Probability of {f.concept.meaning.split(' (')[0]}", f.probability)
        for f in others}
    # no other class is coded anywhere as a value (a finding, a site, an evaluation)
    coded = {code(c) for c in walk(built.ds) if c.ValueType == "CODE"}
    assert not coded & {pair(f.concept) for f in others}
    images = [c for c in children(group) if c.ValueType == "IMAGE"]
    assert referenced_uids(images) == [str(ctx.sources[i].SOPInstanceUID)
                                       for i in ctx.result.key_slices]


@pytest.mark.parametrize("built", CLASSIFIED, indirect=True)
def test_sr_classification_reads_as_one_finding_in_dsrdump(built: Built) -> None:
    out = subprocess.run(["/usr/bin/dsrdump", str(built.path)], capture_output=True,
                         text=True, check=True).stdout
    assert len(re.findall(r'CODE:\(,,"Finding"\)', out)) == 1
    predicted = max(built.ctx.result.findings, key=lambda f: f.probability)
    assert f'"Finding")=({predicted.concept.value},' in out
    for f in built.ctx.result.findings:
        if f is not predicted:
            assert f'NUM:(,,"Probability of {f.concept.meaning.split(" (")[0]}")=' in out


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_states_triage_and_that_it_needs_review(built: Built) -> None:
    evaluations = one(built.ds, QUALITATIVE_EVALUATIONS)
    assert code(one(evaluations, PRIORITY))[0] == TRIAGE_CODES[built.ctx.result.triage.value]
    texts = [c.TextValue for c in walk(built.ds) if c.ValueType == "TEXT"]
    assert AI_DISCLAIMER in texts
    assert "review" in built.ds.SeriesDescription
    assert (built.ds.PreliminaryFlag, built.ds.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_identity(built: Built) -> None:
    ds, ctx = built.ds, built.ctx
    assert_same_patient_and_study(ds, ctx.sources[0])
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (ctx.uid("SR-series"), ctx.uid("SR"))
    assert ds.SeriesNumber == SERIES_NUMBERS["SR"]
    assert ds.SeriesDescription == ctx.series_description("measurements")
    assert (ds.Manufacturer, ds.ManufacturerModelName) == (MANUFACTURER, ctx.manifest.name)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_sr_is_deterministic(built: Built) -> None:
    ctx = built.ctx
    assert encoded(build_sr(ctx, built.seg)) == built.path.read_bytes()
    other = build_sr(dataclasses.replace(ctx, job_key=ctx.job_key + "-other"), built.seg)
    assert other.SOPInstanceUID != built.ds.SOPInstanceUID
    assert other.SeriesInstanceUID != built.ds.SeriesInstanceUID


def test_sr_of_an_empty_segment_names_the_source_series(lung_ctx: ResultContext,
                                                        tmp_path: Path) -> None:
    """A lung the model did not find: SEG and SR stay valid; the SR names the series."""
    ctx = with_frame_of_reference(lung_ctx)
    right, left = ctx.result.segments
    ctx = dataclasses.replace(ctx, result=dataclasses.replace(ctx.result, segments=(
        right, dataclasses.replace(left, mask=np.zeros_like(left.mask)))))
    seg = build_seg(ctx)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    build_sr(ctx, seg).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert_valid(tmp_path / "seg.dcm")
    assert_valid(tmp_path / "sr.dcm")
    group = group_of(pydicom.dcmread(tmp_path / "sr.dcm"), ctx.uid("tracking", 2))
    assert children(group, SOURCE_FOR_SEGMENTATION) == []
    assert uid(one(group, SOURCE_SERIES_FOR_SEGMENTATION)) == ctx.sources[0].SeriesInstanceUID


def test_sr_of_segments_needs_their_seg(brain_ctx: ResultContext) -> None:
    with pytest.raises(PermanentError, match="SEG"):
        build_sr(brain_ctx, None)


def test_sr_codes_a_measurement_without_concept_by_its_whole_name(lung_ctx: ResultContext,
                                                                  tmp_path: Path) -> None:
    """The node's code of the name, never cut ('RIGHT-LUNG-VOLUME' is 17 characters: a Long
    Code Value), and the same code the ORU uses; the SR stays valid."""
    ctx = with_frame_of_reference(lung_ctx)
    ctx = dataclasses.replace(ctx, result=dataclasses.replace(ctx.result, measurements=tuple(
        dataclasses.replace(m, concept=None) for m in ctx.result.measurements)))
    seg = build_seg(ctx)
    build_sr(ctx, seg).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert_valid(tmp_path / "sr.dcm")
    ds = pydicom.dcmread(tmp_path / "sr.dcm")
    named = {c.ConceptNameCodeSequence[0].CodeMeaning: c.ConceptNameCodeSequence[0]
             for g in groups(ds) for c in numbers(g)}
    right = named["Right lung volume"]
    assert (right.get("CodeValue"), right.get("LongCodeValue")) == (None, "RIGHT-LUNG-VOLUME")
    assert named["Left lung volume"].CodeValue == "LEFT-LUNG-VOLUME"
    assert named["Emphysema index LAA%-950"].CodeValue.startswith("N-")
