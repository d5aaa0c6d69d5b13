"""What the console's buttons do: the API's actions, audited the same way.

Retry calls ``retry_job``, the function behind ``POST /api/v1/studies/{id}/retry`` and
``dicom-node retry``, and writes the same audit record (action ``retry``, outcome ok or
refused, the node's own words as detail).
"""

from __future__ import annotations

from node.core.accounts import Session
from node.core.errors import IllegalTransition
from node.core.jobstate import JobState
from node.core.ledger import StudyRow
from node.pipeline.deliver.stage import retry_job
from node.web.context import WebContext


def retry(ctx: WebContext, row: StudyRow, user: Session, address: str) -> bool:
    """Re-queue one FAILED job; False (and an audit record saying so) when it is not FAILED."""
    try:
        done = retry_job(ctx.ledger, ctx.outbox, row)
    except IllegalTransition as exc:
        ctx.accounts.record(name=user.name, role=user.role, address=address, action="retry",
                            study_id=row.id, outcome="refused", detail=str(exc))
        return False
    ctx.accounts.record(name=user.name, role=user.role, address=address, action="retry",
                        study_id=row.id, outcome="ok", detail=done)
    return True


def retry_all(ctx: WebContext, user: Session, address: str) -> int:
    """Re-queue every FAILED job; how many were re-queued."""
    return sum(retry(ctx, row, user, address) for row in ctx.ledger.studies(JobState.FAILED))
