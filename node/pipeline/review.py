"""The review gate's decisions: a radiologist approves or rejects a job AWAITING_REVIEW.

Why a gate: a site can require (``models.review_required``) that nothing a model produced
leaves the node before a radiologist has looked at it. The build stage then parks the job in
AWAITING_REVIEW with its outbox rows queued (``node.core.jobstate``); delivery does not read
that state, so nothing goes out.

- Approval makes every queued ORU final (OBR-25 and OBX-11 F, the reviewer in OBR-32, through
  :func:`node.hl7.oru.finalise`; the file is replaced atomically, and a re-run writes the same)
  and moves the job to BUILT, where delivery takes it as any other.
- Rejection moves the job to DISCARDED with the reviewer and the note in its reason; its
  outbox rows are never sent. The rejection is also kept as feedback "incorrect" on each
  current model run (``node.core.feedback``), so the Model quality summary counts it.

Both expect the job in AWAITING_REVIEW (:class:`IllegalTransition` otherwise): two reviewers
deciding at once move it once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from node.core import at_rest, db, feedback
from node.core.errors import IllegalTransition
from node.core.jobstate import JobState
from node.core.ledger import Ledger, StudyRow
from node.core.outbox import ItemState, Kind, Outbox
from node.hl7.oru import finalise


@dataclass(frozen=True)
class Reviewer:
    """Who decides: the account name (OBR-32's ID), the display name, role and address."""

    name: str
    display_name: str
    role: str
    address: str


def _expect_waiting(study: StudyRow) -> None:
    if study.state != JobState.AWAITING_REVIEW:
        raise IllegalTransition(
            f"job #{study.id} is {study.state}, not AWAITING_REVIEW: nothing to review")


def approve(ledger: Ledger, outbox: Outbox, outbox_root: Path, study: StudyRow,
            reviewer: Reviewer, note: str) -> str:
    """AWAITING_REVIEW -> BUILT, each pending ORU made final first; what was done, in words."""
    _expect_waiting(study)
    items = [i for i in outbox.items(study.id, study.generation)
             if i.kind == Kind.HL7 and i.state == ItemState.PENDING]
    for item in items:
        path = outbox_root / item.path
        text = finalise(at_rest.read_bytes(path).decode("utf-8"), reviewer.name,
                        reviewer.display_name)
        fresh = path.with_name(path.name + ".final")
        at_rest.write_bytes(fresh, text.encode("utf-8"))
        with fresh.open("rb") as f:
            os.fsync(f.fileno())
        fresh.replace(path)
    said = f"approved by {reviewer.name}" + (" with a note" if note.strip() else "")
    if not ledger.transition(study.id, JobState.BUILT, reason=f"review: {said}",
                             expect=JobState.AWAITING_REVIEW):
        raise IllegalTransition(f"job #{study.id} moved meanwhile: nothing to review")
    return f"job #{study.id}: {said}; {len(items)} results made final (AWAITING_REVIEW -> BUILT)"


def reject(ledger: Ledger, study: StudyRow, reviewer: Reviewer, note: str) -> str:
    """AWAITING_REVIEW -> DISCARDED, nothing sent; the rejection kept as feedback "incorrect"
    on each current model run of the job; what was done, in words."""
    _expect_waiting(study)
    said = f"rejected by {reviewer.name}"
    if not ledger.transition(study.id, JobState.DISCARDED,
                             reason=f"review: {said}; nothing was sent",
                             expect=JobState.AWAITING_REVIEW):
        raise IllegalTransition(f"job #{study.id} moved meanwhile: nothing to review")
    r = db.results.c
    with db.reader(ledger.engine) as conn:
        runs = list(conn.execute(select(r.id).where(
            r.study_id == study.id, r.generation == study.generation)).scalars())
    for run in runs:
        feedback.record(ledger.engine, study_id=study.id, result_id=int(run),
                        user=reviewer.name, role=reviewer.role, address=reviewer.address,
                        verdict=feedback.Verdict.INCORRECT, corrected_triage=None,
                        note=note or "rejected at review")
    return f"job #{study.id}: {said}; nothing sent (AWAITING_REVIEW -> DISCARDED)"
