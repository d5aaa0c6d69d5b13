"""Finding studies by a patient ID or an accession number without holding either in clear.

The ledger keeps each study's keyed pseudonyms (``studies.patient_key``, ``accession_key``),
written by the de-identification stage. A search computes the pseudonym of what was typed with
the node's de-identification key and matches it through its index: an exact match, as a
pseudonym cannot be matched in part. Patient names are not searchable: the node keeps no name,
clear or keyed. Only roles allowed to see identity search this way; each search is audited.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement

from node.core import db, patients
from node.core.keys import key_file_for, load_keys
from node.core.settings import Settings


def conditions(settings: Settings, *, patient_id: str, issuer: str,
               accession: str) -> list[ColumnElement[bool]]:
    """The studies' conditions for what was typed (none for empty fields). Raises the key's
    ConfigError when a field is given and the de-identification key cannot be read."""
    if not patient_id and not accession:
        return []
    keys = load_keys(key_file_for(settings.deid.key_file, settings.var_path))
    s = db.studies.c
    out: list[ColumnElement[bool]] = []
    if patient_id:
        patient = patients.patient_text(issuer, patient_id)
        out.append(s.patient_key == patients.patient_pseudonym(keys, patient))
    if accession:
        out.append(s.accession_key == patients.accession_pseudonym(keys, accession.strip()))
    return out
