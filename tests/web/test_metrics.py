"""``/metrics``: Prometheus text whose counts add up across receiving processes.

A real ``dicom-node serve`` with two receiving processes gets a 300-instance study over twelve
parallel associations (so that the kernel gives both processes some): the scrape says 300
received and counts the associations, an instance without a Study Instance UID under its
reason, a request to the wrong AE title as rejected; the text parses, names no UID, AE title,
address or patient, and wants the configured bearer token. A second real node runs a study
through the whole flow (lung-ct, an ORU to a real MLLP listener): stage times, the model's
inference time and the delivery are counted. In-process: the ledger's gauges and the route's
place in the role table.
"""

from __future__ import annotations

import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.outbox import Kind, NewItem
from node.hl7.listener import MllpListener
from node.web.access import ACCESS
from node.web.app import create_app
from node.web.context import WebContext
from tests.conftest import REPO, NodeProcess, free_port
from tests.data import ct_series
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.web.conftest import PASSWORD, Api, make_job, web_settings

TOKEN_ENV = "DICOM_NODE_TEST_METRICS_TOKEN"
TOKEN = "scrape-token-5b1e0c"  # a throwaway token for a test node
CALLING = [f"METRICSCU{i:02d}" for i in range(12)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def _send_in_parallel(node: NodeProcess, files: list[Path]) -> None:
    chunks = [files[i::len(CALLING)] for i in range(len(CALLING))]
    with ThreadPoolExecutor(len(CALLING)) as pool:
        list(pool.map(lambda a: node.storescu(*a[1], calling=a[0]), zip(CALLING, chunks,
                                                                         strict=True)))


def _associate_and_abort(node: NodeProcess) -> None:
    ae = AE(ae_title="METRICSCU98")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assoc.abort()


def _wait_listening(node: NodeProcess, processes: int, timeout: float = 30.0) -> None:
    """Until ``processes`` sockets listen on the node's port (a receiving process started
    with ``spawn`` listens a few seconds after the main one answers C-ECHO)."""
    local = f"0100007F:{node.port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        if sum(1 for r in rows if r[1] == local and r[3] == "0A") >= processes:
            return
        time.sleep(0.1)
    pytest.fail(f"{processes} receiving processes did not listen within {timeout} s")


def _received_per_process(folder: Path) -> dict[str, float]:
    """instances_received_total per process, from each process's own file."""
    counts = {}
    for f in folder.glob("counter_*.db"):
        for key, val, _, _ in MmapedDict.read_all_values_from_file(str(f)):
            if '"dicom_node_instances_received_total"' in key:
                counts[f.stem] = val
    return counts


@pytest.mark.integration
def test_two_receiving_processes_add_up_and_nothing_identifying_is_in_the_text(
        node_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    files = ct_series(tmp_path / "ct", 300)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    broken = pydicom.dcmread(ct_series(tmp_path / "broken", 1)[0])
    del broken.StudyInstanceUID  # the node cannot file it: Cannot Understand
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    web_port = free_port()
    node = node_factory({"scp": {"receivers": 2},
                         "web": {"enabled": True, "port": web_port,
                                 "metrics_token_env": TOKEN_ENV}}).start()
    _wait_listening(node, 2)
    _send_in_parallel(node, files)
    node.storescu(tmp_path / "broken.dcm", check=False, calling="METRICSCU99")  # refused
    assert node.echo(called="NOT_THE_NODE").returncode != 0  # rejected: called AE title
    _associate_and_abort(node)

    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}
                          ).status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    per_process = _received_per_process(node.var_dir / "metrics")
    assert len([n for n in per_process.values() if n > 0]) == 2, per_process  # both took some
    assert sum(per_process.values()) == 300
    assert value(found, "dicom_node_instances_received_total") == 300
    assert value(found, "dicom_node_instances_rejected_total", reason="cannot_understand") == 1
    assert value(found, "dicom_node_instances_rejected_total", reason="disk_full") == 0
    # the twelve senders, the broken one, the aborted one (and the start-up checks' C-ECHOes)
    assert value(found, "dicom_node_associations_total", outcome="accepted") >= 14
    assert value(found, "dicom_node_associations_total", outcome="rejected") == 1
    assert value(found, "dicom_node_associations_total", outcome="aborted") == 1
    assert value(found, "dicom_node_studies", state="RECEIVING") == 1
    assert value(found, "dicom_node_outbox_items", kind="dicom", state="PENDING") == 0
    assert value(found, "dicom_node_spool_free_bytes") > 0
    for secret in [str(first.StudyInstanceUID), str(first.SeriesInstanceUID),
                   str(first.SOPInstanceUID), str(first.PatientName), str(first.PatientID),
                   *CALLING, "METRICSCU", "DICOM_NODE", "NOT_THE_NODE", "127.0.0.1", TOKEN]:
        assert secret not in r.text
    node.stop()
    assert "Traceback" not in node.log()


@pytest.mark.integration
def test_a_study_through_the_flow_counts_its_stages_its_inference_and_its_delivery(
        node_factory: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "lung-ct", models / "lung-ct")
    (tmp_path / "phantom").mkdir()
    files = write_ct_series(chest_phantom(slices=48, size=160).volume, tmp_path / "phantom")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    emr_port, web_port = free_port(), free_port()
    node = node_factory({
        "completion": {"quiet_period_s": 0.5},
        "models": {"dir": str(models), "enabled": ["lung-ct"], "device": "cpu"},
        "delivery": {"poll_interval_s": 0.2, "timeout_s": 5.0,
                     "hl7": [{"name": "emr", "host": "127.0.0.1", "port": emr_port}]},
        "web": {"enabled": True, "port": web_port},
    })
    with MllpListener(host="127.0.0.1", port=emr_port, mode="AA", out=tmp_path / "oru.hl7"):
        node.start()
        node.storescu(*files)
        node.wait_state(study_uid, "DONE", "FAILED", timeout=120)
    r = httpx.get(f"http://127.0.0.1:{web_port}/metrics")  # no token configured: no login
    assert r.status_code == 200
    found = samples(r.text)
    assert value(found, "dicom_node_studies", state="DONE") == 1
    assert value(found, "dicom_node_instances_received_total") == 48
    for stage in ("complete", "deidentify", "infer", "build", "deliver", "report"):
        assert value(found, "dicom_node_stage_seconds_count", stage=stage) >= 1, stage
        assert value(found, "dicom_node_stage_seconds_sum", stage=stage) > 0, stage
    assert value(found, "dicom_node_model_inference_seconds_count", model="lung-ct") == 1
    assert value(found, "dicom_node_model_inference_seconds_sum", model="lung-ct") > 0
    assert value(found, "dicom_node_deliveries_total", kind="hl7", outcome="delivered") == 1
    assert value(found, "dicom_node_deliveries_total", kind="dicom", outcome="delivered") == 0


# ------------------------------------------------------------------ in-process


def test_metrics_is_public_in_the_role_table_and_guarded_by_its_own_token() -> None:
    # a scraper has no session: the route is PUBLIC, and checks web.metrics_token_env itself
    assert ACCESS[("GET", "/metrics")] is None


def test_the_ledger_gauges_count_jobs_per_state_and_live_outbox_items(api: Api) -> None:
    make_job(api.ledger, "1.2.3")  # FAILED
    make_job(api.ledger, "1.2.4")
    built = make_job(api.ledger, "1.2.5", to=(JobState.COMPLETE,))
    with api.ledger.engine.begin() as conn:
        api.ctx.outbox.add(conn, built, 1, [
            NewItem("m", Kind.DICOM, "pacs", f"2.25.{i}", "seg", "x.dcm") for i in range(3)])
    r = api.client.get("/metrics")  # no token configured: no login either
    assert r.status_code == 200
    found = samples(r.text)
    assert value(found, "dicom_node_studies", state="FAILED") == 2
    assert value(found, "dicom_node_studies", state="COMPLETE") == 1
    assert value(found, "dicom_node_studies", state="DONE") == 0
    assert value(found, "dicom_node_outbox_items", kind="dicom", state="PENDING") == 3
    assert value(found, "dicom_node_outbox_items", kind="hl7", state="FAILED") == 0
    free = value(found, "dicom_node_spool_free_bytes")
    assert free > 0 and not math.isnan(free)
    for reason in ("disk_full", "cannot_understand", "bad_request", "internal_error"):
        assert ("dicom_node_instances_rejected_total", (("reason", reason),)) in found
    assert "1.2.3" not in r.text and "CT1" not in r.text


def test_with_a_token_configured_a_session_is_not_enough_and_an_unset_token_closes_the_route(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = WebContext.of(api.ledger, web_settings(tmp_path, metrics_token_env=TOKEN_ENV), {})
    ctx.accounts.add_user("scraper", Role.ADMIN, PASSWORD)
    with TestClient(create_app(ctx)) as client:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        assert client.get("/metrics").status_code == 503
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert client.get("/metrics").status_code == 401
        r = client.post("/api/v1/session", json={"name": "scraper", "password": PASSWORD})
        assert r.status_code == 200  # logged in as admin: still no token
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"}
                          ).status_code == 200
