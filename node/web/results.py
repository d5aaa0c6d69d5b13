"""A job's results: each model run with its summary and outputs, the PDF report, the objects.

The ``results`` table (written with the move to INFERRED) names each run and its result folder;
the summary is that folder's ``summary.json`` (pseudonymous UIDs only), the outputs are the
job's outbox items. The PDF report and the DICOM objects were built against the ORIGINAL study
and carry the patient's identity, so only the roles that may see it download them:
radiologists and clinicians, and admins, whose role is "every action" (issue 13); operators see
the queues, the runs and their summaries, never these files. Every download, and every one
asked for but missing, is an audit record. Files are read through ``node.core.at_rest``: they
may be encrypted at rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select, true

from node.core import at_rest, db
from node.core.accounts import Role, Session
from node.core.errors import PermanentError, UnknownStudy
from node.core.ledger import StudyRow, iso_z
from node.core.outbox import Kind, OutboxItem
from node.web.access import EVERYONE, route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")
_CTX, _SESSION = Depends(context), Depends(session)

#: who may download what carries the patient's identity (the PDF, the DICOM objects)
IDENTIFIED_FILES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.CLINICIAN})
#: outbox kinds whose file is a DICOM object
DICOM_KINDS = frozenset({Kind.DICOM, Kind.STOW})
#: the build stage's file for a run's PDF report, in the run's outputs folder
REPORT_FILE = "report.pdf"
_CHUNK = 1 << 20


def runs(ctx: WebContext, study_id: int, *, objects: bool = True) -> list[dict[str, Any]]:
    """Each model run of the job, newest generation first: model, version, triage, finding,
    its summary (None when the file is gone) and, with ``objects``, its outputs."""
    r = db.results.c
    query = (select(r.id, r.generation, r.model, r.model_version, r.triage, r.finding,
                    r.current, r.created_at, r.folder)
             .where(r.study_id == study_id).order_by(r.generation.desc(), r.model))
    with db.reader(ctx.ledger.engine) as conn:
        rows = list(conn.execute(query))
    items = ctx.outbox.items(study_id) if objects else []
    out = []
    for row in rows:
        run: dict[str, Any] = {
            "id": row.id,  # the run_id of its feedback (node.web.feedback)
            "model": row.model, "version": row.model_version, "generation": row.generation,
            "current": bool(row.current), "triage": row.triage, "finding": row.finding,
            "created_at": iso_z(row.created_at),
            "summary": read_summary(ctx.settings.var_path / row.folder)}
        if objects:
            mine = [i for i in items if (i.generation, i.model) == (row.generation, row.model)]
            run["objects"] = _objects(ctx, study_id, mine)
        if (ctx.settings.var_path / _outputs_folder(row.folder) / REPORT_FILE).exists():
            run["report"] = (f"/api/v1/studies/{study_id}/report.pdf?model={row.model}"
                             f"&generation={row.generation}")
        out.append(run)
    return out


def read_summary(folder: Path) -> dict[str, Any] | None:
    """A run's ``summary.json`` (None when it is gone or unreadable)."""
    try:
        value = json.loads(at_rest.read_bytes(folder / "summary.json"))
    except (OSError, ValueError, PermanentError):
        return None
    return value if isinstance(value, dict) else None


def _objects(ctx: WebContext, study_id: int, items: list[OutboxItem]) -> list[dict[str, Any]]:
    classes: dict[str, str | None] = {}
    out = []
    for item in items:
        dicom = item.kind in DICOM_KINDS
        if dicom and item.path not in classes:
            classes[item.path] = _sop_class(_outbox_file(ctx, item.path))
        out.append({
            "id": item.id, "kind": str(item.kind), "label": item.label,
            "destination": item.destination,
            "sop_class_uid": classes.get(item.path) if dicom else None,
            "state": item.state.value, "delivered_at": iso_z(item.delivered_at),
            "href": f"/api/v1/studies/{study_id}/objects/{item.id}" if dicom else None})
    return out


def _sop_class(path: Path) -> str | None:
    try:
        ds = at_rest.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (OSError, ValueError, PermanentError):
        return None
    value = ds.get("SOPClassUID")
    return None if value is None else str(value)


def _outbox_file(ctx: WebContext, relative: str) -> Path:
    return ctx.settings.var_path / "outbox" / relative


def _outputs_folder(result_folder: str) -> PurePosixPath:
    """A run's outputs folder from its result folder (relative to var_dir): the build stage
    writes ``outbox/<study key>/g<generation>/<model>/`` for ``results/<study key>/...``."""
    parts = PurePosixPath(result_folder).parts
    return PurePosixPath("outbox", *parts[1:])


@route(router, "GET", "/studies/{study_id}/results", EVERYONE)
def results(study_id: int, ctx: WebContext = _CTX) -> dict[str, Any]:
    """Each model run of the job: model, version, triage, finding, summary (pseudonymous UIDs
    only) and its output objects (kind, label, SOP class, state, delivered_at)."""
    row = _job(ctx, study_id)
    return {"id": row.id, "generation": row.generation, "items": runs(ctx, row.id)}


@route(router, "GET", "/studies/{study_id}/report.pdf", IDENTIFIED_FILES,
       response_class=StreamingResponse)
def report(study_id: int, request: Request, model: str | None = None,
           generation: int | None = None, user: Session = _SESSION,
           ctx: WebContext = _CTX) -> StreamingResponse:
    """The PDF report of one model run (by default the job's current runs, the first model
    by name): it carries the patient's identity; each download is audited."""
    row = _job(ctx, study_id)
    folder, run_model, run_generation = _run(ctx, row, model, generation)
    what = f"{REPORT_FILE} {run_model} g{run_generation}"
    path = ctx.settings.var_path / _outputs_folder(folder) / REPORT_FILE
    stream = open_audited(ctx, user, request, row, path, what, f"the PDF report of job "
                          f"#{row.id} ({run_model}, generation {run_generation})")
    name = f"job{row.id}-g{run_generation}-{run_model}-report.pdf"
    return download_response(stream, "application/pdf", name)


@route(router, "GET", "/studies/{study_id}/objects/{item_id}", IDENTIFIED_FILES,
       response_class=StreamingResponse)
def dicom_object(study_id: int, item_id: int, request: Request, user: Session = _SESSION,
                 ctx: WebContext = _CTX) -> StreamingResponse:
    """One result object (SEG, SR, SC, KOS, Encapsulated PDF) by its outbox item: it carries
    the patient's identity; each download is audited."""
    row = _job(ctx, study_id)
    item = next((i for i in ctx.outbox.items(row.id) if i.id == item_id), None)
    if item is None:
        raise HTTPException(status_code=404, detail=f"job #{row.id} has no outbox item #{item_id}")
    if item.kind not in DICOM_KINDS:
        raise HTTPException(status_code=404, detail=f"outbox item #{item.id} is a {item.kind} "
                            f"item ({item.label}), not a DICOM object")
    what = f"object {item.label} (outbox item #{item.id}, {item.model} g{item.generation})"
    stream = open_audited(ctx, user, request, row, _outbox_file(ctx, item.path), what,
                          f"outbox item #{item.id} of job #{row.id}")
    return download_response(
        stream, "application/dicom",
        f"job{row.id}-g{item.generation}-{item.model}-{item.label}-{item.id}.dcm")


def _job(ctx: WebContext, study_id: int) -> StudyRow:
    try:
        return ctx.ledger.study_by_id(study_id)
    except UnknownStudy as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _run(ctx: WebContext, row: StudyRow, model: str | None,
         generation: int | None) -> tuple[str, str, int]:
    """(result folder, model, generation) of the run asked for."""
    r = db.results.c
    query = select(r.folder, r.model, r.generation).where(r.study_id == row.id)
    query = query.where(r.current == true() if generation is None else r.generation == generation)
    if model is not None:
        query = query.where(r.model == model)
    with db.reader(ctx.ledger.engine) as conn:
        found = conn.execute(query.order_by(r.model).limit(1)).first()
    if found is None:
        asked = "" if model is None else " of that model"
        asked += "" if generation is None else f" in generation {generation}"
        raise HTTPException(status_code=404, detail=f"job #{row.id} has no model run{asked}")
    return str(found.folder), str(found.model), int(found.generation)


def open_audited(ctx: WebContext, user: Session, request: Request, row: StudyRow, path: Path,
                 what: str, described: str) -> BinaryIO:
    """The file's plain stream, the download audited; 404 (audited too) when it is gone."""
    where = address(request)
    try:
        stream = at_rest.open_plain(path)
    except (OSError, PermanentError):
        ctx.accounts.record(name=user.name, role=user.role, address=where, action="download",
                            study_id=row.id, outcome="missing", detail=what)
        raise HTTPException(status_code=404, detail=f"{described} is not on disk (not built "
                            "yet, or removed)") from None
    ctx.accounts.record(name=user.name, role=user.role, address=where, action="download",
                        study_id=row.id, outcome="ok", detail=what)
    return stream


def download_response(stream: BinaryIO, media_type: str, filename: str) -> StreamingResponse:
    """The file in chunks (a SEG may be tens of MB), named by job, model and label only."""

    def chunks() -> Iterator[bytes]:
        with stream:
            while block := stream.read(_CHUNK):
                yield block

    return StreamingResponse(chunks(), media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store"})
