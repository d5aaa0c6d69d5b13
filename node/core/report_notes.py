"""Doctors' notes on a model run's PDF report, each one a new version of the report.

The build stage's report of a model run is version 1. A radiologist or clinician adds a note
to it; the note makes version 2, the next one version 3, and so on: each version is the
original report followed by a "Notes" section with every note so far (author, role, UTC time,
text), sent to the PACS as a new instance in the report's series
(``node.pipeline.build.report_version``). This module keeps the notes and their versions in
the ledger (``report_notes``) and says which version a new note gets. Notes are shown only to
the roles that read results; the audit trail names who wrote on which job and version, never
the words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from node.core import db
from node.core.ledger import iso_z

#: the longest note kept (characters): a few paragraphs, not a report of its own
NOTE_MAX = 2000
#: the original report, as the build stage made it
FIRST_VERSION = 1


@dataclass(frozen=True)
class Run:
    """The model run a note is written on (a ``results`` row)."""

    id: int
    study_id: int
    generation: int
    model: str
    model_version: str
    current: bool
    folder: str


@dataclass(frozen=True)
class Note:
    """One note and the report version it made."""

    id: int
    result_id: int
    study_id: int
    model: str
    generation: int
    version: int
    sop_instance_uid: str
    pdf_path: str
    user: str
    role: str
    text: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run_id": self.result_id, "job": self.study_id,
                "model": self.model, "generation": self.generation, "version": self.version,
                "sop_instance_uid": self.sop_instance_uid, "user": self.user,
                "role": self.role, "note": self.text, "created_at": iso_z(self.created_at)}


def clean(text: str) -> str:
    """The note as it is kept: browser line ends made plain, outer blanks removed."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def run(engine: Engine, study_id: int, result_id: int) -> Run | None:
    """Run ``result_id`` of job ``study_id`` (None: the job has no such run)."""
    r = db.results.c
    query = select(r.id, r.study_id, r.generation, r.model, r.model_version, r.current,
                   r.folder).where(r.id == result_id, r.study_id == study_id)
    with db.reader(engine) as conn:
        row = conn.execute(query).first()
    return None if row is None else Run(int(row.id), int(row.study_id), int(row.generation),
                                        str(row.model), str(row.model_version),
                                        bool(row.current), str(row.folder))


def _note(row: Any) -> Note:
    return Note(int(row.id), int(row.result_id), int(row.study_id), str(row.model),
                int(row.generation), int(row.version), str(row.sop_instance_uid),
                str(row.pdf_path), str(row.user_name), str(row.role), str(row.note),
                row.created_at)


def for_run(engine: Engine, result_id: int) -> list[Note]:
    """The run's notes, oldest (version 2) first."""
    n = db.report_notes.c
    with db.reader(engine) as conn:
        return [_note(row) for row in conn.execute(
            select(db.report_notes).where(n.result_id == result_id).order_by(n.version))]


def for_study(engine: Engine, study_id: int) -> list[Note]:
    """The job's notes on all its runs, oldest first (through ix_report_notes_study)."""
    n = db.report_notes.c
    with db.reader(engine) as conn:
        return [_note(row) for row in conn.execute(
            select(db.report_notes).where(n.study_id == study_id).order_by(n.id))]


def next_version(conn: Connection, result_id: int) -> int:
    """The version a new note on the run makes (the original report is version 1)."""
    n = db.report_notes.c
    last = conn.execute(select(func.max(n.version)).where(n.result_id == result_id)).scalar()
    return FIRST_VERSION + 1 if last is None else int(last) + 1


def add(conn: Connection, note: Note) -> int:
    """Store ``note`` inside the caller's transaction (the one that queues its version);
    its id. Two notes taking one version at once: the second fails on
    ``uq_report_notes_version`` (IntegrityError) and its transaction is rolled back."""
    return int(conn.execute(insert(db.report_notes).values(
        result_id=note.result_id, study_id=note.study_id, model=note.model,
        generation=note.generation, version=note.version,
        sop_instance_uid=note.sop_instance_uid, pdf_path=note.pdf_path, user_name=note.user,
        role=note.role, note=note.text, created_at=note.created_at,
    ).returning(db.report_notes.c.id)).scalar_one())
