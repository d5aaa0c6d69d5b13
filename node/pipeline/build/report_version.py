"""A doctor's note on a report becomes a new version of it, queued to the PACS.

Called by the API and the console (``node.web.notes``). The note is checked (not empty, at
most ``NOTE_MAX`` characters, on the current run of a job whose report exists), the version
is built from the run's original report (``report.pdf`` and ``report-pdf.dcm`` in the run's
outputs folder, as the build stage wrote them: they carry the patient's identity) and every
note so far (``node.sr_writer.report_version``), its two files are written and fsynced beside
the original, and then ONE transaction stores the note and queues the new instance to every
PACS destination (C-STORE and STOW-RS): a committed row always has its files.

The SOP Instance UID comes from the job, model and version, so a retried request, or a
rebuilt version, never makes a second instance of one version. The same note sent again by the
same user right after (a form submitted twice) makes no new version: its deliveries are queued
again where they had failed. Delivery is the outbox's: with the job's results while the job
is being delivered, and by the late-delivery sweep once it is DONE
(``node.pipeline.deliver.stage.Deliverer.deliver_late``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from node.core import at_rest, audit, report_notes
from node.core.contract import deterministic_uid
from node.core.errors import NodeError, PermanentError
from node.core.jobstate import JobState
from node.core.ledger import StudyRow
from node.core.outbox import Kind, NewItem, Outbox
from node.core.report_notes import NOTE_MAX, Note, Run
from node.core.settings import Settings
from node.sr_writer.report_version import (
    SignedNote,
    build_version_instance,
    build_version_pdf,
)

#: the build stage's files of a run's report, in the run's outputs folder
REPORT_PDF, REPORT_INSTANCE = "report.pdf", "report-pdf.dcm"
#: the job states in which a run's report exists and may take a note: built (waiting for
#: review, being delivered, delivered) or failed in delivery
NOTE_STATES = frozenset({JobState.AWAITING_REVIEW, JobState.BUILT, JobState.DELIVERED,
                         JobState.REPORTED, JobState.DONE, JobState.FAILED})


class NoteRefused(NodeError):
    """The note cannot make a version now; the message says why, in the node's own words."""


@dataclass(frozen=True)
class Author:
    """Who writes the note: account name, role, and the address the request came from."""

    name: str
    role: str
    address: str


def outputs_folder(var_dir: Path, result_folder: str) -> Path:
    """A run's outputs folder from its result folder (relative to var_dir): the build stage
    writes ``outbox/<study key>/g<generation>/<model>/`` for ``results/<study key>/...``."""
    return var_dir / PurePosixPath("outbox", *PurePosixPath(result_folder).parts[1:])


def instance_path(pdf_path: str) -> str:
    """A version's Encapsulated PDF instance file, beside its PDF (paths relative to the
    outbox folder)."""
    return pdf_path.removesuffix(".pdf") + ".dcm"


def version_uid(study: StudyRow, run: Run, version: int) -> str:
    """The SOP Instance UID of a report version: the job, model and version decide it."""
    return deterministic_uid(f"{study.study_instance_uid}/{run.generation}/{run.model}",
                             "PDF-version", version)


def add_note(engine: Engine, outbox: Outbox, settings: Settings, study: StudyRow, run: Run,
             author: Author, text: str, now: datetime) -> tuple[Note, bool]:
    """Store a note on ``run`` and queue the report version it makes; (the note, whether it
    is new: False when it was the user's last note again)."""
    words = report_notes.clean(text)
    _check(study, run, words)
    notes = report_notes.for_run(engine, run.id)
    folder = outputs_folder(settings.var_path, run.folder)
    if notes and (notes[-1].user, notes[-1].text) == (author.name, words):
        _queue(engine, outbox, settings, study, run, notes[-1], store=False)
        return notes[-1], False
    version = (notes[-1].version if notes else report_notes.FIRST_VERSION) + 1
    # files of this note's own (two notes taking one version at once never share a file)
    tag = hashlib.sha256(f"{author.name}|{now.isoformat()}|{words}".encode()).hexdigest()[:8]
    pdf = folder / f"report-v{version}-{tag}.pdf"
    note = Note(0, run.id, study.id, run.model, run.generation, version,
                version_uid(study, run, version), _relative(settings, pdf), author.name,
                author.role, words, now)
    signed = [SignedNote(n.user, n.role, n.created_at, n.text) for n in (*notes, note)]
    _write_version(folder, pdf, note, signed, f"{run.model} {run.model_version}")
    try:
        note_id = _queue(engine, outbox, settings, study, run, note, store=True)
    except IntegrityError:
        pdf.unlink(missing_ok=True)
        pdf.with_suffix(".dcm").unlink(missing_ok=True)
        raise NoteRefused(f"another note on run #{run.id} was saved at the same moment: "
                          "send yours again") from None
    audit.record(engine, audit.Entry(
        action="report-note", outcome="ok", user=author.name, role=author.role,
        address=author.address, study_id=study.id, at=now,
        detail=f"run #{run.id} ({run.model} g{run.generation}): report version {version} "
               f"made, queued to {_destinations(settings)} destinations"))
    return dataclasses.replace(note, id=note_id), True


def _check(study: StudyRow, run: Run, words: str) -> None:
    if not words:
        raise NoteRefused("the note is empty")
    if len(words) > NOTE_MAX:
        raise NoteRefused(f"the note is longer than {NOTE_MAX} characters")
    if study.state not in NOTE_STATES:
        raise NoteRefused(f"job #{study.id} is {study.state}: its report is not built, or "
                          "was rejected at review")
    if not run.current or run.generation != study.generation:
        raise NoteRefused(f"run #{run.id} is an earlier run of job #{study.id}: notes go on "
                          "the current report")


def _relative(settings: Settings, path: Path) -> str:
    return str(path.relative_to(settings.var_path / "outbox"))


def _write_version(folder: Path, pdf_file: Path, note: Note, signed: list[SignedNote],
                   algorithm: str) -> None:
    """Both files of the version, fsynced; a file left by a failed earlier try is replaced."""
    try:
        original_pdf = at_rest.read_bytes(folder / REPORT_PDF)
        original = at_rest.dcmread(folder / REPORT_INSTANCE)
    except (OSError, PermanentError) as exc:
        raise NoteRefused(f"the report of run #{note.result_id} is not on disk "
                          f"({type(exc).__name__}): it cannot take a note") from None
    pdf = build_version_pdf(original_pdf, signed, note.version, algorithm, note.created_at)
    instance = build_version_instance(original, pdf, note.version, note.sop_instance_uid,
                                      note.created_at)
    paths = [pdf_file, pdf_file.with_suffix(".dcm")]
    at_rest.write_bytes(paths[0], pdf)
    at_rest.save_dataset(instance, paths[1])
    for path in (*paths, folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _queue(engine: Engine, outbox: Outbox, settings: Settings, study: StudyRow, run: Run,
           note: Note, *, store: bool) -> int:
    """Store the note (``store``) and queue its instance to every PACS, in one transaction;
    the note's id. Queued again, an item already delivered stays delivered."""
    relative = instance_path(note.pdf_path)
    label = f"report-pdf-v{note.version}"
    d = settings.delivery
    items = [NewItem(run.model, Kind.DICOM, x.name, note.sop_instance_uid, label, relative)
             for x in d.dicom]
    items += [NewItem(run.model, Kind.STOW, x.name, note.sop_instance_uid, label, relative)
              for x in d.stow]
    with engine.begin() as conn:
        note_id = report_notes.add(conn, note) if store else note.id
        outbox.add(conn, study.id, run.generation, items)
    return note_id


def _destinations(settings: Settings) -> int:
    return len(settings.delivery.dicom) + len(settings.delivery.stow)
