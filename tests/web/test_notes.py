"""A doctor's note makes a new version of the PDF report, and "E-mail this report", against
real peers: Orthanc stores the version as a new instance in the report's series (dciodvfy
clean, its text read back by pdftotext), an SMTP server (aiosmtpd) receives the e-mail with
the PDF; nothing is sent twice; roles, CSRF and refusals. Jobs are built by the build stage's
own writers (``tests.web.test_results.processed``) over a real spool."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from node.core.accounts import Role
from node.core.jobstate import JobState
from node.core.outbox import ItemState, Kind
from node.core.settings import DeliverySettings, DicomDestination, ReportMail
from node.pipeline.build import report_version
from node.pipeline.deliver.senders import Peers
from node.pipeline.deliver.stage import Deliverer
from node.pipeline.flow import Flow
from tests.conftest import free_port
from tests.orthanc import OrthancProcess
from tests.web.console.conftest import SHOTS
from tests.web.spool_fixtures import PATIENT, SpoolApi, spool_api
from tests.web.test_results import processed

NOTE = "Glioma agreed on MR review.\nPlease book a follow-up MR in 3 months. <b>not bold</b>"
TO = "dr.referrer@clinic.example.org"


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Message]]]:
    from aiosmtpd.controller import Controller

    messages: list[Message] = []

    class Keep:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, messages
    controller.stop()


def _flow(api: SpoolApi) -> Flow:
    settings = api.ctx.settings
    return Flow(api.ledger, settings,
                Deliverer(api.ctx.outbox, Peers(settings, settings.var_path / "outbox")))


def _done(api: SpoolApi, flow: Flow, job: int) -> None:
    """The job as the flow leaves it: its ORU acknowledged (no EMR here), DONE."""
    for item in api.ctx.outbox.items(job, state=ItemState.PENDING):
        api.ctx.outbox.record(item, "delivered", "test", flow.deliverer.policy)
    for state in (JobState.DELIVERED, JobState.REPORTED, JobState.DONE):
        api.ledger.transition(job, state, reason="test")


def _run_id(api: SpoolApi, job: int) -> int:
    return int(api.client.get(f"/api/v1/studies/{job}/results").json()["items"][0]["id"])


def _text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "v.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.integration
def test_a_note_becomes_a_new_report_instance_in_the_same_series_sent_once(
        tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc").start()
    delivery = DeliverySettings(dicom=(DicomDestination(
        "pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port),))
    (tmp_path / "node").mkdir()
    try:
        with spool_api(tmp_path / "node", delivery=delivery) as api:
            job, _ = processed(api)
            flow = _flow(api)
            assert flow.deliverer.deliver_job(api.ledger.study_by_id(job)) is not None
            _done(api, flow, job)  # the original results are in the PACS, the job is DONE
            api.login(Role.CLINICIAN)
            run_id = _run_id(api, job)
            csrf = api.login(Role.CLINICIAN)
            r = api.client.post(f"/api/v1/studies/{job}/results/{run_id}/notes",
                                json={"note": NOTE}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            note = r.json()
            assert (note["version"], note["user"], note["role"], note["new"]) == \
                (2, "clinician", "clinician", True)

            pdf = api.client.get(note["href"])
            assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
            text = _text(pdf.content, tmp_path)
            when = note["created_at"][:16].replace("T", " ")
            assert "AI result report" in text and "Notes" in text  # the report, then notes
            assert f"clinician (clinician), {when} UTC" in text
            assert "Please book a follow-up MR in 3 months. <b>not bold</b>" in text
            assert "Report version 2" in text and "AI-generated result" in text
            SHOTS.mkdir(parents=True, exist_ok=True)  # the notes page, for people to look at
            subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "2", "-l", "2",
                            "-singlefile", str(tmp_path / "v.pdf"), str(SHOTS / "report-v2")],
                           check=True)

            assert flow.deliver_late() == 1  # the DONE job's new version goes out alone
            assert api.ledger.study_by_id(job).state == JobState.DONE
            version = [i for i in api.ctx.outbox.items(job) if i.label == "report-pdf-v2"]
            assert [i.state for i in version] == [ItemState.DELIVERED]
            instance = api.ctx.settings.var_path / "outbox" / version[0].path
            check = subprocess.run(["dciodvfy", str(instance)], capture_output=True, text=True)
            assert "Error" not in check.stderr, check.stderr

            pdf_series = [s for s in (orthanc.get(f"/series/{x}") for x in
                                      orthanc.get("/series"))
                          if s["MainDicomTags"].get("Modality") == "DOC"]
            assert len(pdf_series) == 1  # the version is in the original report's series
            tags = [orthanc.get(f"/instances/{i}/simplified-tags")
                    for i in pdf_series[0]["Instances"]]
            assert sorted(int(t["InstanceNumber"]) for t in tags) == [1, 2]
            v2 = next(t for t in tags if t["InstanceNumber"] == "2")
            assert v2["SOPInstanceUID"] == note["sop_instance_uid"]
            assert v2["PatientName"] == PATIENT["name"]  # re-identified as the original
            assert "with notes" in v2["DocumentTitle"]

            # a retry sends nothing twice: the sweep again, the same note again
            assert flow.deliver_late() == 0
            again = api.client.post(f"/api/v1/studies/{job}/results/{run_id}/notes",
                                    json={"note": NOTE}, headers={"X-CSRF-Token": csrf})
            assert again.status_code == 201 and again.json()["new"] is False
            assert again.json()["version"] == 2
            assert flow.deliver_late() == 0
            assert len(orthanc.get(f"/series/{pdf_series[0]['ID']}")["Instances"]) == 2
            audit = [a for a in api.ctx.accounts.audit_page(limit=50)
                     if a["action"] == "report-note"]
            assert [(a["user"], a["job"], a["outcome"]) for a in audit] == \
                [("clinician", job, "ok")]
            assert "follow-up" not in audit[0]["detail"]  # the words stay out of the trail
    finally:
        orthanc.stop()


def test_email_this_report_sends_the_latest_version_once_without_identity(
        tmp_path: Path, smtp: tuple[int, list[Message]]) -> None:
    port, mails = smtp
    delivery = DeliverySettings(max_attempts=2, retry_base_s=0.01, retry_cap_s=0.01,
                                report_mail=ReportMail(smtp_host="127.0.0.1", smtp_port=port,
                                                       sender="node@hospital.example.org"))
    with spool_api(tmp_path, delivery=delivery) as api:
        job, _ = processed(api)
        flow = _flow(api)
        csrf = api.login(Role.RADIOLOGIST)
        run_id = _run_id(api, job)
        headers = {"X-CSRF-Token": csrf}
        base = f"/api/v1/studies/{job}/results/{run_id}"
        assert api.client.post(f"{base}/notes", json={"note": "Agreed."},
                               headers=headers).status_code == 201
        for bad in ("a@b.c, d@e.f", "Dr X <x@clinic.org>", "nobody", "x@localhost"):
            r = api.client.post(f"{base}/email", json={"to": bad}, headers=headers)
            assert r.status_code == 409 and "one e-mail address" in r.json()["detail"], bad
        r = api.client.post(f"{base}/email", json={"to": TO}, headers=headers)
        assert r.status_code == 202 and r.json() == \
            {"version": 2, "domain": "clinic.example.org", "sending": True}
        assert flow.deliver_late() == 1
        assert api.ledger.study_by_id(job).state == JobState.BUILT  # the job is not moved
        (mail,) = mails
        assert mail["To"] == TO and mail["From"] == "node@hospital.example.org"
        subject, body = str(mail["Subject"]), ""
        attachments = []
        for part in mail.walk():
            if part.get_content_type() == "text/plain":
                body = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
            elif part.get_content_type() == "application/pdf":
                attachments.append((part.get_filename(), part.get_payload(decode=True)))
        assert subject == f"AI report: brain-tumor-demo {api.ledger.study_by_id(job).id}" \
            or subject.startswith("AI report: brain-tumor-demo ")
        assert "study of 2026-12-01" in subject and f"job #{job}" in subject
        assert "AI-generated result" in body and "needs review" in body
        for value in (PATIENT["name"], "Testpatient", PATIENT["patient_id"],
                      PATIENT["accession_number"]):
            assert value not in subject and value not in body
        ((name, data),) = attachments
        assert name == f"ai-report-job{job}-brain-tumor-demo-v2.pdf"
        assert "Agreed." in _text(data, tmp_path)  # the latest version, with its note

        # asked again: the same version to the same address is not sent twice
        r = api.client.post(f"{base}/email", json={"to": TO}, headers=headers)
        assert r.json()["sending"] is False
        assert flow.deliver_late() == 0 and len(mails) == 1
        audit = [a for a in api.ctx.accounts.audit_page(limit=50)
                 if a["action"] == "report-mail"]
        assert len(audit) == 6 and {a["user"] for a in audit} == {"radiologist"}
        assert all(TO not in a["detail"] and "dr.referrer" not in a["detail"] for a in audit)
        assert sum("clinic.example.org" in a["detail"] for a in audit) == 2

        # an SMTP server that is down: retried, then a dead letter; the job stays as it was
        other = "second@clinic.example.org"
        assert api.client.post(f"{base}/email", json={"to": other},
                               headers=headers).status_code == 202
        blocked = DeliverySettings(max_attempts=2, retry_base_s=0.01, retry_cap_s=0.01,
                                   report_mail=ReportMail(smtp_host="127.0.0.1",
                                                          smtp_port=free_port(),
                                                          sender="node@hospital.example.org"))
        down = Deliverer(api.ctx.outbox, Peers(
            type(api.ctx.settings)(node=api.ctx.settings.node, delivery=blocked),
            api.ctx.settings.var_path / "outbox"))
        assert down.deliver_late() == 1
        time.sleep(0.02)  # the back-off (10 ms)
        assert down.deliver_late() == 1
        (dead,) = [i for i in api.ctx.outbox.items(job) if i.kind == Kind.REPORT_MAIL
                   and i.state == ItemState.FAILED]
        assert dead.attempts == 2 and "second" not in (dead.last_error or "")
        assert api.ledger.study_by_id(job).state == JobState.BUILT
        # an operator's retry re-queues the dead letter, the job stays; it then goes out
        csrf = api.login(Role.OPERATOR)
        r = api.client.post(f"/api/v1/studies/{job}/retry", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and "stays BUILT" in r.json()["result"], r.text
        assert flow.deliver_late() == 1 and len(mails) == 2 and mails[1]["To"] == other


def test_roles_csrf_and_a_node_without_report_email(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with spool_api(tmp_path) as api:
        job, _ = processed(api)
        api.login(Role.CLINICIAN)
        run_id = _run_id(api, job)
        base = f"/api/v1/studies/{job}/results/{run_id}"
        for role in (Role.OPERATOR, Role.ADMIN):
            csrf = api.login(role)
            r = api.client.post(f"{base}/notes", json={"note": "x"},
                                headers={"X-CSRF-Token": csrf})
            assert r.status_code == 403, role
        assert api.client.get(f"/api/v1/studies/{job}/notes").status_code == 200  # admin
        api.login(Role.OPERATOR)
        assert api.client.get(f"/api/v1/studies/{job}/notes").status_code == 403
        csrf = api.login(Role.CLINICIAN)
        assert api.client.post(f"{base}/notes", json={"note": "x"}).status_code == 403  # no CSRF
        # the console's form: no token, no note
        r = api.client.post(f"/studies/{job}/results/{run_id}/notes", data={"note": "x"},
                            follow_redirects=False)
        assert r.status_code == 403
        r = api.client.post(f"/studies/{job}/results/{run_id}/notes",
                            data={"note": "x" * 2001, "csrf_token": csrf},
                            follow_redirects=False)
        assert r.status_code == 303 and "done=note-refused" in r.headers["location"]
        # report e-mail not configured: no form on the page, and a clear refusal
        r = api.client.post(f"{base}/email", json={"to": TO}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 409 and "not configured" in r.json()["detail"]
        page = api.client.get(f"/studies/{job}").text
        assert f'action="/studies/{job}/results/{run_id}/notes"' in page
        assert "/email" not in page
        assert api.client.get(f"/api/v1/studies/{job}/notes").json()["items"] == []
        # two notes taking one version at once: the second is refused, its files removed
        headers = {"X-CSRF-Token": csrf}
        assert api.client.post(f"{base}/notes", json={"note": "first"},
                               headers=headers).status_code == 201
        monkeypatch.setattr(report_version.report_notes, "for_run", lambda *_: [])
        r = api.client.post(f"{base}/notes", json={"note": "second"}, headers=headers)
        assert r.status_code == 409 and "same moment" in r.json()["detail"]
        made = sorted(p.name for p in (api.ctx.settings.var_path / "outbox").rglob("report-v*"))
        assert len(made) == 2 and made[0].startswith("report-v2-")  # the first note's pdf, dcm
