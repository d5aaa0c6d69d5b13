"""The model plug-in interface: a hospital's TorchScript model dropped in with a manifest only,
a state_dict model with its module class, checksums, manifest errors, the infer command."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from node.core.errors import ConfigError
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.registry import load_model
from tests.data import ct_series

REPO = Path(__file__).resolve().parents[3]


class _Threshold(torch.nn.Module):
    """Logit > 0 where the windowed intensity is above its middle (HU > 0 for window 0/2000)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5


MANIFEST = """
name = "{name}"
version = "2.1.0"
task = "segmentation"
summary = "Test model: everything denser than water"
entry = "{entry}"
licence = "Apache-2.0"
provenance = "built by the test"
intended_use = "tests only"
[weights]
file = "{file}"
sha256 = "{sha}"
loader = "{loader}"
module = "{module}"
[selection]
modalities = ["CT"]
min_slices = 5
orientations = ["axial"]
[input]
target_size = []
normalization = "window"
window = [0.0, 2000.0]
[[segments]]
label = 1
name = "Dense tissue"
category = ["91723000", "SCT", "Anatomical Structure"]
type = ["85756007", "SCT", "Tissue"]
[[measurements]]
name = "Dense tissue volume"
unit = "mL"
concept = ["118565006", "SCT", "Volume"]
[triage]
measurement = "Dense tissue volume"
priority_above = 1.0
urgent_above = 1000000.0
"""


def torchscript_model(models: Path, name: str = "dense-tissue") -> Path:
    folder = models / name
    folder.mkdir(parents=True)
    torch.jit.script(_Threshold()).save(str(folder / "model.ts"))
    sha = hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()
    (folder / "manifest.toml").write_text(MANIFEST.format(
        name=name, entry="", file="model.ts", sha=sha, loader="torchscript", module=""))
    return folder


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ct_series(tmp_path_factory.mktemp("ct"), 8)


def test_a_torchscript_model_needs_only_a_manifest(tmp_path: Path, ct_files: list[Path]) -> None:
    loaded = load_model(torchscript_model(tmp_path), "cpu")
    volume = assemble([pydicom.dcmread(p) for p in ct_files])
    result = loaded.model.predict(volume)
    (segment,) = result.segments
    assert np.array_equal(segment.mask, volume.array > 0)
    (volume_ml,) = result.measurements
    assert volume_ml.value == pytest.approx((volume.array > 0).sum() * volume.geometry.voxel_volume_ml)
    assert volume_ml.unit == "mL" and volume_ml.concept is not None
    assert result.triage.value == "PRIORITY"
    assert (result.model_name, result.model_version) == ("dense-tissue", "2.1.0")


def test_state_dict_loader_with_module_class(tmp_path: Path, ct_files: list[Path]) -> None:
    folder = tmp_path / "scaled"
    folder.mkdir()
    (folder / "network.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.zeros(1))
            def forward(self, x):
                return x * self.scale
    """))
    (folder / "model.py").write_text(textwrap.dedent("""
        from node.core.contract import ModelResult, Measurement
        class Model:
            def __init__(self, folder, device, network, manifest):
                self.network, self.manifest = network, manifest
            def predict(self, volume):
                import torch
                value = float(self.network(torch.ones(1)).item())
                return ModelResult(self.manifest.name, self.manifest.version,
                                   measurements=(Measurement("scale", value, "1"),))
    """))
    torch.save({"scale": torch.tensor([3.5])}, folder / "weights.pt")
    sha = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    (folder / "manifest.toml").write_text(MANIFEST.format(
        name="scaled", entry="model.py:Model", file="weights.pt", sha=sha, loader="state_dict",
        module="network.py:Net"))
    loaded = load_model(folder, "cpu")
    result = loaded.model.predict(assemble([pydicom.dcmread(p) for p in ct_files]))
    assert result.measurements[0].value == pytest.approx(3.5)


def test_wrong_checksum_and_bad_manifest_are_clear_errors(tmp_path: Path) -> None:
    folder = torchscript_model(tmp_path)
    data = bytearray((folder / "model.ts").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.ts").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"weights checksum mismatch for model\.ts"):
        load_model(folder, "cpu")
    (folder / "manifest.toml").write_text("name = 'dense-tissue'\ntask = 'guessing'\n")
    with pytest.raises(ConfigError, match="required text"):
        load_model(folder, "cpu")
    (folder / "manifest.toml").write_text("name = [unclosed\n")
    with pytest.raises(ConfigError, match="unreadable"):
        load_model(folder, "cpu")


def test_infer_command_writes_a_summary(tmp_path: Path, ct_files: list[Path]) -> None:
    models = tmp_path / "models"
    torchscript_model(models)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nvar_dir = "{tmp_path / "var"}"\n[models]\ndir = "{models}"\ndevice = "cpu"\n')
    out = subprocess.run([sys.executable, "-m", "node.commands", "--config", str(cfg), "infer",
                          "--model", "dense-tissue", str(ct_files[0].parent), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"]["name"] == "dense-tissue" and summary["model"]["device"] == "cpu"
    assert "AI-generated" in summary["label"]
    assert summary["series_instance_uid"] == str(pydicom.dcmread(ct_files[0]).SeriesInstanceUID)
    assert summary["segments"][0]["voxels"] > 0
    assert {"load_model", "read", "deidentify", "assemble", "forward"} <= set(summary["timings_s"])
    # no fitting series: one clear line
    mr = tmp_path / "mr"
    mr.mkdir()
    from tests.data import sample_file
    pydicom.dcmread(sample_file("MR_small.dcm")).save_as(mr / "mr.dcm")
    bad = subprocess.run([sys.executable, "-m", "node.commands", "--config", str(cfg), "infer",
                          "--model", "dense-tissue", str(mr), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1
    assert bad.stderr.strip() == ("dicom-node: no series fits model dense-tissue "
                                  "(series 1: modality MR not in CT)")
