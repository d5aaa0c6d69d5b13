"""The pipeline's one orchestrator: reads the spool, runs the pure stages, writes, moves jobs.

Stage 1: every COMPLETE study is de-identified into ``var/deid/<study key>/`` (the only data
later stages and any model see), its pseudonyms are stored encrypted, and the job moves to
DEIDENTIFIED. Stage 2 (when models are enabled): every enabled model whose selection rules fit
one of the study's series runs on that series' volume; its result is kept under
``var/results/<study key>/g<generation>/<model>/`` (result.json, masks.npz, summary.json) and
the job moves to INFERRED. A model whose series cannot be assembled is named in the job's
reason; if every model failed, the job is FAILED. Stage 3: every INFERRED study's results are
built against the original instances (``node.publish``) and queued in the outbox in the same
transaction that moves the job to BUILT; ``node.delivery`` takes it from there.

An instance that may carry burned-in text without a rule to clean it is quarantined (a copy,
with the reason); a study left with no instance is QUARANTINED. A study re-opened while it was
processed keeps its new state and the output is discarded: it will be processed again, whole,
after its new quiet period.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node import at_rest
from node.config import Settings
from node.errors import IllegalTransition, LedgerUnavailable, NodeError, PermanentError
from node.jobstate import JobState
from node.ledger import Ledger, StudyRow, utcnow
from node.logs import result_line
from node.models.registry import LoadedModel
from node.outbox import Outbox
from node.pipeline.assemble import VolumeError, assemble
from node.pipeline.deid.deidentify import Pseudonym, deidentify
from node.pipeline.deid.keys import DeidKeys
from node.pipeline.deid.pixels import BurnedInText
from node.pipeline.deid.profile import Profile
from node.pipeline.series import select_series, summarize
from node.pseudonyms import PseudonymStore
from node.publish import Job, SourceLookup, build_outputs, read_source
from node.result_store import save_result
from node.spool import Spool

log = logging.getLogger("node.pipeline")


@dataclass
class Orchestrator:
    ledger: Ledger
    spool: Spool
    profile: Profile
    keys: DeidKeys
    store: PseudonymStore
    models: dict[str, LoadedModel] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    #: called after a job was BUILT (the scheduler wakes delivery instead of waiting a poll)
    on_built: Callable[[], None] | None = None
    #: (study id, generation, data sets) just written by deidentify_study, which infer_study
    #: takes instead of reading the files back when it runs next in the same process
    _handoff: tuple[int, int, list[pydicom.Dataset]] | None = field(
        default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.ledger.engine)

    @property
    def deid_root(self) -> Path:
        return self.spool.root / "deid"

    def deid_dir(self, study_uid: str) -> Path:
        return self.deid_root / self.spool.key(study_uid)

    def results_dir(self, study_uid: str) -> Path:
        return self.spool.root / "results" / self.spool.key(study_uid)

    @property
    def outbox_root(self) -> Path:
        return self.spool.root / "outbox"

    def run_once(self) -> int:
        """Take every study waiting in a pipeline state as far as it goes; return the moves.

        One study at a time through all its stages (de-identify, infer, build), oldest first:
        a study's results do not wait for the next study's de-identification.
        """
        stages: dict[JobState, tuple[Callable[[StudyRow], int], str]] = {
            JobState.COMPLETE: (self.deidentify_study, "de-identification"),
            JobState.INFERRED: (self.build_study, "building the results"),
        }
        if self.models:
            stages[JobState.DEIDENTIFIED] = (self.infer_study, "inference")
        moved = 0
        # only the jobs waiting in these states, through the ledger's index: not the history
        for study in self.ledger.studies(*stages):
            while study.state in stages:
                stage, what = stages[study.state]
                done = self._run(study, stage, what)
                moved += done
                if not done:
                    break
                study = self.ledger.study_by_id(study.id)
        return moved

    def _run(self, study: StudyRow, stage: Callable[[StudyRow], int], what: str) -> int:
        try:
            return stage(study)
        except LedgerUnavailable as exc:
            log.error("study #%d: ledger unavailable, will retry: %s", study.id, exc)
        except NodeError as exc:
            self._fail(study, study.state, f"{what} failed: {exc}")
        return 0

    def build_study(self, study: StudyRow) -> int:
        job = Job(study.id, study.study_instance_uid, study.generation)
        key = self.spool.key(study.study_instance_uid)
        out = self.outbox_root / key / f"g{study.generation}"
        items = build_outputs(
            job, self.results_dir(study.study_instance_uid) / f"g{study.generation}", out,
            self.outbox_root, {n: m.manifest for n, m in self.models.items()},
            self._sources(study), self.settings, utcnow().replace(microsecond=0),
        )
        models = sorted({i.model for i in items})
        reason = (f"{len(items)} deliveries queued for {', '.join(models)}" if items
                  else "nothing to deliver")
        moved = self.ledger.transition(
            study.id, JobState.BUILT, reason=reason, expect=JobState.INFERRED,
            also=lambda conn: self.outbox.add(conn, study.id, study.generation, items))
        if moved:
            log.info("study #%d: %s -> %s (%s)", study.id, JobState.INFERRED, JobState.BUILT,
                     reason)
            if self.on_built is not None:
                self.on_built()
        return int(moved)

    def _sources(self, study: StudyRow) -> SourceLookup:
        """Original instances for the pseudonymous slice UIDs a model result refers to."""

        def lookup(slice_uids: tuple[str, ...]) -> tuple[pydicom.Dataset, ...]:
            files = self.ledger.instance_files(study.id)
            originals = self.store.originals(slice_uids)
            paths = [files.get(originals.get(uid, ""), "") for uid in slice_uids]
            if not all(paths):
                raise PermanentError(
                    f"{paths.count('')} source instances of a model result are not in the "
                    "ledger or the pseudonym map")
            return tuple(read_source(self.spool.absolute(p)) for p in paths)

        return lookup

    def infer_study(self, study: StudyRow) -> int:
        t = time.perf_counter()
        datasets = self._deidentified(study)
        read_s = time.perf_counter() - t
        infos = summarize(datasets)
        out_root = self.results_dir(study.study_instance_uid) / f"g{study.generation}"
        ran, failed = [], []
        for name, loaded in self.models.items():
            chosen = select_series(infos, loaded.manifest.selection)
            if chosen is None:
                continue
            t = time.perf_counter()
            try:
                volume = assemble([d for d in datasets
                                   if str(d.SeriesInstanceUID) == chosen.series_instance_uid])
            except VolumeError as exc:
                failed.append(f"{name}: {exc}")
                continue
            assemble_s = time.perf_counter() - t
            t = time.perf_counter()
            result = loaded.model.predict(volume)
            # the stage timings (read, assemble, predict) kept with the model's own
            result = replace(result, timings_s={
                **result.timings_s, "read_deidentified": read_s, "assemble": assemble_s,
                "predict": time.perf_counter() - t})
            save_result(out_root / name, loaded, result, chosen.series_instance_uid,
                        volume.geometry.sop_instance_uids)
            log.info("study #%d: %s %s: %s", study.id, name, loaded.manifest.version,
                     result_line(result))
            ran.append(name)
        return self._inferred(study, ran, failed)

    def _deidentified(self, study: StudyRow) -> list[pydicom.Dataset]:
        """The study's de-identified instances: those deidentify_study has just written (the
        same data sets, equal element by element to what the files read back), else the files
        (after a restart, or when another study came in between)."""
        handoff, self._handoff = self._handoff, None
        if handoff is not None and handoff[:2] == (study.id, study.generation):
            return handoff[2]
        return [at_rest.dcmread(p)
                for p in sorted(self.deid_dir(study.study_instance_uid).glob("*.dcm"))]

    def _inferred(self, study: StudyRow, ran: list[str], failed: list[str]) -> int:
        if failed and not ran:
            raise PermanentError("; ".join(failed))
        reason = (f"models run: {', '.join(ran)}" if ran else "no enabled model fits this study")
        if failed:
            reason += f"; failed: {'; '.join(failed)}"
        moved = self.ledger.transition(study.id, JobState.INFERRED, reason=reason,
                                       expect=JobState.DEIDENTIFIED)
        if moved:
            log.info("study #%d: %s -> %s (%s)", study.id, JobState.DEIDENTIFIED,
                     JobState.INFERRED, reason)
        return int(moved)

    def deidentify_study(self, study: StudyRow) -> int:
        self._handoff = None
        final = self.deid_dir(study.study_instance_uid)
        work = final.with_name(final.name + f".g{study.generation}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        pseudonyms: list[Pseudonym] = []
        written: list[pydicom.Dataset] = []
        refused = 0
        for number, relative in enumerate(self.ledger.instance_paths(study.id), start=1):
            source = self.spool.absolute(relative)
            try:
                ds = self.spool.open_dataset(relative)
                result = deidentify(ds, self.profile, self.keys)
            except BurnedInText as exc:
                self._quarantine_instance(source, str(exc))
                refused += 1
                continue
            except (InvalidDicomError, ValueError, TypeError, KeyError) as exc:
                raise PermanentError(
                    f"instance {number} cannot be de-identified ({type(exc).__name__})"
                ) from exc
            at_rest.save_dataset(result.dataset, work / f"{number:06d}.dcm")
            pseudonyms.extend(result.pseudonyms)
            written.append(result.dataset)
        kept = len(written)
        self.store.save(pseudonyms)
        target = JobState.DEIDENTIFIED if kept else JobState.QUARANTINED
        reason = f"{kept} instances de-identified, {refused} quarantined (burned-in text)"
        try:
            moved = self.ledger.transition(
                study.id, target, reason=reason, expect=JobState.COMPLETE
            )
        except IllegalTransition:
            moved = False
        if not moved:
            shutil.rmtree(work, ignore_errors=True)
            log.info("study #%d changed state while it was de-identified; discarded", study.id)
            return 0
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        if self.models and kept:
            self._handoff = (study.id, study.generation, written)
        log.info("study #%d: %s -> %s (%s)", study.id, JobState.COMPLETE, target, reason)
        return 1

    def _quarantine_instance(self, source: Path, reason: str) -> None:
        copy = self.spool.quarantine_dir / f"deid-{source.name}"
        shutil.copyfile(source, copy)
        self.ledger.record_quarantine(
            reason=f"de-identification refused: {reason}", path=copy.name,
            size_bytes=copy.stat().st_size, sop_class_uid=None, sop_instance_uid=None,
            calling_ae_title=None, peer_address=None,
        )
        log.warning("an instance was quarantined before de-identification: %s", reason)

    def _fail(self, study: StudyRow, state: JobState, reason: str) -> None:
        log.error("study #%d failed: %s", study.id, reason)
        try:
            self.ledger.transition(study.id, JobState.FAILED, reason=reason, expect=state)
        except NodeError as exc:
            log.error("study #%d could not be marked FAILED: %s", study.id, exc)

