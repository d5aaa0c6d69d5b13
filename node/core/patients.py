"""Which studies are one patient's: the keyed pseudonym on the study row (``patient_key``).

The de-identification stage knows the patient only by the pseudonym it gives the Patient ID
(``PAT`` and a keyed digest of the issuer and the ID): :func:`patient_key` picks it from the
pseudonyms of a study's instances, :func:`record` writes it in the transaction that moves the
job to DEIDENTIFIED. The ledger never holds the ID itself. :func:`earlier` reads a patient's
earlier studies with their current model runs in one query over ``ix_studies_patient``: its
cost is that of one index range, however many studies the ledger holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, literal, select, true, tuple_, update

from node.core import db
from node.core.keys import DeidKeys
from node.core.pseudonyms import Pseudonym

#: earlier studies the Study page lists at most
EARLIER_LIMIT = 10


def patient_key(pseudonyms: Iterable[Pseudonym]) -> str | None:
    """The study's patient key: the one pseudonym of a non-empty Patient ID among its
    instances; None when it has none (a blank ID would join every patient without one) or
    several (instances of different patients in one study: no one's history)."""
    keys = {p.pseudonym for p in pseudonyms if p.kind == "patient_id" and p.original.strip()}
    return keys.pop() if len(keys) == 1 else None


def accession_key(pseudonyms: Iterable[Pseudonym]) -> str | None:
    """The study's one accession pseudonym; None when it has none or several."""
    keys = {p.pseudonym for p in pseudonyms if p.kind == "accession" and p.original.strip()}
    return keys.pop() if len(keys) == 1 else None


def record(conn: Connection, study_id: int, key: str | None,
           accession: str | None = None) -> None:
    conn.execute(update(db.studies).where(db.studies.c.id == study_id)
                 .values(patient_key=key, accession_key=accession))


def patient_text(issuer: str, patient_id: str) -> str:
    """What de-identification keys a patient by: the issuer and the ID, stripped, joined."""
    return f"{issuer.strip()}|{patient_id.strip()}"


def patient_pseudonym(keys: DeidKeys, patient: str) -> str:
    """The pseudonym of the patient ``patient_text`` names: ``PAT`` and a keyed digest. The
    de-identification stage writes it as the Patient ID; a search by patient ID looks for it."""
    return "PAT" + keys.code("pid", patient, 13)


def accession_pseudonym(keys: DeidKeys, accession: str) -> str:
    """The pseudonym of an Accession Number, as de-identification writes it and a search by
    accession number looks for it."""
    return "A" + keys.code("acc", accession, 15)


@dataclass
class EarlierStudy:
    """One earlier study of the patient and its current model runs: (model, triage, result
    folder relative to var_dir)."""

    id: int
    state: str
    received_at: datetime
    modality: str | None
    runs: list[tuple[str, str | None, str]] = field(default_factory=list)


def earlier_query(study_id: int, limit: int = EARLIER_LIMIT) -> Select[Any]:
    """The one query of :func:`earlier`: the studies in one range of ``ix_studies_patient``,
    each with its current runs (``ix_results_study``) and one instance's modality."""
    s, r, i = db.studies.c, db.results.c, db.instances.c
    this = select(s.patient_key, s.received_at).where(s.id == study_id).subquery()
    modality = (select(i.modality).where(i.study_id == s.id).limit(1)
                .correlate(db.studies).scalar_subquery())
    before = (
        select(s.id, s.state, s.received_at, modality.label("modality"))
        .select_from(db.studies.join(this, and_(s.patient_key == this.c.patient_key)))
        .where(s.patient_key.is_not(None),
               tuple_(s.received_at, s.id) < tuple_(this.c.received_at, literal(study_id)))
        .order_by(s.received_at.desc(), s.id.desc()).limit(limit)).subquery()
    query = (select(before, r.model, r.triage, r.folder)
             .select_from(before.outerjoin(db.results, and_(r.study_id == before.c.id,
                                                            r.current == true())))
             .order_by(before.c.received_at.desc(), before.c.id.desc(), r.model))
    return query


def earlier(engine: Engine, study_id: int, *,
            limit: int = EARLIER_LIMIT) -> list[EarlierStudy]:
    """The patient's studies received before ``study_id`` (by receipt, then id), newest
    first, at most ``limit``; none when the study has no patient key."""
    out: dict[int, EarlierStudy] = {}
    with db.reader(engine) as conn:
        for row in conn.execute(earlier_query(study_id, limit)):
            found = out.setdefault(row.id, EarlierStudy(row.id, row.state, row.received_at,
                                                        row.modality))
            if row.model is not None:
                found.runs.append((row.model, row.triage, row.folder))
    return list(out.values())
