"""The de-identification stage: a COMPLETE study becomes its de-identified copy (DEIDENTIFIED).

Every instance goes through the pure :func:`~node.pipeline.deid.deidentify.deidentify` into
``var/deid/<study key>/`` (the only data later stages and any model see); its pseudonyms are
stored encrypted. An instance that may carry burned-in text without a rule to clean it is
quarantined (a copy, with the reason); a study left with no instance is QUARANTINED.

:func:`deidentify_into` is the loop both the flow and ``dicom-node deidentify`` run: the same
profile, keys and pseudonym store, the same refusals.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.core import patients
from node.core.errors import PermanentError
from node.core.jobstate import JobState
from node.core.keys import DeidKeys
from node.core.ledger import StudyRow
from node.core.pseudonyms import Pseudonym
from node.pipeline.context import StageContext, Step
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.files import read_instance, write_instance
from node.pipeline.deid.pixels import BurnedInText, attested_picture, for_attested_picture
from node.pipeline.deid.profile import Profile
from node.pipeline.ingest import CALLING_AE as UPLOAD_CALLING_AE

log = logging.getLogger("node.pipeline")

#: what reading or de-identifying one instance may raise for input that is not usable DICOM
UNUSABLE = (InvalidDicomError, ValueError, TypeError, KeyError)


@dataclass
class Deidentified:
    """What :func:`deidentify_into` did: the data sets written (in input order), their
    pseudonyms, the inputs refused for burned-in text and those that are not usable DICOM
    (by their 1-based input number, with the reason)."""

    written: list[pydicom.Dataset] = field(default_factory=list)
    pseudonyms: list[Pseudonym] = field(default_factory=list)
    burned_in: list[tuple[int, str]] = field(default_factory=list)
    unusable: list[tuple[int, Exception]] = field(default_factory=list)


def deidentify_into(
    inputs: Iterable[tuple[int, Callable[[], pydicom.Dataset]]], profile: Profile,
    keys: DeidKeys, save: Callable[[int, pydicom.Dataset], None], *, strict: bool,
    attested: Collection[int] = frozenset(),
) -> Deidentified:
    """De-identify each ``(number, read)`` input and ``save`` it; refuse burned-in text.

    ``strict``: the first unusable input raises PermanentError (a study in the spool must be
    whole); otherwise it is listed and the others go on (files given on the command line).
    ``attested``: the inputs the ledger records as uploaded pictures stated to show no
    identifying text; each passes the burned-in-text rule if it is still such a picture
    (:func:`~node.pipeline.deid.pixels.attested_picture`).
    """
    out = Deidentified()
    stated = dataclasses.replace(profile, settings=for_attested_picture(profile.settings))
    for number, read in inputs:
        try:
            ds = read()
            chosen = stated if number in attested and attested_picture(ds) else profile
            result = deidentify(ds, chosen, keys)
        except BurnedInText as exc:
            out.burned_in.append((number, str(exc)))
            continue
        except UNUSABLE as exc:
            if strict:
                raise PermanentError(
                    f"instance {number} cannot be de-identified ({type(exc).__name__})"
                ) from exc
            out.unusable.append((number, exc))
            continue
        save(number, result.dataset)
        out.pseudonyms.extend(result.pseudonyms)
        out.written.append(result.dataset)
    return out


def deidentify_job(ctx: StageContext, job: StudyRow) -> Step:
    """COMPLETE -> DEIDENTIFIED (or QUARANTINED when no instance is left)."""
    ctx.handoff = None
    final = ctx.deid_dir(job.study_instance_uid)
    # a folder of this attempt's own: a duplicate of the task (a worker's redelivery, the
    # re-enqueue sweep) may de-identify the same job at the same time; the transition decides
    # which one's folder becomes ``final``, the other removes its own (``superseded``)
    work = final.with_name(f"{final.name}.g{job.generation}.{os.getpid()}-"
                           f"{secrets.token_hex(4)}.tmp")
    work.mkdir(parents=True)
    paths = dict(enumerate(ctx.ledger.instance_paths(job.id), start=1))
    stated = ctx.ledger.attested_paths(job.id, UPLOAD_CALLING_AE)
    done = deidentify_into(
        ((n, _reader(ctx, p)) for n, p in paths.items()),
        ctx.profile, ctx.keys,
        lambda n, ds: write_instance(ds, work / f"{n:06d}.dcm"), strict=True,
        attested={n for n, p in paths.items() if p in stated})
    for number, reason in done.burned_in:
        _quarantine_instance(ctx, ctx.spool.absolute(paths[number]), reason)
    ctx.store.save(done.pseudonyms)
    kept = len(done.written)

    def committed() -> None:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        if ctx.models and kept:
            ctx.handoff = (job.id, job.generation, done.written)

    def superseded() -> None:
        shutil.rmtree(work, ignore_errors=True)
        log.info("study #%d changed state while it was de-identified; discarded", job.id)

    key = patients.patient_key(done.pseudonyms)  # the patient's earlier studies find it
    accession = patients.accession_key(done.pseudonyms)  # the Studies page's search finds it
    return Step(JobState.DEIDENTIFIED if kept else JobState.QUARANTINED,
                f"{kept} instances de-identified, {len(done.burned_in)} quarantined "
                "(burned-in text)", also=lambda conn: patients.record(conn, job.id, key, accession),
                committed=committed, superseded=superseded)


def _reader(ctx: StageContext, relative: str) -> Callable[[], pydicom.Dataset]:
    return lambda: read_instance(ctx.spool.absolute(relative))


def _quarantine_instance(ctx: StageContext, source: Path, reason: str) -> None:
    copy = ctx.spool.quarantine_dir / f"deid-{source.name}"
    shutil.copyfile(source, copy)
    ctx.ledger.record_quarantine(
        reason=f"de-identification refused: {reason}", path=copy.name,
        size_bytes=copy.stat().st_size, sop_class_uid=None, sop_instance_uid=None,
        calling_ae_title=None, peer_address=None,
    )
    log.warning("an instance was quarantined before de-identification: %s", reason)
