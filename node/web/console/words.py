"""Names the pages show for the ledger's codes (job states, roles, outbox kinds and states).

Marked for the message catalogue here and translated when a template writes them
(``{{ _(states[row.state]) }}``), so the ledger keeps its codes and the page speaks the
reader's language.
"""

from __future__ import annotations

from node.core.accounts import Role
from node.core.contract import Triage
from node.core.jobstate import JobState
from node.core.outbox import ItemState


def N_(text: str) -> str:
    """gettext's marker: into the catalogue now, translated when shown."""
    return text


STATES: dict[str, str] = {
    JobState.RECEIVING: N_("Receiving"),
    JobState.COMPLETE: N_("Complete"),
    JobState.DEIDENTIFIED: N_("De-identified"),
    JobState.INFERRED: N_("Analysed"),
    JobState.BUILT: N_("Results built"),
    JobState.AWAITING_REVIEW: N_("Awaiting review"),
    JobState.DELIVERED: N_("Delivered"),
    JobState.REPORTED: N_("Reported"),
    JobState.DONE: N_("Done"),
    JobState.RETRY_WAIT: N_("Waiting to retry"),
    JobState.FAILED: N_("Failed"),
    JobState.QUARANTINED: N_("Quarantined"),
    JobState.HELD: N_("Held"),
    JobState.DISCARDED: N_("Discarded"),
}

ROLES: dict[str, str] = {
    Role.ADMIN: N_("administrator"),
    Role.OPERATOR: N_("operator"),
    Role.RADIOLOGIST: N_("radiologist"),
    Role.CLINICIAN: N_("clinician"),
}

ITEM_STATES: dict[str, str] = {
    ItemState.PENDING: N_("Waiting"),
    ItemState.DELIVERED: N_("Delivered"),
    ItemState.FAILED: N_("Failed"),
    ItemState.SUPERSEDED: N_("Superseded"),
}

TRIAGE: dict[str, str] = {
    Triage.ROUTINE: N_("Routine"),
    Triage.PRIORITY: N_("Priority"),
    Triage.URGENT: N_("Urgent"),
}

#: the order the Overview lists states in: the flow, then the side states
FLOW = (JobState.RECEIVING, JobState.COMPLETE, JobState.DEIDENTIFIED, JobState.INFERRED,
        JobState.BUILT, JobState.AWAITING_REVIEW, JobState.DELIVERED, JobState.REPORTED,
        JobState.DONE, JobState.FAILED, JobState.RETRY_WAIT, JobState.QUARANTINED,
        JobState.HELD, JobState.DISCARDED)
