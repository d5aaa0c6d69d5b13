"""A model result stored at INFERRED and read back at BUILT builds the very same objects."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.core.contract import ResultContext
from node.core.errors import PermanentError
from node.pipeline.build.outputs import read_source
from node.pipeline.infer.registry import LoadedModel
from node.pipeline.infer.stored import has_result, load_result, save_result
from node.sr_writer.bundle import build_all
from node.sr_writer.sc import choose_slices


@pytest.mark.parametrize("fixture", ["lung_ctx", "tumor_ctx"])
def test_round_trip_builds_identical_objects(fixture: str, request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    ctx: ResultContext = request.getfixturevalue(fixture)
    loaded = LoadedModel(ctx.manifest, None, "cpu", 0.0)
    slice_uids = tuple(f"2.25.{i}" for i in range(len(ctx.sources)))
    save_result(tmp_path / "m", loaded, ctx.result, "2.25.99", slice_uids)
    assert has_result(tmp_path / "m")
    result, uids = load_result(tmp_path / "m")
    assert uids == slice_uids
    assert (result.triage, result.findings, result.measurements, result.key_slices) == (
        ctx.result.triage, ctx.result.findings, ctx.result.measurements, ctx.result.key_slices)
    for a, b in zip(result.segments, ctx.result.segments, strict=True):
        assert (a.label, a.name, a.category, a.type, a.geometry) == (
            b.label, b.name, b.category, b.type, b.geometry)
        assert np.array_equal(a.mask, b.mask)
    for a, b in zip(result.heatmaps, ctx.result.heatmaps, strict=True):
        assert a.slice_index == b.slice_index and np.array_equal(a.values, b.values)
    before, after = build_all(ctx), build_all(replace(ctx, result=result))
    for (name, x), (_, y) in zip(before.named(), after.named(), strict=True):
        assert x.to_json_dict() == y.to_json_dict(), name


def test_a_damaged_result_is_a_clear_permanent_error(lung_ctx: ResultContext,
                                                     tmp_path: Path) -> None:
    loaded = LoadedModel(lung_ctx.manifest, None, "cpu", 0.0)
    save_result(tmp_path / "m", loaded, lung_ctx.result, "2.25.1", ())
    (tmp_path / "m" / "masks.npz").write_bytes(b"not a zip")
    with pytest.raises(PermanentError, match="stored model result in m cannot be read"):
        load_result(tmp_path / "m")


def test_masks_are_stored_bit_packed_and_format_1_results_still_load(
        lung_ctx: ResultContext, tmp_path: Path) -> None:
    loaded = LoadedModel(lung_ctx.manifest, None, "cpu", 0.0)
    save_result(tmp_path / "m", loaded, lung_ctx.result, "2.25.1", ())
    masks = {f"segment_{s.label}": s.mask for s in lung_ctx.result.segments}
    with np.load(tmp_path / "m" / "masks.npz") as npz:
        for name, mask in masks.items():
            assert npz[name].dtype == np.uint8 and npz[name].size == -(-mask.size // 8)
    # a result written before masks were packed: boolean arrays, no shape in result.json
    record = json.loads((tmp_path / "m" / "result.json").read_text())
    record["format"] = 1
    for s in record["segments"]:
        del s["shape"]
    (tmp_path / "m" / "result.json").write_text(json.dumps(record))
    np.savez_compressed(tmp_path / "m" / "masks.npz", **masks)
    result, _ = load_result(tmp_path / "m")
    for s in result.segments:
        assert s.mask.dtype == bool and np.array_equal(s.mask, masks[f"segment_{s.label}"])


@pytest.mark.parametrize("fixture", ["lung_ctx", "tumor_ctx"])
def test_sources_read_without_pixel_data_build_identical_objects(
        fixture: str, request: pytest.FixtureRequest) -> None:
    """The build stage reads the originals' headers only (``read_source``); the SC overlays
    read the pixel data of their own slices, and every object comes out the same."""
    ctx: ResultContext = request.getfixturevalue(fixture)
    sources = tuple(read_source(Path(ds.filename)) for ds in ctx.sources)
    assert all(ds.get_item("PixelData", keep_deferred=True).value is None
               for ds in sources)  # not read yet
    before, after = build_all(ctx), build_all(replace(ctx, sources=sources))
    for (name, x), (_, y) in zip(before.named(), after.named(), strict=True):
        assert x.to_json_dict() == y.to_json_dict(), name
    assert before.pdf == after.pdf
    read = [i for i, ds in enumerate(sources)
            if ds.get_item("PixelData", keep_deferred=True).value is not None]
    assert read == sorted(choose_slices(ctx.result, len(sources)))
