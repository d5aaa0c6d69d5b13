"""A failed delivery retried from the Failures page arrives at Orthanc, in Chromium.

A job's outputs are built by the build stage's own writers (``tests.web.test_results.
processed``) over a real spool; the PACS is a real Orthanc that is down when the node first
delivers (its port closed), so the job's DICOM objects are dead letters and the job FAILED; the
HL7 EMR is a real MLLP listener. The Failures page lists the job; Orthanc is started; an admin
clicks Retry; the delivery stage runs as serve's delivery loop runs it, and Orthanc's REST API
holds every object the node built for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from node.core.jobstate import JobState
from node.core.outbox import ItemState, Kind
from node.core.settings import DeliverySettings, DicomDestination, Hl7Destination
from node.hl7.listener import MllpListener
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.flow import Flow, Stage
from node.web.server import WebServer
from tests.conftest import free_port
from tests.orthanc import OrthancProcess
from tests.web.console.conftest import log_in, page, shoot  # noqa: F401 - the fixture
from tests.web.spool_fixtures import spool_api
from tests.web.test_results import processed


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancProcess]:
    """Orthanc with its ports chosen but not started: the PACS is down."""
    server = OrthancProcess(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.mark.integration
def test_a_failed_delivery_retried_from_the_failures_page_arrives_at_orthanc(
        page: Page, pacs: OrthancProcess, tmp_path: Path) -> None:  # noqa: F811 - fixture
    (tmp_path / "node").mkdir()
    with MllpListener(mode="AA") as emr, spool_api(tmp_path / "node") as api:
        settings = dataclasses.replace(
            api.ctx.settings,
            web=dataclasses.replace(api.ctx.settings.web, port=free_port()),
            delivery=DeliverySettings(
                max_attempts=1, timeout_s=5,
                dicom=(DicomDestination("pacs", pacs.aet, "127.0.0.1", pacs.dicom_port),),
                hl7=(Hl7Destination("emr", "127.0.0.1", emr.port),)))
        object.__setattr__(api.ctx, "settings", settings)
        job, _ = processed(api)
        flow = Flow(api.ledger, settings,
                    Deliverer(api.ctx.outbox, Peers(settings, settings.var_path / "outbox")))
        assert flow.run_stage(Stage.DELIVER, job) == JobState.FAILED  # Orthanc is down
        sent = [i for i in api.ctx.outbox.items(job) if i.kind is Kind.DICOM]
        assert sent and {i.state for i in sent} == {ItemState.FAILED}
        server = WebServer(api.ctx)
        server.start()
        try:
            _retry_on_the_failures_page(page, server.url, job)
            pacs.start()  # the PACS is back before the delivery loop's next sweep
            # the delivery loop's next sweep: the objects to the PACS, then the ORU to the EMR
            assert flow.run_stage(Stage.DELIVER, job) == JobState.DELIVERED
            assert flow.run_stage(Stage.REPORT, job) == JobState.DONE  # no alert to wait for
            stored = {pacs.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                      for i in pacs.get("/instances")}
            built = {i.object_uid for i in api.ctx.outbox.items(job)
                     if i.kind is Kind.DICOM}
            assert built and built <= stored, (built, stored)
            page.goto(f"{server.url}/failures")
            expect(page.locator(f'a[href="/studies/{job}"]')).to_have_count(0)
            audit = [a for a in api.ctx.accounts.audit_page(limit=20) if a["action"] == "retry"]
            assert [(a["user"], a["job"], a["outcome"]) for a in audit] == [("admin", job, "ok")]
            assert len(emr.received) == 1
        finally:
            server.stop()


def _retry_on_the_failures_page(tab: Page, url: str, job: int) -> None:
    log_in(tab, url, "admin")
    tab.goto(f"{url}/failures")
    link = tab.locator(f'a[href="/studies/{job}"]')
    failed = tab.locator("section", has_text="Failed jobs").locator("tbody tr", has=link)
    expect(failed).to_contain_text("Failed")
    expect(failed).to_contain_text("no connection")
    dead = tab.locator("section", has_text="Failed deliveries").locator("tbody tr", has=link)
    expect(dead).to_have_count(4)  # the SR, the overlay SC, the PDF and the KOS
    for row in dead.all():
        assert "pacs" in row.inner_text() and "no connection" in row.inner_text()
    shoot(tab, "failures-before-retry")
    with tab.expect_navigation():
        failed.get_by_role("button", name="Retry").click()
    expect(tab.locator(".message.ok")).to_have_text("The job was queued again.")
    expect(tab.locator("section", has_text="Failed deliveries")).to_contain_text(
        "No failed deliveries.")
    shoot(tab, "failures-after-retry")
