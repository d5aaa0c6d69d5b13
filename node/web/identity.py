"""Who the patient of a job is, for the roles that treat patients, and for no one else.

``GET /api/v1/studies/{id}`` adds ``patient`` (name, patient ID, birth date, accession number,
study date and description) only for ``radiologist`` and ``clinician``: they read results to
care for the patient and must know whose they are. ``admin`` and ``operator`` see none: running
the node (queues, retries, the quarantine, users, settings) needs job ids, UIDs and states, not
who the patient is, and the fewer people who see identity the less a privacy officer has to
answer for. Lists never show identity (one header read per row would make them slow, and a list
is where identity would leak in bulk). Each view is an audit record (``view-identity``).

The ledger keeps no identity. It is read here from one of the original instances the node
keeps in its spool (the header only, ``stop_before_pixels``, decrypted when stored encrypted);
when the spool no longer has them, from the encrypted pseudonym map, by the pseudonyms in the
job's de-identified copy (name, patient ID and accession only: the copy's dates are shifted).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from node.core import at_rest, db
from node.core.accounts import Role
from node.core.errors import ConfigError, PermanentError
from node.core.keys import key_file_for, load_keys
from node.core.ledger import StudyRow
from node.core.pseudonyms import PseudonymStore
from node.core.spool import Spool, open_spool
from node.web.context import WebContext

log = logging.getLogger("node.web")

#: the roles that see the patient's identity
IDENTITY_ROLES = frozenset({Role.RADIOLOGIST, Role.CLINICIAN})
#: instances of the job tried, in order, before the pseudonym map is asked
_TRIES = 3
_READ_ERRORS = (OSError, InvalidDicomError, PermanentError, ValueError, EOFError)


def _text(value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


def _from_header(ds: Dataset, source: str) -> dict[str, str | None]:
    return {
        "name": _text(ds.get("PatientName")),
        "patient_id": _text(ds.get("PatientID")),
        "birth_date": _text(ds.get("PatientBirthDate")),
        "accession_number": _text(ds.get("AccessionNumber")),
        "study_date": _text(ds.get("StudyDate")),
        "study_description": _text(ds.get("StudyDescription")),
        "source": source,
    }


def _first_paths(ctx: WebContext, job: int) -> list[str]:
    i = db.instances.c
    query = select(i.path).where(i.study_id == job).order_by(i.id).limit(_TRIES)
    with db.reader(ctx.ledger.engine) as conn:
        return [str(p) for p in conn.execute(query).scalars()]


def _from_spool(ctx: WebContext, spool: Spool, job: int) -> dict[str, str | None] | None:
    for relative in _first_paths(ctx, job):
        try:
            ds = spool.open_dataset(relative, stop_before_pixels=True)
        except _READ_ERRORS:
            continue
        return _from_header(ds, "instance")
    return None


def _from_map(ctx: WebContext, spool: Spool, row: StudyRow) -> dict[str, str | None] | None:
    folder = spool.deid_dir(row.study_instance_uid)
    copy = next(iter(sorted(folder.glob("*.dcm"))), None) if folder.is_dir() else None
    if copy is None:
        return None
    try:
        ds = at_rest.dcmread(Path(copy), stop_before_pixels=True)
    except _READ_ERRORS:
        return None
    pseudonyms = {k: _text(ds.get(k)) for k in ("PatientName", "PatientID", "AccessionNumber")}
    keys = load_keys(key_file_for(ctx.settings.deid.key_file, ctx.settings.var_path))
    originals = PseudonymStore(ctx.ledger.engine, keys).originals(
        p for p in pseudonyms.values() if p)

    def original(keyword: str) -> str | None:
        pseudonym = pseudonyms[keyword]
        return originals.get(pseudonym) if pseudonym else None

    return {"name": original("PatientName"), "patient_id": original("PatientID"),
            "birth_date": None, "accession_number": original("AccessionNumber"),
            "study_date": None, "study_description": None, "source": "pseudonym map"}


def patient(ctx: WebContext, row: StudyRow) -> dict[str, str | None] | None:
    """The job's patient identity, or None when the node cannot tell (no key, no file)."""
    try:
        spool = open_spool(ctx.settings)
        return _from_spool(ctx, spool, row.id) or _from_map(ctx, spool, row)
    except (ConfigError, PermanentError) as exc:
        log.warning("the identity of job #%d cannot be read: %s", row.id, type(exc).__name__)
        return None
