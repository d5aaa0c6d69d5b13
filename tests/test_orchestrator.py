"""The orchestrator's stages on a real ledger and spool (no network, no node process)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

import node.orchestrator
from node.app import open_ledger
from node.at_rest import StorageKeys
from node.config import DeidSettings, ModelsSettings, NodeSettings, Settings
from node.jobstate import JobState
from node.ledger import ReceivedInstance
from node.models.manifest import load_manifest
from node.models.registry import LoadedModel
from node.orchestrator import Orchestrator
from node.pipeline.deid.keys import DeidKeys, new_secret
from node.pipeline.deid.profile import load_profile
from node.pipeline.results import ModelResult
from node.pipeline.volume import Volume
from node.pseudonyms import PseudonymStore
from node.spool import Spool
from tests.data import ct_series

REPO = Path(__file__).resolve().parent.parent
STORAGE = StorageKeys.from_secret(base64.b64decode(new_secret()))


class _Recorder:
    """A model that keeps the volumes it is given."""

    def __init__(self) -> None:
        self.volumes: list[Volume] = []

    def predict(self, volume: Volume) -> ModelResult:
        self.volumes.append(volume)
        return ModelResult(model_name="recorder", model_version="1")


def _orchestrator(var: Path, keys: DeidKeys, model: _Recorder) -> Orchestrator:
    settings = Settings(node=NodeSettings(var_dir=str(var)),
                        models=ModelsSettings(dir=str(REPO / "models"), enabled=("lung-ct",)))
    ledger = open_ledger(settings, create=True)
    spool = Spool(var, 0, STORAGE)
    spool.prepare()
    loaded = LoadedModel(load_manifest(REPO / "models" / "lung-ct"), model, "cpu", 0.0)
    return Orchestrator(ledger, spool, load_profile(DeidSettings()), keys,
                        PseudonymStore(ledger.engine, keys), {"lung-ct": loaded}, settings)


def _receive(orch: Orchestrator, files: list[Path]) -> int:
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = orch.spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        orch.spool.absolute(relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, orch.spool.absolute(relative))
        orch.ledger.record_instance(ReceivedInstance(
            ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
            ds.file_meta.TransferSyntaxUID, ds.Modality, (), path.stat().st_size, "TEST"),
            relative, lambda: None)
    (study,) = orch.ledger.studies()
    orch.ledger.transition(study.id, JobState.COMPLETE, reason="test")
    return study.id


def test_inference_takes_the_data_sets_just_de_identified_as_the_files_would_give_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    first = _Recorder()
    orch = _orchestrator(tmp_path / "var", keys, first)
    study_id = _receive(orch, ct_series(tmp_path / "ct", 24))
    assert orch.deidentify_study(orch.ledger.study_by_id(study_id)) == 1
    with monkeypatch.context() as patch:  # straight on: the files are not read back
        patch.setattr(node.orchestrator.pydicom, "dcmread", None)
        assert orch.infer_study(orch.ledger.study_by_id(study_id)) == 1
    # after a restart the same stage reads the de-identified files
    again = _Recorder()
    restarted = _orchestrator(tmp_path / "var", keys, again)
    assert restarted.infer_study(orch.ledger.study_by_id(study_id)) == 0  # INFERRED already
    (a,), (b,) = first.volumes, again.volumes
    assert a.array.dtype == b.array.dtype == np.float32 and np.array_equal(a.array, b.array)
    assert (a.geometry, a.modality, a.series_instance_uid, a.series_description) == (
        b.geometry, b.modality, b.series_instance_uid, b.series_description)
    assert a.series_instance_uid.startswith("2.25.")  # de-identified
