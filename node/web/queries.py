"""Read-only views of one job for the API: instances per series and the job's timeline.

Both read along the ledger's per-study indexes (``ix_instances_study``, the events' study id),
so a study's page costs the same at any depth of history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from node.core import db
from node.core.ledger import iso_z

#: newest timeline events a study page shows
TIMELINE_LIMIT = 200


def series_counts(engine: Engine, study_id: int) -> list[dict[str, Any]]:
    """Instances per series of the study (Series Instance UID, modality, count)."""
    i = db.instances.c
    query = (select(i.series_instance_uid, func.max(i.modality), func.count())
             .where(i.study_id == study_id).group_by(i.series_instance_uid)
             .order_by(i.series_instance_uid))
    with db.reader(engine) as conn:
        return [{"series_instance_uid": uid, "modality": modality, "instances": int(n)}
                for uid, modality, n in conn.execute(query)]


def timeline(engine: Engine, study_id: int) -> list[dict[str, Any]]:
    """The job's state changes (audit events), oldest first: the newest ``TIMELINE_LIMIT``."""
    e = db.events.c
    query = (select(e.id, e.at, e.kind, e.from_state, e.to_state, e.detail)
             .where(e.study_id == study_id).order_by(e.id.desc()).limit(TIMELINE_LIMIT))
    with db.reader(engine) as conn:
        rows = list(conn.execute(query))
    return [{"at": iso_z(r.at), "kind": r.kind, "from": r.from_state, "to": r.to_state,
             "detail": r.detail} for r in reversed(rows)]
