"""Sending an alert's payload: a JSON POST (webhook) or an e-mail (SMTP), with the outcome.

The payload was built and kept in the outbox by the build stage (``node.pipeline.build.alerts``);
these functions send it and tell a transient failure (retried) from a permanent one.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any, Protocol

import requests

from node.core.outbox import Outcome
from node.core.settings import EmailAlert, WebhookAlert


def email_text(payload: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of the e-mail form of a payload."""
    model = payload["model"]
    subject = f"[{payload['triage']}] AI result {model['name']} {model['version']}, job " \
              f"#{payload['job']}"
    lines = [payload["label"], "", f"Triage: {payload['triage']}",
             f"Model: {model['name']} {model['version']}", f"Job: #{payload['job']} on "
             f"{payload['node']}"]
    if payload["finding"] is not None:
        found = payload["finding"]
        lines.append(f"Finding: {found['meaning']} (probability {found['probability']})")
        lines += [f"Probability of {f['meaning']}: {f['probability']}"
                  for f in payload["other_classes"]]
    lines += [f"Measurement: {m['name']} = {m['value']} {m['unit']}"
              for m in payload["measurements"]]
    if "study" in payload:
        lines += [f"Accession number: {payload['study']['accession_number']}",
                  f"Study Instance UID: {payload['study']['study_instance_uid']}"]
    lines += ["", "The results are in the patient's study in the PACS."]
    return subject, "\n".join(lines) + "\n"


def post_webhook(target: WebhookAlert, payload: dict[str, Any],
                 timeout_s: float) -> tuple[Outcome, str]:
    try:
        response = requests.post(target.url, json=payload, timeout=timeout_s)
    except requests.RequestException as exc:
        return "transient", f"webhook {target.name}: {type(exc).__name__}"
    code = response.status_code
    if 200 <= code < 300:
        return "delivered", f"HTTP {code}"
    if code in (408, 425, 429) or code >= 500:
        return "transient", f"webhook {target.name}: HTTP {code}"
    return "permanent", f"webhook {target.name}: HTTP {code}"


class SmtpServer(Protocol):
    """Where an e-mail goes out: an alert target's or the report e-mail's SMTP settings."""

    @property
    def smtp_host(self) -> str: ...
    @property
    def smtp_port(self) -> int: ...
    @property
    def starttls(self) -> bool: ...
    @property
    def username(self) -> str: ...
    @property
    def password_env(self) -> str: ...


def send_email(target: EmailAlert, payload: dict[str, Any],
               timeout_s: float) -> tuple[Outcome, str]:
    subject, body = email_text(payload)
    msg = EmailMessage()
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.recipients)
    msg["Subject"] = subject
    msg.set_content(body)
    return smtp_send(target, msg, timeout_s,
                     f"e-mail {target.name} via {target.smtp_host}:{target.smtp_port}")


def smtp_send(server: SmtpServer, msg: EmailMessage, timeout_s: float,
              where: str) -> tuple[Outcome, str]:
    """Send ``msg`` through ``server``; the outcome, naming ``where`` and the error's type
    (never an address: the SMTP server's reply may quote one)."""
    try:
        with smtplib.SMTP(server.smtp_host, server.smtp_port, timeout=timeout_s) as smtp:
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.username:
                smtp.login(server.username, os.environ.get(server.password_env, ""))
            smtp.send_message(msg)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
            smtplib.SMTPAuthenticationError) as exc:
        return "permanent", f"{where}: refused ({type(exc).__name__})"
    except smtplib.SMTPResponseException as exc:
        kind: Outcome = "permanent" if 500 <= exc.smtp_code < 600 else "transient"
        return kind, f"{where}: SMTP {exc.smtp_code}"
    except (smtplib.SMTPException, OSError) as exc:
        return "transient", f"{where}: {type(exc).__name__}"
    return "delivered", "accepted by the SMTP server"
