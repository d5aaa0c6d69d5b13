"""SEG builder: valid (dciodvfy), readable (highdicom), the model's mask voxel for voxel.

The lung context's chest phantom series is written from pydicom-data's 693_UNCR header, which has
no Frame of Reference UID (a CT image requires one; a SEG cannot be placed without it):
``with_frame_of_reference`` gives those sources one, as a real CT series has.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.core.contract import MANUFACTURER, Geometry, ModelResult, ResultContext, Segment
from node.core.errors import PermanentError
from node.core.manifest import load_manifest
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.seg import SEG_CONTENT_DESCRIPTION, build_seg
from tests.data import ct_series
from tests.sr_writer.conftest import CREATED, REPO, dciodvfy

#: dciodvfy warnings a result may keep. All come from the SOURCES' own header, which a result
#: copies verbatim (it must carry the original patient and study identity): the chest phantom's
#: 693_UNCR header has empty Study Date, Study Time and Study ID (type 2, so legal; dciodvfy only
#: notes that a DICOMDIR would want them) and a one-component Patient's Name "CQ500-CT-310".
#: Private "99DCMNODE" codes (manifest concepts without a standard code, e.g. LAA%-950) are
#: declared in the Coding Scheme Identification Sequence, but dciodvfy only knows registered
#: schemes and warns about them anyway (PS3.16 8.2 allows "99" local schemes).
ALLOWED_WARNINGS = (
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Date",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    "Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = "
    "<CQ500-CT-310> - Retired Person Name form",
    "Warning - Unrecognized defined term <99DCMNODE> for value 1 of attribute "
    "<Coding Scheme Designator>",
)
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                 "PatientIdentityRemoved", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                 "AccessionNumber", "ReferringPhysicianName", "StudyDescription")
_FIXED: dict[str, ResultContext] = {}
#: highdicom warns that the chest phantom's Patient's Name "CQ500-CT-310" has one component: the
#: sources' own name, copied as it is (see ALLOWED_WARNINGS)
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")


def with_frame_of_reference(ctx: ResultContext) -> ResultContext:
    """``ctx`` whose sources have a Frame of Reference UID (one for the series, as on a scanner)."""
    if all("FrameOfReferenceUID" in ds for ds in ctx.sources):
        return ctx
    if ctx.job_key not in _FIXED:
        sources = tuple(copy.deepcopy(ds) for ds in ctx.sources)
        frame = generate_uid(entropy_srcs=[str(sources[0].SeriesInstanceUID)])
        for ds in sources:
            ds.FrameOfReferenceUID = frame
        _FIXED[ctx.job_key] = dataclasses.replace(ctx, sources=sources)
    return _FIXED[ctx.job_key]


def encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def assert_valid(path: Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if w not in ALLOWED_WARNINGS] == []


def assert_same_patient_and_study(obj: Dataset, source: Dataset) -> None:
    for keyword in PATIENT_STUDY:
        assert obj.get(keyword) == source.get(keyword), keyword


@pytest.fixture(scope="module", params=["brain_ctx", "lung_ctx"])
def seg_ctx(request: pytest.FixtureRequest) -> ResultContext:
    return with_frame_of_reference(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def written(seg_ctx: ResultContext, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    build_seg(seg_ctx).save_as(path, enforce_file_format=True)
    return path


def test_seg_is_valid_dicom(written: Path) -> None:
    assert_valid(written)


def test_seg_reads_back_as_the_models_mask(seg_ctx: ResultContext, written: Path) -> None:
    seg = hd.seg.segread(written)
    segments = seg_ctx.result.segments
    uids = [str(ds.SOPInstanceUID) for ds in seg_ctx.sources]
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=list(range(1, len(segments) + 1)),
        assert_missing_frames_are_empty=True)
    assert pixels.shape == (len(uids), *segments[0].mask.shape[1:], len(segments))
    for number, segment in enumerate(segments, start=1):
        assert np.array_equal(pixels[..., number - 1].astype(bool), segment.mask), segment.name
    # one frame per (slice, segment) with at least one voxel: empty frames are omitted
    assert seg.NumberOfFrames == sum(int(s.mask.any(axis=(1, 2)).sum()) for s in segments)
    assert seg.NumberOfFrames < len(uids) * len(segments)


def test_seg_describes_each_segment(seg_ctx: ResultContext, written: Path) -> None:
    seg = hd.seg.segread(written)
    assert seg.SegmentationType == "BINARY"
    for number, segment in enumerate(seg_ctx.result.segments, start=1):
        item = seg.get_segment_description(number)
        assert item.segment_label == segment.name
        assert (item.segmented_property_category.value,
                item.segmented_property_category.scheme_designator) == (
            segment.category.value, segment.category.scheme)
        assert (item.segmented_property_type.value,
                item.segmented_property_type.scheme_designator) == (
            segment.type.value, segment.type.scheme)
        assert item.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = item.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
            seg_ctx.manifest.name, seg_ctx.manifest.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # AI
        assert item.tracking_uid == seg_ctx.uid("tracking", number)


def test_seg_has_the_nodes_identity_in_the_sources_study(seg_ctx: ResultContext,
                                                          written: Path) -> None:
    ds = pydicom.dcmread(written)
    source = seg_ctx.sources[0]
    assert_same_patient_and_study(ds, source)
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.SeriesInstanceUID == seg_ctx.uid("SEG-series")
    assert ds.SOPInstanceUID == seg_ctx.uid("SEG")
    assert ds.SeriesNumber == SERIES_NUMBERS["SEG"]
    assert ds.SeriesDescription == seg_ctx.series_description("segmentation")
    assert "review" in ds.SeriesDescription
    assert ds.Manufacturer == MANUFACTURER
    assert ds.ManufacturerModelName == seg_ctx.manifest.name
    assert list(ds.SoftwareVersions)[1] == f"{seg_ctx.manifest.name} {seg_ctx.manifest.version}"
    assert ds.DeviceSerialNumber
    assert (ds.ContentDate, ds.ContentTime) == (CREATED.strftime("%Y%m%d"),
                                                CREATED.strftime("%H%M%S"))
    assert ds.ContentLabel == "AI_SEG"
    assert ds.ContentDescription == SEG_CONTENT_DESCRIPTION
    assert len(SEG_CONTENT_DESCRIPTION) <= 64
    assert "AI" in SEG_CONTENT_DESCRIPTION and "review" in SEG_CONTENT_DESCRIPTION


def test_seg_is_deterministic(seg_ctx: ResultContext, written: Path) -> None:
    """A retried job sends the very same object; another job (key) a new one."""
    first = pydicom.dcmread(written)
    assert encoded(build_seg(seg_ctx)) == written.read_bytes()
    other = build_seg(dataclasses.replace(seg_ctx, job_key=seg_ctx.job_key + "-other"))
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.SeriesInstanceUID != other.SeriesInstanceUID
    assert first.SegmentSequence[0].TrackingUID != other.SegmentSequence[0].TrackingUID


def test_seg_refuses_sources_without_frame_of_reference(lung_ctx: ResultContext) -> None:
    bare = dataclasses.replace(lung_ctx, sources=tuple(copy.deepcopy(ds) for ds in lung_ctx.sources))
    for ds in bare.sources:
        ds.pop("FrameOfReferenceUID", None)
    with pytest.raises(PermanentError, match="Frame of Reference"):
        build_seg(bare)


def test_seg_refuses_a_mask_that_does_not_fit_the_sources(brain_ctx: ResultContext) -> None:
    segment = brain_ctx.result.segments[0]
    short = dataclasses.replace(segment, mask=segment.mask[:-1])
    ctx = dataclasses.replace(brain_ctx, result=dataclasses.replace(
        brain_ctx.result, segments=(short,)))
    with pytest.raises(PermanentError, match="shape"):
        build_seg(ctx)


def test_seg_refuses_a_result_without_segments(tumor_ctx: ResultContext) -> None:
    with pytest.raises(PermanentError, match="no segments"):
        build_seg(tumor_ctx)


def test_seg_keeps_overlapping_segments_apart(brain_ctx: ResultContext, tmp_path: Path) -> None:
    """Two overlapping segments (the brain and its left half) both read back whole."""
    brain = brain_ctx.result.segments[0]
    half = dataclasses.replace(brain, label=2, name="Left half of brain",
                               mask=brain.mask & (np.arange(brain.mask.shape[2]) < 90))
    ctx = dataclasses.replace(brain_ctx, result=dataclasses.replace(
        brain_ctx.result, segments=(brain, half)))
    path = tmp_path / "seg.dcm"
    build_seg(ctx).save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    assert seg.SegmentsOverlap == "YES"
    pixels = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in ctx.sources], segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels[..., 0].astype(bool), brain.mask)
    assert np.array_equal(pixels[..., 1].astype(bool), half.mask)


@pytest.mark.slow
def test_seg_of_300_slices_of_512_squared_is_fast(tmp_path: Path) -> None:
    """Two 300x512x512 masks (the halves of a synthetic ellipsoid through every slice, as right
    and left lung) on a 300-instance CT series (tests/data: ct_series)."""
    paths = ct_series(tmp_path / "ct", 300)
    sources = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    z, y, x = np.ogrid[:300, :512, :512]
    mask = ((z - 149.5) / 151.0) ** 2 + ((y - 256) / 180.0) ** 2 + ((x - 256) / 200.0) ** 2 <= 1
    manifest = load_manifest(REPO / "models" / "lung-ct")
    geometry = Geometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                        (1.0, 0.5, 0.5))
    segments = tuple(Segment(spec.label, spec.name, spec.category, spec.type, mask & side,
                             geometry)
                     for spec, side in zip(manifest.segments, (x < 256, x >= 256), strict=True))
    ctx = ResultContext(sources=sources, result=ModelResult("lung-ct", "1.0.0", segments),
                        manifest=manifest, job_key="bench/1/lung-ct", created=CREATED)
    start = time.perf_counter()
    seg = build_seg(ctx)
    built = time.perf_counter()
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    done = time.perf_counter()
    print(f"\nSEG 300x512x512, 2 segments: build {built - start:.2f} s, write {done - built:.2f} s,"
          f" {(tmp_path / 'seg.dcm').stat().st_size / 1e6:.1f} MB, {seg.NumberOfFrames} frames")
    assert done - start < 5.0
    assert seg.NumberOfFrames == 600
