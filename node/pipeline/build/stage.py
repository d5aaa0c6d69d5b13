"""The build stage: an INFERRED study's results become files and outbox rows (BUILT).

The result objects, ORU messages and alerts are built against the ORIGINAL source instances
(``node.pipeline.build.outputs``), found through the encrypted pseudonym map from the
pseudonymous slice UIDs the models saw; the outbox rows are queued in the same transaction
that moves the job to BUILT (the Step's ``also``), after every file was fsynced.
"""

from __future__ import annotations

import pydicom

from node.core.errors import PermanentError
from node.core.jobstate import JobState
from node.core.ledger import StudyRow, utcnow
from node.pipeline.build.outputs import Job, SourceLookup, build_outputs, read_source
from node.pipeline.context import StageContext, Step


def build_job(ctx: StageContext, job: StudyRow) -> Step:
    """INFERRED -> BUILT (or AWAITING_REVIEW where a model needs review): every output
    written, its outbox rows committed with the move."""
    out = ctx.outbox_root / ctx.spool.key(job.study_instance_uid) / f"g{job.generation}"
    items = build_outputs(
        Job(job.id, job.study_instance_uid, job.generation),
        ctx.results_dir(job.study_instance_uid) / f"g{job.generation}", out, ctx.outbox_root,
        {n: m.manifest for n, m in ctx.models.items()}, _sources(ctx, job), ctx.settings,
        utcnow().replace(microsecond=0),
    )
    models = sorted({i.model for i in items})
    reason = (f"{len(items)} deliveries queued for {', '.join(models)}" if items
              else "nothing to deliver")
    gated = sorted(set(models) & set(ctx.settings.models.review_required))
    if gated:  # the review gate (node.core.jobstate): built and queued, nothing sent yet
        return Step(JobState.AWAITING_REVIEW, f"{reason}; held for a radiologist's review "
                    f"({', '.join(gated)})",
                    also=lambda conn: ctx.outbox.add(conn, job.id, job.generation, items))
    return Step(JobState.BUILT, reason,
                also=lambda conn: ctx.outbox.add(conn, job.id, job.generation, items))


def _sources(ctx: StageContext, job: StudyRow) -> SourceLookup:
    """Original instances for the pseudonymous slice UIDs a model result refers to."""

    def lookup(slice_uids: tuple[str, ...]) -> tuple[pydicom.Dataset, ...]:
        files = ctx.ledger.instance_files(job.id)
        originals = ctx.store.originals(slice_uids)
        paths = [files.get(originals.get(uid, ""), "") for uid in slice_uids]
        if not all(paths):
            raise PermanentError(
                f"{paths.count('')} source instances of a model result are not in the "
                "ledger or the pseudonym map")
        return tuple(read_source(ctx.spool.absolute(p)) for p in paths)

    return lookup
