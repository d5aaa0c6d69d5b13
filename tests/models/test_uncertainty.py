"""Uncertainty of a segmentation model (brain-mask's test-time flips) and how it is reported.

The spread is computed from known pass outputs; the model's flip passes run on a small Colin27
(the network on a 32x40x32 grid instead of 128^3); the SR, PDF and ORU take the real
brain-mask result on Colin27 (``brain_ctx``) with an interval and a flag set on it, so that no
test pays for eight full-size passes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import hl7
import numpy as np
import pydicom
import pytest
import torch

from node.core.contract import Interval, QualityFlag, ResultContext, Volume
from node.core.errors import ConfigError
from node.core.manifest import UncertaintySpec, load_manifest
from node.hl7.oru import build_oru
from node.pipeline.infer.loaders import import_from
from node.pipeline.infer.registry import LoadedModel, load_model
from node.pipeline.infer.stored import load_result, save_result
from node.sr_writer.pdf import build_pdf
from node.sr_writer.seg import build_seg
from node.sr_writer.sr import build_sr
from tests.hl7.test_oru import (
    SETTINGS,
    assert_strictly_valid,
    header,
    hospital,
    observations,
    repetitions,
    val,
)
from tests.models.test_brain_mask import MODEL_DIR, _nifti
from tests.sr_writer.test_pdf import poppler
from tests.sr_writer.test_seg import assert_valid, with_frame_of_reference

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
_spread = import_from(MODEL_DIR, "uncertainty.py:spread", "brain-mask")
_interval = import_from(MODEL_DIR, "uncertainty.py:volume_interval", "brain-mask")

INTERVAL = Interval(lower=1930.0, upper=1968.0, level=0.95, method="flips", samples=8)
FLAG = QualityFlag("uncertain", "the 8 flip passes disagree on 12.5% of the mask's voxels "
                                "(flagged above 10%)")


def test_interval_and_flag_from_known_passes() -> None:
    """Eight pass volumes 1..8 mL: the 2.5th/97.5th percentiles (linear) are 1.175 and 7.825;
    voxels held by some but not all passes are the disagreement, against the reported mask."""
    interval = _interval([8.0, 1, 2, 3, 4, 5, 6, 7])
    assert (interval.level, interval.method, interval.samples) == (0.95, "flips", 8)
    assert (interval.lower, interval.upper) == pytest.approx((1.175, 7.825))
    counts = np.zeros((10, 10, 10), dtype=np.uint8)
    counts[:4] = 8  # 400 voxels every pass holds
    counts[4, :5] = 3  # 50 voxels some passes hold
    counts[9, 9, 9] = 1  # one more
    at_limit = _spread([1.0] * 8, counts, reported_voxels=510, flag_above=0.1)
    assert at_limit.disagreement == pytest.approx(0.1) and at_limit.quality is None
    above = _spread([1.0] * 8, counts, reported_voxels=509, flag_above=0.1)
    assert above.quality is not None and above.quality.flag == "uncertain"
    assert "disagree on 10.0% of the mask's voxels (flagged above 10%)" in above.quality.reason
    agreed = _spread([2.0] * 8, np.full((3, 3, 3), 8, np.uint8), 27, 0.1)
    assert (agreed.disagreement, agreed.quality) == (0.0, None)
    assert (agreed.interval.lower, agreed.interval.upper) == (2.0, 2.0)


def _small_colin27() -> Volume:
    """Colin27 at a third of its resolution (61x73x61 voxels of 3 mm): a real head."""
    from node.core.contract import Geometry
    t1 = torch.as_tensor(np.asarray(_nifti("ch2.nii.gz").dataobj), dtype=torch.float32)
    small = torch.nn.functional.interpolate(t1[None, None], size=(61, 73, 61), mode="trilinear")
    geometry = Geometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                        (3.0, 3.0, 3.0))
    return Volume(small[0, 0].numpy(), geometry, "MR")


def test_flip_passes_add_a_spread_and_change_no_result() -> None:
    """With ``method = "flips"`` the mask and volume are those of the plain run (the identity
    pass), the volume gets the passes' 95% range, and the flag follows ``flag_above`` (the
    unflagged case is tested on known passes above)."""
    loaded = load_model(MODEL_DIR, "cpu")
    manifest = dataclasses.replace(loaded.manifest, input=dataclasses.replace(
        loaded.manifest.input, target_size=(32, 40, 32)))
    model_class = type(loaded.model)
    volume = _small_colin27()
    before = model_class(MODEL_DIR, "cpu", loaded.model.network, manifest).predict(volume)
    on = dataclasses.replace(manifest, uncertainty=UncertaintySpec("flips", 0.01))
    after = model_class(MODEL_DIR, "cpu", loaded.model.network, on).predict(volume)
    assert np.array_equal(after.segments[0].mask, before.segments[0].mask)
    (m,), (m0,) = after.measurements, before.measurements
    assert m.value == m0.value and m0.interval is None and before.quality is None
    assert m.interval is not None and m.interval.samples == 8 and m.interval.method == "flips"
    # the identity pass is one of the eight; the 2.5..97.5 range lies within their extremes
    width = m.interval.upper - m.interval.lower
    assert width > 0 and m.interval.lower - 0.2 * width <= m.value <= m.interval.upper + 0.2 * width
    # a real head's passes disagree along its boundary: more than 1 % of the mask
    assert after.quality is not None and after.quality.flag == "uncertain"
    shown = re.search(r"disagree on ([0-9.]+)% of the mask's voxels \(flagged above 1%\)",
                      after.quality.reason)
    assert shown is not None and float(shown[1]) > 1.0


@pytest.mark.parametrize(("section", "line"), [
    ('method = "dropout"', "[uncertainty].method: 'dropout' is not one of none, flips"),
    ("flag_above = 0", "[uncertainty].flag_above: a number above 0, at most 1"),
    ("flag_above = true", "[uncertainty].flag_above: a number above 0, at most 1"),
    ("level = 0.9", "[uncertainty]: unknown key 'level' (known: method, flag_above)"),
])
def test_a_bad_uncertainty_setting_is_one_line(tmp_path: Path, section: str, line: str) -> None:
    folder = tmp_path / "brain-mask"
    folder.mkdir()
    text = (MODEL_DIR / "manifest.toml").read_text()
    text = re.sub(r"\[uncertainty\]\n(.*\n)*?(?=\[)", f"[uncertainty]\n{section}\n", text)
    (folder / "manifest.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_manifest(folder)
    assert raised.value.problems == [f"models/brain-mask/manifest.toml {line}"]


def test_only_a_segmentation_model_takes_uncertainty(tmp_path: Path) -> None:
    folder = tmp_path / "brain-mask"
    folder.mkdir()
    text = (MODEL_DIR / "manifest.toml").read_text()
    text = text.replace('method = "none"', 'method = "flips"').replace(
        'task = "segmentation"', 'task = "classification"')
    (folder / "manifest.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_manifest(folder)
    assert raised.value.problems == [
        "models/brain-mask/manifest.toml [uncertainty].method: only a segmentation model "
        "reports uncertainty here (calibrated classifiers are not built yet)"]


def test_shipped_manifest_has_uncertainty_off() -> None:
    assert load_manifest(MODEL_DIR).uncertainty == UncertaintySpec("none", 0.10)


def with_interval(ctx: ResultContext) -> ResultContext:
    """The real brain-mask result with an interval on its volume and the quality flag."""
    (m,) = ctx.result.measurements
    interval = dataclasses.replace(INTERVAL, lower=m.value - 18.0, upper=m.value + 20.0)
    result = dataclasses.replace(ctx.result, quality=FLAG, measurements=(
        dataclasses.replace(m, interval=interval),))
    return dataclasses.replace(ctx, result=result)


def test_stored_interval_round_trips_and_an_old_result_still_loads(
        brain_ctx: ResultContext, tmp_path: Path) -> None:
    ctx = with_interval(brain_ctx)
    loaded = LoadedModel(ctx.manifest, None, "cpu", 0.0)
    save_result(tmp_path / "m", loaded, ctx.result, "2.25.1", ())
    result, _ = load_result(tmp_path / "m")
    assert result.measurements == ctx.result.measurements and result.quality == FLAG
    # a format-3 result (before intervals): no interval key, no quality key
    record = json.loads((tmp_path / "m" / "result.json").read_text())
    record["format"] = 3
    del record["quality"]
    for m in record["measurements"]:
        del m["interval"]
    (tmp_path / "m" / "result.json").write_text(json.dumps(record))
    old, _ = load_result(tmp_path / "m")
    assert old.quality is None and old.measurements == brain_ctx.result.measurements


def test_sr_carries_the_interval_and_the_flag(brain_ctx: ResultContext, tmp_path: Path) -> None:
    ctx = with_frame_of_reference(with_interval(brain_ctx))
    seg = build_seg(ctx)
    path = tmp_path / "sr.dcm"
    build_sr(ctx, seg).save_as(path, enforce_file_format=True)
    assert_valid(path)
    out = subprocess.run(["/usr/bin/dsrdump", "+Pl", str(path)], capture_output=True, text=True,
                         check=True).stdout
    (m,) = ctx.result.measurements
    assert m.interval is not None
    for side, value in (("lower", m.interval.lower), ("upper", m.interval.upper)):
        shown = re.search(rf'"Brain volume, {side} 95% limit"\)="([0-9.]+)" \(mL,UCUM', out)
        assert shown is not None and float(shown[1]) == pytest.approx(value, abs=1e-3), out
    assert out.count('"Test-time augmentation (mirror flips)")') == 2
    assert '"+, range of upper measurement uncertainty")="20.0" (mL,UCUM' in out
    assert '"-, range of lower measurement uncertainty")="18.0" (mL,UCUM' in out
    assert '"Analysis Quality Rating")=(64957009,SCT,"Uncertain")' in out
    assert f'"Comment")="Quality flag uncertain: {FLAG.reason}"' in out
    ds = pydicom.dcmread(path)
    assert ds.VerificationFlag == "UNVERIFIED"


def test_pdf_shows_the_range_and_the_flag(brain_ctx: ResultContext, tmp_path: Path) -> None:
    ctx = with_interval(brain_ctx)
    path = tmp_path / "report.pdf"
    path.write_bytes(build_pdf(ctx, []))  # no key images: the result text is what is tested
    text = " ".join(subprocess.run([poppler("pdftotext"), str(path), "-"], capture_output=True,
                                   text=True, check=True).stdout.split())
    (m,) = ctx.result.measurements
    assert m.interval is not None
    assert (f"{m.value:.1f} mL (95% range {m.interval.lower:.1f}-{m.interval.upper:.1f} mL, "
            "8 flip passes)") in text
    assert f"Quality flag: UNCERTAIN. The model reports that {FLAG.reason}" in text
    assert "not a confidence interval of the true value" in text


def test_oru_carries_the_limits_and_the_flag_and_validates_strictly(
        brain_ctx: ResultContext) -> None:
    ctx = hospital(with_interval(brain_ctx))
    text = build_oru(ctx, header(ctx), SETTINGS)
    assert_strictly_valid(text)
    obxs = observations(hl7.parse(text))
    (m,) = ctx.result.measurements
    assert m.interval is not None
    by_name = {val(o, 3, 2): o for o in obxs}
    volume = by_name["Volume"]
    for side, value in (("lower", m.interval.lower), ("upper", m.interval.upper)):
        limit = by_name[f"Brain volume, {side} 95% limit"]
        assert (val(limit, 2), float(val(limit, 5)), val(limit, 6)) == (
            "NM", pytest.approx(value, abs=1e-4), "mL")
        assert val(limit, 4) == val(volume, 4) != ""  # in the volume's group
        assert (val(limit, 17), val(limit, 17, 3)) == ("TTA-FLIPS", "99DCMNODE")
    assert val(volume, 17) == "AI-INFERENCE"
    flag = by_name["Analysis Quality Rating"]
    assert (val(flag, 2), val(flag, 5), val(flag, 5, 2), val(flag, 5, 3), val(flag, 4)) == (
        "CE", "64957009", "Uncertain", "SCT", "")
    (summary_obx,) = (o for o in obxs if val(o, 3) == "AI-SUMMARY")
    summary = " ".join(repetitions(summary_obx, 5))
    low, high = (f"{v:.4f}".rstrip("0").rstrip(".") for v in (m.interval.lower, m.interval.upper))
    assert f"mL (95% range {low}-{high}, 8 flip passes)." in summary
    assert f"Quality flag uncertain: {FLAG.reason}." in summary
