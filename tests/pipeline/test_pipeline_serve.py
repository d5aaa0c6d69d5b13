"""The running node takes a study from C-STORE through de-identification to a model result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.models.chest_phantom import chest_phantom, write_ct_series

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_study_is_deidentified_then_inferred(node_factory, tmp_path: Path) -> None:
    node = node_factory({
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(REPO / "models"), "enabled": ["lung-ct", "brain-mask"],
                   "device": "cpu"},
    })
    node.start()
    phantom = chest_phantom(slices=60, size=192)
    series = tmp_path / "ct"
    series.mkdir()
    write_ct_series(phantom.volume, series)
    node.storescu(*sorted(series.glob("*.dcm")))
    study_uid = node.status()[0]["study_instance_uid"]
    row = node.wait_state(study_uid, "DONE", "FAILED", timeout=90)
    assert row["state"] == "DONE"  # no destination configured: built, nothing to send
    assert row["state_reason"] == "all delivered; no alert"
    # brain-mask wants MR: not run
    assert [p.name for p in (node.var_dir / "results").glob("*/g1/*")] == ["lung-ct"]
    built = sorted(p.name for p in (node.var_dir / "outbox").rglob("lung-ct/*"))
    assert [b for b in built if not b.startswith("sc-")] == [
        "kos.dcm", "report-pdf.dcm", "report.pdf", "seg.dcm", "sr.dcm"]
    assert "sc-1.dcm" in built
    (summary_path,) = (node.var_dir / "results").rglob("lung-ct/summary.json")
    summary = json.loads(summary_path.read_text())
    values = {m["name"]: m["value"] for m in summary["measurements"]}
    ml = phantom.volume.geometry.voxel_volume_ml
    assert values["Right lung volume"] == pytest.approx(phantom.right.sum() * ml, rel=0.02)
    assert (summary_path.parent / "masks.npz").exists()
    # the model saw de-identified data only: the series it names is a pseudonym
    assert summary["series_instance_uid"].startswith("2.25.")


def test_a_broken_model_manifest_stops_the_node_at_start(node_factory, tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "lung-ct", models / "lung-ct")
    manifest = models / "lung-ct" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('loader = "none"', 'loader = "torchscript"'))
    node = node_factory({"models": {"dir": str(models), "enabled": ["lung-ct"]}})
    node.start(wait=False)
    assert node.proc is not None
    assert node.proc.wait(timeout=60) == 2
    assert "config error: models/lung-ct/manifest.toml [weights]: file and sha256 are required" in node.log()
