"""The review gate: with ``models.review_required = ["lung-ct"]`` a real ``dicom-node serve``
holds a lung-ct job in AWAITING_REVIEW and sends the EMR (a real MLLP listener) nothing; a
radiologist approves through the API and the ORU arrives final (OBR-25 F, OBX-11 F) naming
the reviewer in OBR-32, strictly valid; the job reaches DONE. A second job is rejected:
nothing is sent, the rejection is feedback "incorrect" and in the audit trail. In-process:
only radiologists decide, CSRF is checked, a job not AWAITING_REVIEW is a 409."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hl7
import httpx2 as httpx
import pydicom
import pytest
from hl7apy import parser as hl7apy_parser  # type: ignore[import-untyped]
from hl7apy.consts import VALIDATION_LEVEL  # type: ignore[import-untyped]
from hl7apy.validation import Validator  # type: ignore[import-untyped]

from node.hl7.listener import MllpListener
from node.web.deps import CSRF_HEADER
from tests.conftest import DICOM_NODE, NodeProcess, free_port, run
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.web.test_serve_api import _wait, models  # noqa: F401 (a fixture)

PASSWORDS = {"rad": "radiologist password 1", "op": "operator password 1",
             "root": "admin password 12"}


def _series(folder: Path) -> tuple[str, list[Path]]:
    folder.mkdir()
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, folder)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


def _user(node: NodeProcess, name: str, role: str) -> None:
    result = run([*DICOM_NODE, "--config", str(node.config), "user", "add", name, "--role", role],
                 cwd=node.workdir, input=PASSWORDS[name] + "\n")
    assert result.returncode == 0, result.stderr


def _login(client: httpx.Client, name: str) -> str:
    client.cookies.clear()
    r = client.post("/api/v1/session", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def _job(client: httpx.Client, study_uid: str) -> dict[str, Any]:
    items = client.get("/api/v1/studies", params={"state": "AWAITING_REVIEW"}).json()["items"]
    (job,) = [j for j in items if j["study_instance_uid"] == study_uid]
    return dict(job)


@pytest.mark.integration
def test_nothing_leaves_the_node_until_a_radiologist_approves(
        node_factory: Any, models: Path, tmp_path: Path) -> None:  # noqa: F811
    approved_uid, approved_files = _series(tmp_path / "a")
    rejected_uid, rejected_files = _series(tmp_path / "b")
    emr_port, web_port = free_port(), free_port()
    node = node_factory({
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu",
                   "review_required": ["lung-ct"]},
        "delivery": {"poll_interval_s": 0.2, "timeout_s": 5.0, "retry_base_s": 0.3,
                     "retry_cap_s": 1.0, "max_attempts": 50,
                     "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr_port}]},
        "web": {"enabled": True, "port": web_port},
    })
    node.write_config()
    _user(node, "rad", "radiologist")
    _user(node, "op", "operator")
    _user(node, "root", "admin")
    emr = MllpListener(host="127.0.0.1", port=emr_port, mode="AA").start()
    try:
        node.start()
        node.storescu(*approved_files)
        node.storescu(*rejected_files)
        node.wait_state(approved_uid, "AWAITING_REVIEW", timeout=120)
        node.wait_state(rejected_uid, "AWAITING_REVIEW", timeout=120)
        time.sleep(3)  # several delivery sweeps
        assert emr.received == []
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
            csrf = _login(client, "op")
            job = _job(client, approved_uid)
            url = f"/api/v1/studies/{job['id']}/review"
            r = client.post(url, json={"decision": "approve"}, headers={CSRF_HEADER: csrf})
            assert r.status_code == 403  # operators do not decide
            csrf = _login(client, "rad")
            r = client.post(url, json={"decision": "approve"})
            assert r.status_code == 403, r.text  # no CSRF token
            r = client.post(url, json={"decision": "approve", "note": "checked"},
                            headers={CSRF_HEADER: csrf})
            assert r.status_code == 200, r.text
            assert "AWAITING_REVIEW -> BUILT" in r.json()["result"]
            done = _wait(client, job["id"], "DONE")
            assert [i["state"] for i in done["outbox"]] == ["DELIVERED"] * len(done["outbox"])
            r = client.post(url, json={"decision": "reject"}, headers={CSRF_HEADER: csrf})
            assert r.status_code == 409  # decided already
            (oru,) = emr.received

            other = _job(client, rejected_uid)
            r = client.post(f"/api/v1/studies/{other['id']}/review",
                            json={"decision": "reject", "note": "motion artefacts"},
                            headers={CSRF_HEADER: csrf})
            assert r.status_code == 200, r.text
            rejected = client.get(f"/api/v1/studies/{other['id']}").json()
            assert rejected["state"] == "DISCARDED"
            assert "rejected by rad" in rejected["timeline"][-1]["detail"]
            given = client.get(f"/api/v1/studies/{other['id']}/feedback").json()["items"]
            assert [(g["verdict"], g["note"], g["user"]) for g in given] == \
                [("incorrect", "motion artefacts", "rad")]
            time.sleep(2)
            assert len(emr.received) == 1  # the rejected job sent nothing
            _login(client, "root")
            audit = client.get("/api/v1/audit").json()["items"]
    finally:
        emr.stop()
    reviews = [(a["user"], a["job"], a["outcome"]) for a in audit if a["action"] == "review"]
    assert sorted(reviews) == sorted([("rad", job["id"], "ok"), ("rad", job["id"], "refused"),
                                      ("rad", other["id"], "ok")])
    assert [a["job"] for a in audit if a["action"] == "feedback"] == [other["id"]]
    parsed = hl7apy_parser.parse_message(oru, validation_level=VALIDATION_LEVEL.STRICT,
                                         find_groups=True)
    assert Validator.validate(parsed)
    obr = parsed.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR
    assert obr.obr_25.value == "F"
    message = hl7.parse(oru)
    assert str(message.segment("OBR")[32]) == "rad"
    assert {str(s[11]) for s in message.segments("OBX")} == {"F"}
    assert "(reviewed and approved by a radiologist)" in oru and "preliminary" not in oru
    node.stop()


def test_finalise_keeps_a_reviewer_name_with_separators_one_value() -> None:
    """OBR-32 takes the reviewer's ID and name as sub-components of one value, escaped;
    the final message passes hl7apy STRICT and ``hl7``, and finalising twice changes nothing."""
    from node.hl7.oru import finalise
    from tests.hl7.sample_oru import sample_oru

    first = sample_oru("MRN-1", "Muster")
    final = finalise(first, "rad", "Smith^Jo|hn")
    if "(preliminary, needs review)" in first:
        assert "(preliminary, needs review)" not in final
        assert "(reviewed and approved by a radiologist)" in final
    parsed = hl7apy_parser.parse_message(final, validation_level=VALIDATION_LEVEL.STRICT,
                                         find_groups=True)
    assert Validator.validate(parsed)
    assert str(hl7.parse(final).segment("OBR")[32]) == "rad&Smith\\S\\Jo\\F\\hn"
    assert finalise(final, "rad", "Smith^Jo|hn") == final


def test_a_misspelt_model_in_review_required_is_a_configuration_error(tmp_path: Path) -> None:
    """A name that is not an enabled model would let that model's results out unreviewed."""
    from node.core.errors import ConfigError
    from node.core.settings_load import load_settings

    cfg = tmp_path / "node.toml"
    cfg.write_text('[models]\nenabled = ["lung-ct"]\nreview_required = ["lung_ct"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert err.value.problems == ["models.review_required: 'lung_ct' is not in models.enabled"]
    cfg.write_text('[models]\nenabled = ["lung-ct"]\nreview_required = ["lung-ct"]\n')
    assert load_settings(cfg, environ={}).models.review_required == ("lung-ct",)
