"""No PHI leaves the de-identification, and none reaches logs, the ledger or file names.

The fixture (tests/phi_fixture.py) plants realistic identifying values in every attribute of
PS3.15 Table E.1-1, in nested sequences, private attributes and free-text comments.
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import String, Text, create_engine, select

from node.core import db
from node.core.keys import DeidKeys, new_secret
from node.core.settings import DeidSettings
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.profile import Action, load_profile
from tests.phi_fixture import original_uids, phi_dataset

KEYS = DeidKeys.from_secret(base64.b64decode(new_secret()))

#: the patient's own identity, which no option may let through (names, IDs, contacts, accession)
PATIENT_IDENTITY = ["Müller", "Mueller", "MRN-4471902", "4471902", "Hauptstrasse 17",
                    "5501 2233", "5501 2299", "anna.mueller1951", "ACC20261122", "KVNR-A123456789",
                    "Schneider^Anna", "Hoffmann^Gertrud"]


def encoded(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def leaks(raw: bytes, values: list[str]) -> list[str]:
    return [v for v in values if v.encode("utf-8") in raw or v.encode("latin-1", "ignore") in raw]


def test_basic_profile_leaves_no_planted_value_and_no_original_uid() -> None:
    ds, markers = phi_dataset()
    uids = original_uids(ds)
    assert len(markers) > 400 and len(uids) > 50
    raw = encoded(deidentify(ds, load_profile(DeidSettings()), KEYS).dataset)
    assert leaks(raw, markers) == []
    assert [u for u in uids if u.encode() in raw] == []


def test_with_every_retain_and_clean_option_the_patient_stays_hidden() -> None:
    ds, _ = phi_dataset()
    uids = original_uids(ds)
    options = DeidSettings(retain_long_modified_dates=True, retain_patient_characteristics=True,
                           retain_device_identity=True, retain_institution_identity=True,
                           clean_descriptors=True, clean_structured_content=True,
                           clean_graphics=True)
    device_uids = {str(ds.DeviceUID), str(ds.ManufacturerDeviceClassUID)}
    raw = encoded(deidentify(ds, load_profile(options), KEYS).dataset)
    assert leaks(raw, PATIENT_IDENTITY) == []
    # Retain Device Identity keeps the device's UIDs (Table E.1-1: K); no other UID survives
    assert {u for u in uids if u.encode() in raw} == device_uids


def _dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's error lines for a file (dicom3tools, the outside validator)."""
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True,
                          check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(line.strip() == "CTImage" for line in lines), "dciodvfy did not check a CT Image"
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.startswith("Error")}


@pytest.mark.integration
@pytest.mark.parametrize("options", [
    {},
    {"retain_long_modified_dates": True, "retain_patient_characteristics": True,
     "retain_device_identity": True, "retain_institution_identity": True,
     "clean_descriptors": True, "clean_structured_content": True, "clean_graphics": True},
], ids=["basic", "all-options"])
def test_phi_fixture_output_has_no_new_dciodvfy_error(tmp_path: Path, options: dict[str, bool]) -> None:
    """Identifiers in nested sequences: what the profile empties must not leave an invalid
    object behind (zero-item sequences, conditional attributes without their condition)."""
    ds, markers = phi_dataset()
    source, output = tmp_path / "phi.dcm", tmp_path / "deid.dcm"
    ds.save_as(source, enforce_file_format=True)
    before = _dciodvfy_errors(source)
    assert any("not a recognized standard attribute" in e for e in before)  # the checker works
    profile = load_profile(DeidSettings(**options))
    result = deidentify(pydicom.dcmread(source), profile, KEYS)
    result.dataset.save_as(output, enforce_file_format=True)
    assert sorted(_dciodvfy_errors(output) - before) == []
    # an attribute whose action is X is gone, at any depth
    assert [e.tag for e in result.dataset.iterall() if profile.action(int(e.tag)) is Action.REMOVE] == []
    if not options:
        assert leaks(output.read_bytes(), markers) == []


@pytest.mark.integration
def test_phi_study_through_the_running_node(node_factory, tmp_path: Path) -> None:
    """Ingest and de-identify a PHI-laden study; scan outputs, file names, logs, the ledger."""
    node = node_factory({"completion": {"quiet_period_s": 0.5}, "node": {"log_level": "DEBUG"}})
    node.start()
    ds, markers = phi_dataset()
    uids = original_uids(ds)
    source = tmp_path / "incoming-study.dcm"
    ds.save_as(source, enforce_file_format=True)
    node.storescu(source)
    study_uid = node.status()[0]["study_instance_uid"]
    row = node.wait_state(study_uid, "DEIDENTIFIED")
    assert row["state_reason"] == "1 instances de-identified, 0 quarantined (burned-in text)"

    outputs = list((node.var_dir / "deid").rglob("*.dcm"))
    assert len(outputs) == 1
    out = outputs[0].read_bytes()
    assert leaks(out, markers) == []
    assert [u for u in uids if u.encode() in out] == []

    searched = markers + [m.split("^")[0] for m in markers if "^" in m]
    # file and folder names under var/
    names = " ".join(str(p.relative_to(node.var_dir)) for p in node.var_dir.rglob("*"))
    assert leaks(names.encode(), searched) == []
    # every log line, at DEBUG
    node.stop()
    assert leaks(node.log().encode(), searched) == []
    # every text column of every ledger table
    engine = create_engine(f"sqlite:///{node.var_dir / 'ledger.sqlite3'}")
    with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            cols = [c for c in table.columns if isinstance(c.type, String | Text)]
            text = " ".join(str(v) for r in conn.execute(select(*cols)) for v in r if v)
            assert leaks(text.encode(), searched) == [], table.name
    engine.dispose()
