"""What every stage gets (:class:`StageContext`) and what it gives back (:class:`Step`).

A stage is a function of one job: ``stage(ctx, job) -> Step | None``. It does its work (reads
the spool, writes its own files) and says where the job goes next and why; it never moves the
job itself. The orchestrator (``node.pipeline.flow``) commits the :class:`Step` with a ledger
transition that expects the job's old state, so a stage run twice for the same job (a
redelivered task, two runners) moves it at most once. ``None`` means "not yet" (a delivery
waiting for its back-off, a study still in its quiet period).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy import Connection

from node.core.jobstate import JobState
from node.core.keys import DeidKeys
from node.core.ledger import Ledger
from node.core.outbox import Outbox
from node.core.pseudonyms import PseudonymStore
from node.core.settings import Settings
from node.core.spool import Spool
from node.pipeline.deid.profile import Profile
from node.pipeline.infer.registry import LoadedModel


@dataclass(frozen=True)
class Step:
    """A stage's answer for one job.

    ``also`` runs inside the transaction that moves the job (the build stage queues its outbox
    rows there); ``committed`` runs once the move is committed (the de-identified folder is
    renamed into place), ``superseded`` when the job had moved meanwhile and the work is
    discarded. ``detail`` is added to the log line, not to the ledger's reason.
    """

    target: JobState
    reason: str
    also: Callable[[Connection], None] | None = None
    committed: Callable[[], None] | None = None
    superseded: Callable[[], None] | None = None
    detail: str = ""


@dataclass
class StageContext:
    """The node's parts a stage may use: one per runner (process), shared by its stages."""

    ledger: Ledger
    spool: Spool
    profile: Profile
    keys: DeidKeys
    store: PseudonymStore
    models: dict[str, LoadedModel] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    #: (study id, generation, data sets) just written by the de-identification stage, which the
    #: inference stage takes instead of reading the files back when it runs next in this process
    handoff: tuple[int, int, list[pydicom.Dataset]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.ledger.engine)

    @property
    def deid_root(self) -> Path:
        return self.spool.root / "deid"

    def deid_dir(self, study_uid: str) -> Path:
        return self.spool.deid_dir(study_uid)

    def results_dir(self, study_uid: str) -> Path:
        return self.spool.root / "results" / self.spool.key(study_uid)

    @property
    def outbox_root(self) -> Path:
        return self.spool.root / "outbox"
