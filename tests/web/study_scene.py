"""A job as the Study page finds it after the flow: a de-identified copy on disk and a model
run with a mask and a key slice, stored as the inference stage stores them.

The slices are real: ``tests.data.ct_series`` (the 512x512 head CT ``693_UNCR.dcm``, one real
slice repeated 1 mm apart). They stand in for the de-identified copy as written under
``<var_dir>/deid/<study key>/`` (the key images read nothing else). The mask is the head CT's
brain tissue (0 to 80 HU inside the skull, its largest component, holes filled), stored as a
brain-mask run, so the overlay has a real contour to draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.processing import apply_modality_lut
from scipy import ndimage
from sqlalchemy import select

from node.core import db
from node.core.contract import Geometry, Measurement, ModelResult, Segment, Triage
from node.core.jobstate import JobState
from node.core.keys import write_key_file
from node.core.ledger import Ledger, ResultRecord, record_results
from node.core.manifest import load_manifest
from node.core.settings import Settings
from node.core.spool import open_spool
from node.pipeline.infer.registry import LoadedModel
from node.pipeline.infer.stored import save_result
from tests.conftest import REPO
from tests.data import ct_series
from tests.web.conftest import make_job

MODEL = "brain-mask"
MANIFEST = load_manifest(REPO / "models" / MODEL)
SLICES = 3
KEY = 1  # the run's key slice (0-based)


def _brain(values: np.ndarray) -> np.ndarray:
    tissue = (values > 0) & (values < 80)
    labels, count = ndimage.label(tissue)
    if count == 0:
        return tissue
    sizes = ndimage.sum(tissue, labels, range(1, count + 1))
    return np.asarray(ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes))), dtype=bool)


def analysed_job(ledger: Ledger, settings: Settings, uid: str, *, volume_ml: float = 1400.0,
                 triage: Triage = Triage.ROUTINE) -> int:
    """A DONE job ``uid`` with a de-identified copy of three CT slices and one brain-mask run
    (key slice KEY, a 'Brain volume' of ``volume_ml``)."""
    key_file = settings.var_path / "deid.key"
    if not key_file.exists():
        write_key_file(key_file)
    job = make_job(ledger, uid, to=(JobState.COMPLETE, JobState.DEIDENTIFIED))
    spool = open_spool(settings)
    deid = spool.root / "deid" / spool.key(uid)
    files = ct_series(deid, SLICES, study_uid=f"2.25.{abs(hash(uid)) % 10**12}")
    sources = [pydicom.dcmread(p) for p in files]
    values = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in sources])
    mask = np.stack([_brain(v) for v in values])
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    geometry = Geometry(origin=(0.0, 0.0, 0.0), row_direction=(1.0, 0.0, 0.0),
                        column_direction=(0.0, 1.0, 0.0), normal=(0.0, 0.0, 1.0),
                        spacing=(1.0, 0.5, 0.5), sop_instance_uids=uids)
    (segment,) = MANIFEST.segments
    result = ModelResult(
        model_name=MODEL, model_version=MANIFEST.version,
        segments=(Segment(segment.label, segment.name, segment.category, segment.type, mask,
                          geometry),),
        measurements=(Measurement("Brain volume", volume_ml, "mL",
                                  segment_label=segment.label),),
        triage=triage, key_slices=(KEY,))
    folder = spool.root / "results" / spool.key(uid) / "g1" / MODEL
    save_result(folder, LoadedModel(MANIFEST, None, "cpu", 0.0),  # type: ignore[arg-type]
                result, "2.25.7", uids)
    record = ResultRecord(MODEL, MANIFEST.version, triage.value, None,
                          folder.relative_to(spool.root).as_posix())
    ledger.transition(job, JobState.INFERRED, reason="test",
                      also=lambda conn: record_results(conn, job, 1, [record]))
    for state in (JobState.BUILT, JobState.DELIVERED, JobState.REPORTED, JobState.DONE):
        ledger.transition(job, state, reason="test")
    return job


def run_id(ledger: Ledger, job: int) -> int:
    with db.reader(ledger.engine) as conn:
        return int(conn.execute(select(db.results.c.id)
                                .where(db.results.c.study_id == job)).scalar_one())


def deid_folder(settings: Settings, uid: str) -> Path:
    spool = open_spool(settings)
    return spool.root / "deid" / spool.key(uid)
