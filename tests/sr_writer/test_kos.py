"""KOS builder: valid (dciodvfy), rendered (dsrdump), flags the key images and the results."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.core.contract import AI_DISCLAIMER, MANUFACTURER, ResultContext
from node.core.errors import PermanentError
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import device_uid
from node.sr_writer.kos import build_kos
from node.sr_writer.seg import build_seg
from node.sr_writer.sr import build_sr
from tests.sr_writer.test_seg import (
    assert_same_patient_and_study,
    assert_valid,
    encoded,
    with_frame_of_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")

ALL = ["brain_ctx", "lung_ctx", "tumor_ctx"]
KEY_OBJECT_DESCRIPTION, OBSERVER_TYPE, DEVICE_UID = "113012", "121005", "121012"


@dataclasses.dataclass
class Built:
    ctx: ResultContext
    objects: list[Dataset]
    path: Path
    ds: Dataset


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    ctx = with_frame_of_reference(request.getfixturevalue(request.param))
    seg = build_seg(ctx) if ctx.result.segments else None
    objects = [build_sr(ctx, seg), *([seg] if seg is not None else [])]
    path = tmp_path_factory.mktemp("kos") / "kos.dcm"
    build_kos(ctx, objects).save_as(path, enforce_file_format=True)
    return Built(ctx, objects, path, pydicom.dcmread(path))


def items(ds: Dataset, concept: str | None = None) -> list[Dataset]:
    return [c for c in ds.ContentSequence
            if concept is None or c.ConceptNameCodeSequence[0].CodeValue == concept]


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_kos_is_valid_dicom(built: Built) -> None:
    assert_valid(built.path)


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_kos_renders_with_dsrdump(built: Built) -> None:
    out = subprocess.run(["/usr/bin/dsrdump", "+Pl", "+Pu", str(built.path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "E:" not in out.stderr
    assert '"Of Interest"' in out.stdout
    for obj in built.objects:
        assert str(obj.SOPInstanceUID) in out.stdout


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_kos_flags_the_key_images_and_the_results(built: Built) -> None:
    ds, ctx = built.ds, built.ctx
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")  # Of Interest
    referenced = [str(c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for c in items(ds) if c.ValueType in ("IMAGE", "COMPOSITE")]
    key = [str(ctx.sources[i].SOPInstanceUID) for i in ctx.result.key_slices]
    assert key
    assert referenced == key + [str(o.SOPInstanceUID) for o in built.objects]
    evidence = {str(s.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for s in series.ReferencedSOPSequence}
    assert evidence == set(referenced)


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_kos_describes_the_ai_result(built: Built) -> None:
    ds, ctx = built.ds, built.ctx
    (description,) = items(ds, KEY_OBJECT_DESCRIPTION)
    text = description.TextValue
    assert ctx.algorithm in text
    assert AI_DISCLAIMER in text
    assert f"triage {ctx.result.triage.value}" in text
    for m in ctx.result.measurements:
        assert m.name in text
    if ctx.result.findings:
        top = max(ctx.result.findings, key=lambda f: f.probability)
        assert top.concept.meaning in text
    (observer,) = items(ds, OBSERVER_TYPE)
    assert observer.ConceptCodeSequence[0].CodeValue == "121007"  # Device
    (device,) = items(ds, DEVICE_UID)
    assert str(device.UID) == device_uid(ctx.manifest.name)


@pytest.mark.parametrize("built", ALL, indirect=True)
def test_kos_identity(built: Built) -> None:
    ds, ctx = built.ds, built.ctx
    assert_same_patient_and_study(ds, ctx.sources[0])
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (ctx.uid("KOS-series"), ctx.uid("KOS"))
    assert ds.SeriesNumber == SERIES_NUMBERS["KOS"]
    assert "review" in ds.SeriesDescription
    assert (ds.Manufacturer, ds.ManufacturerModelName) == (MANUFACTURER, ctx.manifest.name)
    assert encoded(build_kos(ctx, built.objects)) == built.path.read_bytes()  # retry: same
    other = build_kos(dataclasses.replace(ctx, job_key=ctx.job_key + "-other"), built.objects)
    assert other.SOPInstanceUID != ds.SOPInstanceUID
    assert other.SeriesInstanceUID != ds.SeriesInstanceUID


def test_kos_needs_something_to_select(tumor_ctx: ResultContext) -> None:
    ctx = dataclasses.replace(tumor_ctx, result=dataclasses.replace(tumor_ctx.result,
                                                                     key_slices=()))
    with pytest.raises(PermanentError, match="no key image"):
        build_kos(ctx, [])
