"""``POST /api/v1/upload``: files into the receive path, as ``dicom-node import`` takes them.

Multipart form: one or more ``file`` parts (DICOM, a zip of DICOM files, NIfTI, PNG or JPEG;
the kind judged by content) and the patient and study fields (``patient_id``,
``patient_name``, ``birth_date``, ``sex``, ``accession``, ``study_description``,
``modality``, ``body_part``), needed for NIfTI and pictures, and for pictures
``identifying_text=no``: the uploader's statement that the picture shows no identifying text,
recorded with the user (anything else is 422: the node cannot read burned-in text). 413 over
``web.max_upload_mb`` (judged from Content-Length before anything is read, and again on what
arrives), 415 for a file of an unknown kind (it is quarantined), 422 for missing or invalid
patient details, a picture without that statement, or a refused zip. Every upload is an
audit record ("upload"), refused ones included.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from node.core.accounts import Role, Session
from node.core.errors import ConfigError, TransientError
from node.core.spool import open_spool
from node.pipeline import ingest
from node.web.access import route
from node.web.context import WebContext
from node.web.deps import address, context, session

router = APIRouter(prefix="/api/v1")

#: the roles that may upload
UPLOADERS = frozenset({Role.CLINICIAN, Role.RADIOLOGIST, Role.ADMIN})
#: most files one upload may hold
MAX_FILES = 1000
_FIELDS = ("patient_id", "patient_name", "birth_date", "sex", "accession",
           "study_description", "modality", "body_part", "identifying_text")

_CTX, _SESSION = Depends(context), Depends(session)


def limit_bytes(ctx: WebContext) -> int:
    return ctx.settings.web.max_upload_mb * 1024 * 1024


async def read_upload(request: Request, limit: int) -> tuple[list[ingest.Upload],
                                                              ingest.Details]:
    """The upload's files and details, bounded (413, 411 without a length)."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(status_code=411, detail="send a Content-Length")
    if int(length) > limit:
        raise HTTPException(status_code=413, detail=f"larger than {limit // 2**20} MiB")
    form = await request.form(max_files=MAX_FILES, max_fields=50)
    try:
        uploads, total = [], 0
        for part in form.getlist("file"):
            if not isinstance(part, UploadFile):
                continue
            data = await part.read(limit - total + 1)
            total += len(data)
            if total > limit:
                raise HTTPException(status_code=413, detail=f"larger than {limit // 2**20} MiB")
            uploads.append(ingest.Upload(part.filename or "", data))
        values = {name: str(form.get(name) or "").strip() for name in _FIELDS}
    finally:
        await form.close()
    if not uploads:
        raise HTTPException(status_code=422, detail="no file in the upload (field 'file')")
    for name in ("modality", "sex", "body_part"):
        values[name] = values[name].upper()
    values["identifying_text"] = values["identifying_text"].lower()
    return uploads, ingest.Details(**values)


def take(ctx: WebContext, user: Session, where: str, uploads: list[ingest.Upload],
         details: ingest.Details) -> ingest.Imported:
    """Ingest the files and audit the upload; the errors as HTTP statuses."""
    def audit(outcome: str, detail: str, job: int | None = None) -> None:
        ctx.accounts.record(name=user.name, role=user.role, address=where, action="upload",
                            outcome=outcome, study_id=job, detail=detail)

    try:
        done = ingest.ingest(ctx.ledger, open_spool(ctx.settings), ctx.settings, uploads,
                             details, uploader=user.name)
    except ConfigError as exc:
        raise HTTPException(status_code=503, detail="; ".join(exc.problems)) from None
    except ingest.UnsupportedType as exc:
        audit("refused", str(exc))
        raise HTTPException(status_code=415, detail=str(exc)) from None
    except (ingest.MissingDetails, ingest.ArchiveRefused) as exc:
        audit("refused", str(exc))
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except TransientError as exc:
        audit("failed", str(exc))
        raise HTTPException(status_code=503, detail=str(exc)) from None
    summary = (f"{len(uploads)} file(s): {done.stored} stored, {done.duplicates} duplicate(s), "
               f"{len(done.quarantined)} quarantined")
    if done.attested:
        summary += (f"; {done.attested} picture(s) stated by the uploader to show no "
                    "identifying text")
    if not done.jobs:
        audit("refused", summary)
    for job in done.jobs:
        audit("ok", summary, job)
    return done


@route(router, "POST", "/upload", UPLOADERS)
async def upload(request: Request, user: Session = _SESSION,
                 ctx: WebContext = _CTX) -> dict[str, Any]:
    """Take the files in as received instances; answers the jobs they joined and what was
    quarantined."""
    uploads, details = await read_upload(request, limit_bytes(ctx))
    done = await run_in_threadpool(take, ctx, user, address(request), uploads, details)
    return done.as_json()
