"""The pipeline's one orchestrator: reads the spool, runs the pure stages, writes, moves jobs.

Today it runs the first stage: every COMPLETE study is de-identified into
``var/deid/<study key>/`` (the only data later stages and any model see), its pseudonyms are
stored encrypted, and the job moves to DEIDENTIFIED. An instance that may carry burned-in text
without a rule to clean it is quarantined (a copy, with the reason); a study left with no
instance is QUARANTINED. A study re-opened while it was processed keeps its new state and the
output is discarded: it will be processed again, whole, after its new quiet period.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.errors import IllegalTransition, LedgerUnavailable, NodeError, PermanentError
from node.jobstate import JobState
from node.ledger import Ledger, StudyRow
from node.pipeline.deid.deidentify import Pseudonym, deidentify
from node.pipeline.deid.keys import DeidKeys
from node.pipeline.deid.pixels import BurnedInText
from node.pipeline.deid.profile import Profile
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

    @property
    def deid_root(self) -> Path:
        return self.spool.root / "deid"

    def deid_dir(self, study_uid: str) -> Path:
        return self.deid_root / uid_key(study_uid)

    def run_once(self) -> int:
        """Process every COMPLETE study; return how many moved on."""
        moved = 0
        for study in self.ledger.studies(JobState.COMPLETE):
            try:
                moved += self.deidentify_study(study)
            except LedgerUnavailable as exc:
                log.error("study #%d: ledger unavailable, will retry: %s", study.id, exc)
            except NodeError as exc:
                self._fail(study, f"de-identification failed: {exc}")
        return moved

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

    def _fail(self, study: StudyRow, reason: str) -> None:
        log.error("study #%d failed: %s", study.id, reason)
        try:
            self.ledger.transition(study.id, JobState.FAILED, reason=reason,
                                   expect=JobState.COMPLETE)
        except NodeError as exc:
            log.error("study #%d could not be marked FAILED: %s", study.id, exc)
