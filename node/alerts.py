"""Radiologist notifications for high-risk results: a JSON POST (webhook) or an e-mail (SMTP).

The notification says what was found and where to look; by default it carries no patient
identifiers (chat and mail systems are outside the hospital's imaging systems): the job number,
the model and its findings. ``include_identifiers`` adds the accession number and the Study
Instance UID. Sending goes through the outbox like every other result.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

import requests

from node.config import EmailAlert, WebhookAlert
from node.models.summary import classification
from node.outbox import Outcome
from node.pipeline.results import Finding, Triage
from node.sr_writer.common import AI_DISCLAIMER, ResultContext

TRIAGE_RANK = {Triage.ROUTINE: 0, Triage.PRIORITY: 1, Triage.URGENT: 2}


def should_alert(triage: Triage, alert_on: str) -> bool:
    return TRIAGE_RANK[triage] >= TRIAGE_RANK[Triage(alert_on)]


def alert_payload(ctx: ResultContext, job_id: int, node_ae: str,
                  include_identifiers: bool) -> dict[str, Any]:
    r = ctx.result
    predicted = classification(r)
    payload: dict[str, Any] = {
        "event": "ai_result",
        "triage": r.triage.value,
        "job": job_id,
        "node": node_ae,
        "model": {"name": ctx.manifest.name, "version": ctx.manifest.version},
        "label": AI_DISCLAIMER,
        # a classifier's one finding (the predicted class) and the other classes' probabilities
        "finding": None if predicted is None else _class(predicted.finding),
        "other_classes": [] if predicted is None else [_class(f) for f in predicted.others],
        "measurements": [{"name": m.name, "value": round(m.value, 3), "unit": m.unit}
                         for m in r.measurements],
        "created": ctx.created.isoformat(),
    }
    if include_identifiers:
        src = ctx.sources[0]
        payload["study"] = {"accession_number": str(src.get("AccessionNumber", "") or ""),
                            "study_instance_uid": str(src.StudyInstanceUID)}
    return payload


def _class(f: Finding) -> dict[str, Any]:
    return {"code": f.concept.value, "scheme": f.concept.scheme, "meaning": f.concept.meaning,
            "probability": round(f.probability, 4)}


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


def send_email(target: EmailAlert, payload: dict[str, Any],
               timeout_s: float) -> tuple[Outcome, str]:
    subject, body = email_text(payload)
    msg = EmailMessage()
    msg["From"] = target.sender
    msg["To"] = ", ".join(target.recipients)
    msg["Subject"] = subject
    msg.set_content(body)
    where = f"e-mail {target.name} via {target.smtp_host}:{target.smtp_port}"
    try:
        with smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=timeout_s) as smtp:
            if target.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if target.username:
                smtp.login(target.username, os.environ.get(target.password_env, ""))
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


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=1, sort_keys=True) + "\n"
