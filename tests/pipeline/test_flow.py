"""The flow's stages on a real ledger and spool (no network, no node process)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.core.at_rest import StorageKeys
from node.core.contract import ModelResult, Volume
from node.core.jobstate import JobState
from node.core.keys import DeidKeys, new_secret
from node.core.ledger import ReceivedInstance, open_ledger
from node.core.manifest import load_manifest
from node.core.pseudonyms import PseudonymStore
from node.core.settings import DeidSettings, ModelsSettings, NodeSettings, Settings
from node.core.spool import Spool
from node.pipeline.context import StageContext
from node.pipeline.deid.profile import load_profile
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.flow import Flow, Stage
from node.pipeline.infer.registry import LoadedModel
from tests.data import ct_series

REPO = Path(__file__).resolve().parents[2]
STORAGE = StorageKeys.from_secret(base64.b64decode(new_secret()))


class _Recorder:
    """A model that keeps the volumes it is given."""

    def __init__(self) -> None:
        self.volumes: list[Volume] = []

    def predict(self, volume: Volume) -> ModelResult:
        self.volumes.append(volume)
        return ModelResult(model_name="recorder", model_version="1")


def _flow(var: Path, keys: DeidKeys, model: _Recorder) -> Flow:
    settings = Settings(node=NodeSettings(var_dir=str(var)),
                        models=ModelsSettings(dir=str(REPO / "models"), enabled=("lung-ct",)))
    ledger = open_ledger(settings, create=True)
    spool = Spool(var, 0, STORAGE)
    spool.prepare()
    loaded = LoadedModel(load_manifest(REPO / "models" / "lung-ct"), model, "cpu", 0.0)
    ctx = StageContext(ledger, spool, load_profile(DeidSettings()), keys,
                       PseudonymStore(ledger.engine, keys), {"lung-ct": loaded}, settings)
    return Flow(ledger, settings, Deliverer(ctx.outbox, Peers(settings, ctx.outbox_root)), ctx)


def _receive(flow: Flow, files: list[Path]) -> int:
    assert flow.ctx is not None
    spool = flow.ctx.spool
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relative = spool.relative_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
        spool.absolute(relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, spool.absolute(relative))
        flow.ledger.record_instance(ReceivedInstance(
            ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
            ds.file_meta.TransferSyntaxUID, ds.Modality, (), path.stat().st_size, "TEST"),
            relative, lambda: None)
    (study,) = flow.ledger.studies()
    flow.ledger.transition(study.id, JobState.COMPLETE, reason="test")
    return study.id


def test_inference_takes_the_data_sets_just_de_identified_as_the_files_would_give_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    first = _Recorder()
    flow = _flow(tmp_path / "var", keys, first)
    study_id = _receive(flow, ct_series(tmp_path / "ct", 24))
    assert flow.run_stage(Stage.DEIDENTIFY, study_id) == JobState.DEIDENTIFIED
    with monkeypatch.context() as patch:  # straight on: the files are not read back
        patch.setattr(pydicom, "dcmread", None)
        assert flow.run_stage(Stage.INFER, study_id) == JobState.INFERRED
    assert flow.run_stage(Stage.INFER, study_id) == JobState.INFERRED  # a second run: no-op
    # after a restart the same stage reads the de-identified files
    again = _Recorder()
    restarted = _flow(tmp_path / "var", keys, again)
    flow.ledger.transition(study_id, JobState.RECEIVING, reason="test: re-opened")
    for state in (JobState.COMPLETE, JobState.DEIDENTIFIED):
        flow.ledger.transition(study_id, state, reason="test")
    assert restarted.run_stage(Stage.INFER, study_id) == JobState.INFERRED
    (a,), (b,) = first.volumes, again.volumes
    assert a.array.dtype == b.array.dtype == np.float32 and np.array_equal(a.array, b.array)
    assert (a.geometry, a.modality, a.series_instance_uid, a.series_description) == (
        b.geometry, b.modality, b.series_instance_uid, b.series_description)
    assert a.series_instance_uid.startswith("2.25.")  # de-identified
