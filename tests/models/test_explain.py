"""Explanations of a classifier (node/pipeline/infer/explain.py): Grad-CAM, Grad-CAM++ and
Score-CAM, the target layer found by a hooked pass, the strongest regions as boxes, and the
brain-tumor-demo's overlays (SC) and regions (SR) for each method, checked by dciodvfy and
dsrdump.

The small networks below are built by hand so that the test knows where the evidence is: two
input channels, the class "A" counts what lies in channel 0 and against what lies in channel 1,
class "B" the other way round; one bright blob in each channel, far apart.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from torch import nn

from node.core.contract import ResultContext
from node.core.errors import ConfigError
from node.core.manifest import ExplainSpec, load_manifest
from node.pipeline.infer import explain
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.loaders import import_from
from node.pipeline.infer.registry import LoadedModel, load_model
from node.pipeline.infer.stored import load_result, save_result
from node.sr_writer.render import encode_png
from node.sr_writer.sc import build_sc
from node.sr_writer.sr import build_sr
from tests.sr_writer.conftest import dciodvfy

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "brain-tumor-demo"
SHOTS = Path("/tmp/console-shots")
SIZE = 24
BLOB_A, BLOB_B = (5, 6), (17, 18)  # (row, column) of each channel's blob


def _tiny() -> nn.Sequential:
    """conv 1x1 (identity) -> BN (identity) -> ReLU -> global mean -> linear: A = c0 - c1."""
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2)[:, :, None, None])
        net[0].bias.zero_()
        net[5].weight.copy_(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]))
        net[5].bias.zero_()
    return net.eval()


def _evidence() -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    image = torch.zeros(1, 2, SIZE, SIZE)
    for channel, (r, c) in enumerate((BLOB_A, BLOB_B)):
        image[0, channel] = torch.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 4.0)
    return image


def test_target_layer_is_found_on_a_tiny_cnn_and_on_the_vgg() -> None:
    net = _tiny()
    # the last Conv2d, followed through its batch norm and ReLU
    assert explain.find_target(net, _evidence()) == explain.Target("2", 0, (2, SIZE, SIZE))
    vgg = import_from(MODEL_DIR, "network.py:TumorVGG16", "brain-tumor-demo")()
    found = explain.find_target(vgg, torch.zeros(1, 3, 240, 240), run=vgg.logits)
    # block5_conv3 after its ReLU: the 13th call of the one ReLU the network shares
    assert found == explain.Target("relu", 12, (512, 15, 15))
    assert explain.ends_at(vgg, found, vgg.features, torch.zeros(1, 3, 32, 32))
    assert not explain.ends_at(vgg, dataclasses.replace(found, call=11), vgg.features,
                               torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no layer with a spatial"):
        explain.find_target(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), torch.zeros(1, 8))


@pytest.mark.parametrize("method", ["grad-cam", "grad-cam++", "score-cam"])
def test_each_method_peaks_where_the_evidence_of_its_class_is(method: str) -> None:
    net, image = _tiny(), _evidence()
    target = explain.find_target(net, image)
    cut = explain.split(net, target, image)
    for cls, (here, there) in enumerate(((BLOB_A, BLOB_B), (BLOB_B, BLOB_A))):
        cam = explain.explain(method, cut, cls, image, net, max_channels=2)
        assert cam.shape == (SIZE, SIZE)
        assert divmod(int(cam.argmax()), SIZE) == here, (method, cls)
        assert float(cam[there]) < 0.2 * float(cam.max())  # the other class's evidence is not


def test_boxes_surround_the_strongest_blobs_largest_first() -> None:
    heat = np.zeros((100, 120), dtype=np.float32)
    heat[20:30, 40:60] = 1.0  # the strongest region, 200 pixels
    heat[70:75, 10:15] = 0.8  # weaker and smaller
    heat[90, 100] = 0.9  # one pixel
    heat[50:60, 80:90] = 0.4  # below half the maximum: no region
    heat[25, 60] = 0.6  # touches the first region diagonally-adjacent column: joins it
    regions = explain.strongest_regions(heat, fraction=0.5, count=2)
    assert [(r.top, r.left, r.bottom, r.right) for r in regions] == [(20, 40, 29, 60),
                                                                     (70, 10, 74, 14)]
    assert regions[0].share == pytest.approx(200.6 / heat.sum())
    assert regions[0].share > regions[1].share
    assert explain.strongest_regions(np.zeros((4, 4))) == ()


def test_an_unknown_method_is_one_config_line(tmp_path: Path) -> None:
    folder = tmp_path / "brain-tumor-demo"
    folder.mkdir()
    text = (MODEL_DIR / "manifest.toml").read_text()
    assert 'methods = ["grad-cam"]\n' in text
    (folder / "manifest.toml").write_text(
        text.replace('methods = ["grad-cam"]\n', 'methods = ["grad-cam", "lime"]\n'))
    with pytest.raises(ConfigError) as caught:
        load_manifest(folder)
    assert caught.value.problems == [
        "models/brain-tumor-demo/manifest.toml [explain].methods: unknown method 'lime' "
        "(one of grad-cam, grad-cam++, score-cam)"]
    assert load_manifest(MODEL_DIR).explain == ExplainSpec(methods=("grad-cam",))


def _old_grad_cam(head: nn.Module, activation: torch.Tensor, cls: int,
                  shape: tuple[int, int]) -> np.ndarray:
    """brain-tumor-demo's own Grad-CAM before explain.py (its commit fb81847), verbatim."""
    with torch.inference_mode(False), torch.enable_grad():
        a = activation.clone().requires_grad_(True)
        score = head(a)[0, cls]
        (grad,) = torch.autograd.grad(score, a)
    with torch.no_grad():
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=shape, mode="bilinear",
                                              align_corners=False)[0, 0]
        peak = cam.max()
        cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def test_brain_tumor_demo_each_method_makes_a_valid_sc_and_sr(
        tumor_ctx: ResultContext, tmp_path: Path) -> None:
    """Colin27's key slice explained by each method: the default (Grad-CAM) equal to the
    model's former code; each overlay names its method; the SR's regions pass dciodvfy and
    dsrdump. Score-CAM runs on 2 channels here to keep the test short (the default is 32)."""
    loaded = load_model(MODEL_DIR, "cpu")
    model = loaded.model
    (heat,) = tumor_ctx.result.heatmaps
    assert heat.method == "Grad-CAM" and heat.regions
    volume = assemble(list(tumor_ctx.sources))
    key = heat.slice_index
    preprocess = sys.modules[type(model).__module__].preprocess_slices
    image = preprocess(torch.as_tensor(np.asarray(volume.array[key:key + 1], dtype=np.float32)),
                       model.size)
    with torch.inference_mode():
        activation = model.network.features(image)
    cls = max((0, 1, 3), key=lambda i: next(f.probability for f in tumor_ctx.result.findings
                                            if f.concept == tumor_ctx.manifest.findings[i].concept))
    old = _old_grad_cam(model.network.head, activation, cls, volume.array.shape[1:3])
    model.manifest = dataclasses.replace(loaded.manifest, explain=ExplainSpec(
        methods=("grad-cam", "grad-cam++", "score-cam"), score_cam_channels=2))
    timings: dict[str, float] = {}
    heatmaps = model.explain(volume, key, activation, cls, timings)
    assert [h.method for h in heatmaps] == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]
    assert np.array_equal(heatmaps[0].values, old)  # the same code path, to the bit
    # the fixture's map came from the batched pass (16 slices at once): the same to float noise
    assert np.abs(heatmaps[0].values - heat.values).max() < 1e-4
    assert set(timings) == {"gradcam", "gradcampp", "scorecam"}

    result = dataclasses.replace(tumor_ctx.result, heatmaps=heatmaps)
    ctx = dataclasses.replace(tumor_ctx, result=result)
    scs = build_sc(ctx)
    shown = [sc for sc in scs if "heatmap" in sc.DerivationDescription]
    assert len(shown) == 3
    SHOTS.mkdir(parents=True, exist_ok=True)
    for sc, h in zip(shown, heatmaps, strict=True):
        path = tmp_path / f"sc-{h.method}.dcm"
        sc.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy(path)
        assert errors == [], errors
        assert f"{h.method} heatmap" in sc.DerivationDescription
        assert f"{h.method} heatmap" in sc.ImageComments
        name = h.method.lower().replace("+", "p")
        (SHOTS / f"explain-{name}.png").write_bytes(encode_png(
            np.asarray(pydicom.dcmread(path).pixel_array)))

    sr_path = tmp_path / "sr.dcm"
    build_sr(ctx, None).save_as(sr_path, enforce_file_format=True)
    errors, _ = dciodvfy(sr_path)
    assert errors == [], errors
    dump = subprocess.run(["/usr/bin/dsrdump", "+Pl", str(sr_path)], capture_output=True,
                          text=True)
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
    assert dump.stdout.count('CODE:(,,"Finding")') == 1  # the classification's, alone
    for h in heatmaps:
        code = {"Grad-CAM": "GRAD-CAM", "Grad-CAM++": "GRAD-CAM-PP", "Score-CAM": "SCORE-CAM"}
        assert f'"Measurement Method")=({code[h.method]},99DCMNODE,' in dump.stdout
        for n, r in enumerate(h.regions, start=1):
            assert f'"brain-tumor-demo: {h.method} region {n}"' in dump.stdout
            corners = (f"{r.left}/{r.top},{r.right + 1}/{r.top},{r.right + 1}/{r.bottom + 1},"
                       f"{r.left}/{r.bottom + 1},{r.left}/{r.top}")
            assert f'"Image Region")=(POLYLINE,{corners})' in dump.stdout


def test_stored_results_keep_method_and_regions_and_format_2_still_loads(
        tumor_ctx: ResultContext, tmp_path: Path) -> None:
    loaded = LoadedModel(tumor_ctx.manifest, None, "cpu", 0.0)  # type: ignore[arg-type]
    (heat,) = tumor_ctx.result.heatmaps
    two = dataclasses.replace(tumor_ctx.result, heatmaps=(
        heat, dataclasses.replace(heat, values=heat.values[::-1].copy(), method="Score-CAM")))
    save_result(tmp_path / "m", loaded, two, "2.25.1", ())
    result, _ = load_result(tmp_path / "m")
    assert [(h.slice_index, h.method, h.regions) for h in result.heatmaps] == [
        (h.slice_index, h.method, h.regions) for h in two.heatmaps]
    assert all(np.array_equal(a.values, b.values)
               for a, b in zip(result.heatmaps, two.heatmaps, strict=True))
    # a result stored before explanations had methods: heatmaps by slice index alone
    record = json.loads((tmp_path / "m" / "result.json").read_text())
    record["format"], record["heatmaps"] = 2, [heat.slice_index]
    (tmp_path / "m" / "result.json").write_text(json.dumps(record))
    np.savez_compressed(tmp_path / "m" / "masks.npz", **{f"heatmap_{heat.slice_index}": heat.values})
    (old,) = load_result(tmp_path / "m")[0].heatmaps
    assert (old.slice_index, old.method, old.regions) == (heat.slice_index, "", ())
    assert np.array_equal(old.values, heat.values)
