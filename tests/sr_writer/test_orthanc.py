"""Orthanc (the PACS) accepts every result object and files it in the patient's own study."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.commands import main
from tests.conftest import dcmtk, run
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.orthanc import orthanc  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_results_land_in_the_original_study(orthanc, tmp_path: Path) -> None:  # noqa: F811
    series = tmp_path / "ct"
    series.mkdir()
    write_ct_series(chest_phantom(slices=60, size=192).volume, series)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nvar_dir = "{tmp_path / "var"}"\n[models]\ndir = "{REPO / "models"}"\n')
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "infer", "--model", "lung-ct", str(series), "--out", str(out)]) == 0
    objects = sorted(out.glob("*.dcm"))
    for files in (sorted(series.glob("*.dcm")), objects):
        sent = run([dcmtk("storescu"), "-R", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
                    *map(str, files)])
        assert sent.returncode == 0, sent.stderr
    (study,) = orthanc.get("/studies")
    modalities = sorted(orthanc.get(f"/series/{s}")["MainDicomTags"].get("Modality", "")
                        for s in orthanc.get(f"/studies/{study}")["Series"])
    assert modalities == ["CT", "DOC", "KO", "OT", "SEG", "SR"]
    instances = orthanc.get(f"/studies/{study}/instances")
    assert len(instances) == 60 + len(objects)
