"""The study job's states and the one table of legal moves between them.

``RECEIVING`` is where a study starts; the completion sweep moves it to ``COMPLETE`` (or to
``HELD`` / ``DISCARDED`` when the maximum wait runs out, by configuration). Later stages pick
jobs up from ``COMPLETE``. An instance that arrives after completion re-opens the study
(back to ``RECEIVING``, generation + 1) so the pipeline re-runs on the whole study after a new
quiet period.

After inference the job is BUILT once its outputs are written and queued in the outbox, then
DELIVERED when every DICOM object is stored at every PACS destination, REPORTED when every
HL7 result is acknowledged, DONE when the alerts are out. A delivery that fails for good makes
the job FAILED; ``dicom-node retry`` moves it back to BUILT (outputs kept) or, if it failed
before its outputs were built, to COMPLETE. Waiting between attempts is kept per outbox item
(its next attempt time), not as a job state: a job can wait on one destination while another
is done, so RETRY_WAIT is not used by delivery.

The review gate (``models.review_required``): a job whose runs include such a model is built
like any other (its outputs written, its outbox rows queued) but moves INFERRED ->
AWAITING_REVIEW instead of BUILT, in the same transaction. Delivery reads only BUILT,
DELIVERED and REPORTED jobs, so nothing of it is sent, alerts included, and the rows are kept
(nothing lost, each sent once later). A radiologist's approval moves it AWAITING_REVIEW ->
BUILT (the state delivery picks up; its ORU made final first); a rejection moves it to
DISCARDED with the reviewer and note in the reason (nothing sent; an operator's
force-complete re-runs it). The gate is a state of its own rather than BUILT followed by a
second move, so there is no moment at which the delivery loop could see the job BUILT.
"""

from __future__ import annotations

from enum import StrEnum

from node.core.errors import IllegalTransition


class JobState(StrEnum):
    RECEIVING = "RECEIVING"
    COMPLETE = "COMPLETE"
    DEIDENTIFIED = "DEIDENTIFIED"
    INFERRED = "INFERRED"
    BUILT = "BUILT"
    DELIVERED = "DELIVERED"
    REPORTED = "REPORTED"
    DONE = "DONE"
    RETRY_WAIT = "RETRY_WAIT"
    FAILED = "FAILED"
    QUARANTINED = "QUARANTINED"
    AWAITING_REVIEW = "AWAITING_REVIEW"
    HELD = "HELD"
    DISCARDED = "DISCARDED"


S = JobState

#: Pipeline states a job passes through after completion. A late instance re-opens from any.
_AFTER_COMPLETION = frozenset(
    {S.COMPLETE, S.DEIDENTIFIED, S.INFERRED, S.BUILT, S.DELIVERED, S.REPORTED, S.DONE,
     S.RETRY_WAIT, S.FAILED, S.QUARANTINED, S.AWAITING_REVIEW, S.HELD, S.DISCARDED}
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RECEIVING: frozenset({S.COMPLETE, S.HELD, S.DISCARDED}),
    S.COMPLETE: frozenset({S.DEIDENTIFIED, S.RETRY_WAIT, S.FAILED, S.QUARANTINED, S.RECEIVING}),
    S.DEIDENTIFIED: frozenset({S.INFERRED, S.RETRY_WAIT, S.FAILED, S.RECEIVING}),
    S.INFERRED: frozenset({S.BUILT, S.AWAITING_REVIEW, S.RETRY_WAIT, S.FAILED, S.RECEIVING}),
    # approved: on to delivery; rejected: ends DISCARDED, nothing sent
    S.AWAITING_REVIEW: frozenset({S.BUILT, S.DISCARDED, S.FAILED, S.RECEIVING}),
    S.BUILT: frozenset({S.DELIVERED, S.RETRY_WAIT, S.FAILED, S.RECEIVING}),
    S.DELIVERED: frozenset({S.REPORTED, S.RETRY_WAIT, S.FAILED, S.RECEIVING}),
    S.REPORTED: frozenset({S.DONE, S.FAILED, S.RECEIVING}),
    S.DONE: frozenset({S.RECEIVING}),
    S.RETRY_WAIT: frozenset(
        {S.COMPLETE, S.DEIDENTIFIED, S.INFERRED, S.BUILT, S.DELIVERED, S.FAILED, S.RECEIVING}
    ),
    # an operator's retry: from the start, or (when the outputs were built) from delivery
    S.FAILED: frozenset({S.COMPLETE, S.BUILT, S.RECEIVING}),
    S.QUARANTINED: frozenset({S.COMPLETE, S.RECEIVING}),
    S.HELD: frozenset({S.COMPLETE, S.DISCARDED, S.RECEIVING}),
    S.DISCARDED: frozenset({S.COMPLETE, S.RECEIVING}),
}

#: States from which an operator's ``force-complete`` is accepted.
FORCE_COMPLETABLE = frozenset({S.RECEIVING, S.HELD, S.DISCARDED, S.FAILED, S.QUARANTINED})


def is_reopenable(state: JobState) -> bool:
    """True when a newly arrived instance should re-open a study in ``state``."""
    return state in _AFTER_COMPLETION


def check_transition(current: JobState, target: JobState) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"a job cannot move from {current} to {target}")
