"""The pipeline's one orchestrator: reads the spool, runs the pure stages, writes, moves jobs.

Stage 1: every COMPLETE study is de-identified into ``var/deid/<study key>/`` (the only data
later stages and any model see), its pseudonyms are stored encrypted, and the job moves to
DEIDENTIFIED. Stage 2 (when models are enabled): every enabled model whose selection rules fit
one of the study's series runs on that series' volume; its result is kept under
``var/results/<study key>/g<generation>/<model>/`` (summary.json, masks.npz) and the job moves to
INFERRED. A model whose series cannot be assembled is named in the job's reason; if every model
failed, the job is FAILED. An instance that may carry burned-in text
without a rule to clean it is quarantined (a copy, with the reason); a study left with no
instance is QUARANTINED. A study re-opened while it was processed keeps its new state and the
output is discarded: it will be processed again, whole, after its new quiet period.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from node.errors import IllegalTransition, LedgerUnavailable, NodeError, PermanentError
from node.jobstate import JobState
from node.ledger import Ledger, StudyRow
from node.models.registry import LoadedModel
from node.models.summary import result_summary
from node.pipeline.assemble import VolumeError, assemble
from node.pipeline.deid.deidentify import Pseudonym, deidentify
from node.pipeline.deid.keys import DeidKeys
from node.pipeline.deid.pixels import BurnedInText
from node.pipeline.deid.profile import Profile
from node.pipeline.results import ModelResult
from node.pipeline.series import select_series, summarize
from node.pseudonyms import PseudonymStore
from node.spool import Spool, uid_key

log = logging.getLogger("node.pipeline")


@dataclass
class Orchestrator:
    ledger: Ledger
    spool: Spool
    profile: Profile
    keys: DeidKeys
    store: PseudonymStore
    models: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def deid_root(self) -> Path:
        return self.spool.root / "deid"

    def deid_dir(self, study_uid: str) -> Path:
        return self.deid_root / uid_key(study_uid)

    def results_dir(self, study_uid: str) -> Path:
        return self.spool.root / "results" / uid_key(study_uid)

    def run_once(self) -> int:
        """Move every COMPLETE and (with models) DEIDENTIFIED study on; return how many."""
        moved = self._each(JobState.COMPLETE, self.deidentify_study, "de-identification")
        if self.models:
            moved += self._each(JobState.DEIDENTIFIED, self.infer_study, "inference")
        return moved

    def _each(self, state: JobState, stage: Callable[[StudyRow], int], what: str) -> int:
        moved = 0
        for study in self.ledger.studies(state):
            try:
                moved += stage(study)
            except LedgerUnavailable as exc:
                log.error("study #%d: ledger unavailable, will retry: %s", study.id, exc)
            except NodeError as exc:
                self._fail(study, state, f"{what} failed: {exc}")
        return moved

    def infer_study(self, study: StudyRow) -> int:
        datasets = [pydicom.dcmread(p)
                    for p in sorted(self.deid_dir(study.study_instance_uid).glob("*.dcm"))]
        infos = summarize(datasets)
        out_root = self.results_dir(study.study_instance_uid) / f"g{study.generation}"
        ran, failed = [], []
        for name, loaded in self.models.items():
            chosen = select_series(infos, loaded.manifest.selection)
            if chosen is None:
                continue
            try:
                volume = assemble([d for d in datasets
                                   if str(d.SeriesInstanceUID) == chosen.series_instance_uid])
            except VolumeError as exc:
                failed.append(f"{name}: {exc}")
                continue
            result = loaded.model.predict(volume)
            save_result(out_root / name, loaded, result, chosen.series_instance_uid)
            ran.append(name)
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
        final = self.deid_dir(study.study_instance_uid)
        work = final.with_name(final.name + f".g{study.generation}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        pseudonyms: list[Pseudonym] = []
        kept = refused = 0
        for number, relative in enumerate(self.ledger.instance_paths(study.id), start=1):
            source = self.spool.absolute(relative)
            try:
                ds = pydicom.dcmread(source)
                result = deidentify(ds, self.profile, self.keys)
            except BurnedInText as exc:
                self._quarantine_instance(source, str(exc))
                refused += 1
                continue
            except (InvalidDicomError, ValueError, TypeError, KeyError) as exc:
                raise PermanentError(
                    f"instance {number} cannot be de-identified ({type(exc).__name__})"
                ) from exc
            result.dataset.save_as(work / f"{number:06d}.dcm", enforce_file_format=True)
            pseudonyms.extend(result.pseudonyms)
            kept += 1
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


def save_result(folder: Path, loaded: LoadedModel, result: ModelResult, series_uid: str) -> None:
    """summary.json and masks.npz (segments by label, heatmaps by slice) of one model run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(
        json.dumps(result_summary(loaded, result, series_uid), indent=2) + "\n", encoding="utf-8")
    arrays = {f"segment_{s.label}": s.mask for s in result.segments}
    arrays.update({f"heatmap_{h.slice_index}": h.values for h in result.heatmaps})
    if arrays:
        np.savez_compressed(folder / "masks.npz", **arrays)  # type: ignore[arg-type]
