""""E-mail this report": a user sends the latest version of a run's PDF report to one address.

Queued (:func:`queue_report_mail`, called by the API and the console) as an outbox item of
kind ``report-mail``: a JSON file beside the report (under ``<var_dir>/outbox/``, encrypted at
rest where files are) names the address, the subject, the body and the PDF; the outbox row
names only the address's domain (``mail@<domain>``) and the version. The late-delivery sweep
sends it (:func:`send_report_mail`) through the SMTP server of ``delivery.report_mail``, with
the outbox's retries and dead letter; a failed e-mail never fails the job.

By default neither subject nor body names the patient: "AI report", the model, the study date
and the job number (``delivery.report_mail.include_identity`` adds the patient's name and the
accession number). The attached PDF is the report itself and names the patient, as the report
does for everyone who may download it. The same version to the same address is one item: sent
again after it was delivered, nothing goes out twice; after it failed, it is queued again.
The audit trail names who, which job and version, and the address's domain, never the address.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pydicom.valuerep import PersonName
from sqlalchemy import Engine

from node.core import at_rest, audit, report_notes
from node.core.contract import AI_DISCLAIMER
from node.core.errors import NodeError, PermanentError
from node.core.jobstate import JobState
from node.core.ledger import StudyRow
from node.core.outbox import ItemState, Kind, NewItem, Outbox, OutboxItem, Outcome
from node.core.report_notes import Run
from node.core.settings import ReportMail, Settings
from node.pipeline.build.report_version import (
    REPORT_INSTANCE,
    REPORT_PDF,
    Author,
    outputs_folder,
)
from node.pipeline.deliver.notify import smtp_send

#: the longest address taken (RFC 5321: 254 characters in a path)
ADDRESS_MAX = 254
#: one address: a plain local part, @, a domain with at least one dot; no name, no list
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
                      r"(?=.{4,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
#: a report leaves the node by e-mail only once it has passed the review gate
MAIL_STATES = frozenset({JobState.BUILT, JobState.DELIVERED, JobState.REPORTED,
                         JobState.DONE})


class MailRefused(NodeError):
    """The report cannot be e-mailed now; the message says why, in the node's own words."""


@dataclass(frozen=True)
class Queued:
    """What was asked: the report version, the address's domain, and whether it goes out
    (False: that version was already delivered to that address, nothing is sent twice)."""

    version: int
    domain: str
    sending: bool


def valid_address(text: str) -> str | None:
    """The one address in ``text`` (blanks around it removed), or None if it is not one."""
    address = text.strip()
    if len(address) > ADDRESS_MAX or not _ADDRESS.fullmatch(address):
        return None
    return address


def configured(settings: Settings) -> bool:
    return bool(settings.delivery.report_mail.smtp_host)


def queue_report_mail(engine: Engine, outbox: Outbox, settings: Settings, study: StudyRow,
                      run: Run, author: Author, to: str, now: datetime) -> Queued:
    """Queue the run's latest report version to ``to``; audited."""
    address = valid_address(to)
    _check(settings, study, run, address)
    assert address is not None
    notes = report_notes.for_run(engine, run.id)
    version = notes[-1].version if notes else report_notes.FIRST_VERSION
    folder = outputs_folder(settings.var_path, run.folder)
    pdf = notes[-1].pdf_path if notes else str(
        (folder / REPORT_PDF).relative_to(settings.var_path / "outbox"))
    domain = address.rpartition("@")[2].lower()
    key = hashlib.sha256(f"{study.study_instance_uid}|{run.generation}|{run.model}|{version}|"
                         f"{address.lower()}".encode()).hexdigest()
    object_uid = f"mail-{key[:40]}"
    destination = f"mail@{domain}"[:32]
    before = [i for i in outbox.items(study.id, run.generation)
              if (i.destination, i.object_uid) == (destination, object_uid)]
    delivered = any(i.state == ItemState.DELIVERED for i in before)
    if not delivered:  # the payload written and fsynced before its row is committed
        path = _payload(settings, study, run, (version, pdf), folder, author, address, key)
        with engine.begin() as conn:
            outbox.add(conn, study.id, run.generation, [NewItem(
                run.model, Kind.REPORT_MAIL, destination, object_uid, f"e-mail v{version}",
                str(path.relative_to(settings.var_path / "outbox")))])
    did = ("not sent again: already delivered" if delivered
           else f"queued again (it was {before[0].state.value.lower()})" if before else "queued")
    audit.record(engine, audit.Entry(
        action="report-mail", outcome="ok", user=author.name, role=author.role,
        address=author.address, study_id=study.id, at=now,
        detail=f"run #{run.id} ({run.model} g{run.generation}): report version {version} "
               f"{did} to an address at {domain}"))
    return Queued(version, domain, sending=not delivered)


def _payload(settings: Settings, study: StudyRow, run: Run, latest: tuple[int, str],
             folder: Path, author: Author, address: str, key: str) -> Path:
    """The item's file: address, subject, body and the PDF's path (``latest``: the version
    and its PDF, relative to the outbox folder)."""
    version, pdf = latest
    subject, body = _text(settings, study, run, version, folder, author)
    payload = {"to": address, "subject": subject, "body": body,
               "pdf": pdf,
               "filename": f"ai-report-job{study.id}-{run.model}-v{version}.pdf"}
    path = folder / f"mail-{key[:16]}.json"
    at_rest.write_bytes(path, json.dumps(payload).encode("utf-8"))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _check(settings: Settings, study: StudyRow, run: Run, address: str | None) -> None:
    if not configured(settings):
        raise MailRefused("report e-mail is not configured (delivery.report_mail.smtp_host)")
    if address is None:
        raise MailRefused("give one e-mail address (name@domain), nothing else")
    if study.state not in MAIL_STATES:
        raise MailRefused(f"job #{study.id} is {study.state}: a report leaves the node only "
                          "after it was built and passed any review")
    if not run.current or run.generation != study.generation:
        raise MailRefused(f"run #{run.id} is an earlier run of job #{study.id}")


def _text(settings: Settings, study: StudyRow, run: Run, version: int,
          folder: Path, author: Author) -> tuple[str, str]:
    """Subject and body; the patient named only where ``include_identity`` says so."""
    try:
        original = at_rest.dcmread(folder / REPORT_INSTANCE, stop_before_pixels=True,
                                   specific_tags=["StudyDate", "PatientName", "AccessionNumber"])
    except (OSError, PermanentError) as exc:
        raise MailRefused(f"the report of run #{run.id} is not on disk "
                          f"({type(exc).__name__})") from None
    raw = str(original.get("StudyDate", "") or "")
    day = f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 else "an unstated date"
    model = f"{run.model} {run.model_version}"
    subject = f"AI report: {model}, study of {day}, job #{study.id}"
    lines = [f"Attached: the AI result report of job #{study.id} on "
             f"{settings.node.ae_title}, version {version}"
             + (" (with notes)." if version > report_notes.FIRST_VERSION else "."),
             "", f"{AI_DISCLAIMER}: it needs review.", f"Model: {model}",
             f"Study date: {day}"]
    if settings.delivery.report_mail.include_identity:
        name = str(PersonName(str(original.get("PatientName", "") or "")))
        accession = str(original.get("AccessionNumber", "") or "")
        subject = f"AI report: {name}, accession {accession}, study of {day}"
        lines += [f"Patient: {name}", f"Accession number: {accession}"]
    lines += ["", f"Sent by {author.name} ({author.role}) from the {settings.node.ae_title} "
              "console.", "The attachment names the patient: keep it as your hospital's "
              "rules for patient data say."]
    return subject, "\n".join(lines) + "\n"


def send_report_mail(server: ReportMail, item: OutboxItem, root: Path,
                     timeout_s: float) -> tuple[Outcome, str]:
    """One report e-mail: its payload read, the PDF attached, sent through ``server``."""
    try:
        payload: dict[str, Any] = json.loads(at_rest.read_bytes(root / item.path))
        pdf = at_rest.read_bytes(root / payload["pdf"])
    except (ValueError, KeyError, TypeError, PermanentError) as exc:
        return "permanent", f"report e-mail file unreadable ({type(exc).__name__})"
    msg = EmailMessage()
    msg["From"] = server.sender
    msg["To"] = payload["to"]
    msg["Subject"] = payload["subject"]
    msg.set_content(payload["body"])
    msg.add_attachment(pdf, maintype="application", subtype="pdf",
                       filename=payload["filename"])
    return smtp_send(server, msg, timeout_s,
                     f"report e-mail via {server.smtp_host}:{server.smtp_port}")
