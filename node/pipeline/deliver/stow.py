"""A DICOMweb STOW-RS client (PS3.18 10.5): result files POSTed to a studies resource.

One ``multipart/related; type="application/dicom"`` request carries a job's objects, each
part the Part 10 file as it is on disk. The response's Store Instances Response Module says
per instance whether it was stored (Referenced SOP Sequence, with a Warning Reason when stored
with a warning) or not (Failed SOP Sequence, with a Failure Reason); HTTP errors without that
body apply to every instance. Outcomes name status codes and reasons, never patient data.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

from node.core import at_rest
from node.core.outbox import Outcome
from node.core.settings import StowDestination

REFERENCED, FAILED, SOP_UID, FAILURE_REASON = "00081199", "00081198", "00081155", "00081197"
#: Failure Reasons that are worth retrying: out of resources (PS3.18 table 10.5.3-2 / PS3.4)
TRANSIENT_REASONS = range(0xA700, 0xA800)


def _body(boundary: str, files: Sequence[Path]) -> Iterator[bytes]:
    for path in files:
        yield (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
        yield at_rest.read_bytes(path)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def stow(target: StowDestination, files: Sequence[Path], uids: Sequence[str],
         timeout_s: float) -> list[tuple[Outcome, str]]:
    """POST ``files`` (whose SOP Instance UIDs are ``uids``); one outcome per file, in order."""
    boundary = "dicom-node-" + secrets.token_hex(12)
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}",
               "Accept": "application/dicom+json"}
    auth = ((target.username, os.environ.get(target.password_env, ""))
            if target.username else None)
    try:
        response = requests.post(target.url, data=b"".join(_body(boundary, files)),
                                 headers=headers, auth=auth, timeout=timeout_s,
                                 verify=target.ca_certificates or True)
    except requests.RequestException as exc:
        return [("transient", f"{target.name}: {type(exc).__name__}")] * len(files)
    return outcomes(target.name, response.status_code, _json(response), uids)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def outcomes(name: str, status: int, body: dict[str, Any],
             uids: Sequence[str]) -> list[tuple[Outcome, str]]:
    """Map a STOW-RS response onto one outcome per instance (pure)."""
    stored = {_uid(item) for item in _items(body, REFERENCED)}
    failed = {_uid(item): _reason(item) for item in _items(body, FAILED)}
    out: list[tuple[Outcome, str]] = []
    for uid in uids:
        if uid in stored:
            out.append(("delivered", f"{name}: stored (HTTP {status})"))
        elif uid in failed:
            reason = failed[uid]
            kind: Outcome = "transient" if reason in TRANSIENT_REASONS else "permanent"
            out.append((kind, f"{name}: failed, reason 0x{reason:04X} (HTTP {status})"))
        elif 200 <= status < 300 and not stored and not failed:
            out.append(("delivered", f"{name}: HTTP {status}"))
        else:
            out.append((_http_outcome(status), f"{name}: not stored (HTTP {status})"))
    return out


def _http_outcome(status: int) -> Outcome:
    if status in (408, 425, 429) or status >= 500 or 200 <= status < 300:
        return "transient"
    return "permanent"


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag) or {}
    return [i for i in element.get("Value", []) if isinstance(i, dict)]


def _uid(item: dict[str, Any]) -> str:
    values = (item.get(SOP_UID) or {}).get("Value") or [""]
    return str(values[0])


def _reason(item: dict[str, Any]) -> int:
    values = (item.get(FAILURE_REASON) or {}).get("Value") or [0x0110]
    return int(values[0])
