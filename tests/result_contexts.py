"""Real model results on real DICOM series, as the result writers receive them.

Session fixtures, registered once in tests/conftest.py (the SR writer, HL7 and result-store
tests share them).

``brain_ctx``: brain-mask on the Colin27 T1 written as a 181-slice DICOM MR series.
``lung_ctx``: lung-ct on the chest phantom written as a 120-slice DICOM CT series.
``tumor_ctx``: brain-tumor-demo (findings with probabilities, a Grad-CAM heatmap) on Colin27.
Sources are the original instances in the volume's slice order, as the orchestrator passes them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pydicom
import pytest

from node.core.contract import ResultContext
from node.pipeline.infer.assemble import assemble
from node.pipeline.infer.registry import load_model
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.models.test_brain_mask import _nifti, _write_series

REPO = Path(__file__).resolve().parents[1]
CREATED = datetime(2026, 11, 22, 10, 30, 0)


def _context(folder: Path, model: str) -> ResultContext:
    datasets = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    volume = assemble(datasets)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    sources = tuple(by_uid[uid] for uid in volume.geometry.sop_instance_uids)
    loaded = load_model(REPO / "models" / model, "cpu")
    result = loaded.model.predict(volume)
    key = f"{sources[0].StudyInstanceUID}/1/{model}"
    return ResultContext(sources=sources, result=result, manifest=loaded.manifest, job_key=key,
                         created=CREATED)


@pytest.fixture(scope="session")
def colin27_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("colin27")
    _write_series(_nifti("ch2.nii.gz"), folder)
    return folder


@pytest.fixture(scope="session")
def brain_ctx(colin27_series: Path) -> ResultContext:
    return _context(colin27_series, "brain-mask")


@pytest.fixture(scope="session")
def tumor_ctx(colin27_series: Path) -> ResultContext:
    return _context(colin27_series, "brain-tumor-demo")


@pytest.fixture(scope="session")
def lung_ctx(tmp_path_factory: pytest.TempPathFactory) -> ResultContext:
    folder = tmp_path_factory.mktemp("chest")
    write_ct_series(chest_phantom(slices=120, size=256).volume, folder)
    return _context(folder, "lung-ct")
