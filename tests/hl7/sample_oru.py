"""One real ORU^R01 for the MLLP tests: a lung-ct measurement on a real CT header, with a patient
identity the tests then look for where it must not appear (logs, outbox errors)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom

from node.core.contract import Measurement, ModelResult, ResultContext, Triage
from node.core.manifest import load_manifest
from node.core.settings import Hl7Settings
from node.hl7.oru import MessageHeader, build_oru, control_id
from tests.data import sample_file

REPO = Path(__file__).resolve().parents[2]


def sample_oru(patient_id: str, family_name: str) -> str:
    source = pydicom.dcmread(sample_file("CT_small.dcm"))
    source.PatientID, source.PatientName = patient_id, f"{family_name}^Erika"
    manifest = load_manifest(REPO / "models" / "lung-ct")
    volume = manifest.measurements[2]  # Total lung volume
    result = ModelResult(manifest.name, manifest.version, triage=Triage.PRIORITY,
                         measurements=(Measurement(volume.name, 4321.5, volume.unit,
                                                   volume.concept),))
    job_key = f"{source.StudyInstanceUID}/1/{manifest.name}"
    created = dt.datetime(2026, 11, 22, 10, 30)
    ctx = ResultContext(sources=(source,), result=result, manifest=manifest, job_key=job_key,
                        created=created)
    header = MessageHeader("DICOM_NODE", "RADIOLOGY", "EMR", "HOSP", "P",
                           control_id(job_key, "emr"), created)
    return build_oru(ctx, header, Hl7Settings())
