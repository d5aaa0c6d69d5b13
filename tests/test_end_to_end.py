"""The whole flow with a real Orthanc in the loop (scripts/demo.py's stack, on free ports).

Studies are stored into Orthanc with dcmtk's storescu, as a modality does; Orthanc's routing
script forwards each stable study to the node; the node's results come back into the same
study; the ORUs reach a real MLLP listener. Checked through Orthanc's REST API and an
independent HL7 parser: every result object in the patient's own study, the original patient ID
and accession number in the ORU, nothing de-identified in Orthanc.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hl7
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from demo import Ports, Stack, running  # noqa: E402
from demo_data import write_demo  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {"SEG", "SR", "OT", "KO", "DOC"}


def test_a_study_stored_into_orthanc_comes_back_with_its_results(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "run", Ports(free_port(), free_port(), free_port(), free_port()),
                  stable_age_s=2, quiet_period_s=1.0, models=["brain-mask", "lung-ct"])
    with running(stack):
        studies = write_demo(tmp_path / "studies", ct_slices=48, new_uids=True)
        stack.push(tmp_path / "studies")
        rows = stack.wait_done(len(studies), timeout_s=300)
        assert [r["state"] for r in rows] == ["DONE", "DONE"], rows
        # orthanc/node.toml: Orthanc sends a stable study whole, so its release completes it
        assert [r["completion_reason"] for r in rows] == ["released", "released"], rows
        by_uid = {str(s["study_instance_uid"]): s for s in studies}
        for orthanc_id in stack.orthanc("/studies"):
            study = stack.orthanc(f"/studies/{orthanc_id}")
            original = by_uid.pop(study["MainDicomTags"]["StudyInstanceUID"])
            assert study["PatientMainDicomTags"]["PatientID"] == original["patient_id"]
            modalities = {stack.orthanc(f"/series/{s}")["MainDicomTags"]["Modality"]
                          for s in study["Series"]}
            assert modalities - {"MR", "CT"} == EXPECTED
        assert by_uid == {}  # no other study: nothing de-identified reached Orthanc
        patients = {stack.orthanc(f"/patients/{p}")["MainDicomTags"]["PatientID"]
                    for p in stack.orthanc("/patients")}
        assert patients == {str(s["patient_id"]) for s in studies}
        for instance in stack.orthanc("/instances?expand"):
            assert instance["MainDicomTags"]["SOPInstanceUID"]
    messages = [hl7.parse(m.replace("\n", "\r")) for m in
                stack.oru_file.read_text().strip().split("\n\n")]
    identities = {(m["PID.F3.R1.C1"], m["OBR.F2.R1.C1"]) for m in messages}
    assert identities == {(str(s["patient_id"]), str(s["accession"])) for s in studies}
    assert len(messages) == 2  # brain-mask on the MR, lung-ct on the CT
