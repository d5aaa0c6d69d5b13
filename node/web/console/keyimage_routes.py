"""The key images' two layers as PNG, for the Study page (``templates/key_images.html``).

``GET /studies/{id}/key-images/{run}/{index}/image.png?preset=NAME`` is the de-identified
slice in grey under a window preset; ``.../overlay.png`` the model's result on a transparent
layer. Only the roles that read a job's result files get them (``results.IDENTIFIED_FILES``:
radiologists, clinicians, admins): the pixels are the patient's images, even de-identified;
operators run the queues without them. The URL holds job, run and slice numbers and a preset
name, nothing about the patient. A browser may keep an image for its own user a few minutes
(``Cache-Control: private``); an unknown preset, or one that does not suit the image, is 400,
an image the node cannot show 404, each with a one-line plain-text reason.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse, Response

from node.core.accounts import Session
from node.core.errors import UnknownStudy
from node.core.ledger import StudyRow
from node.web.access import page_route
from node.web.console import keyimage_files, keyimages
from node.web.console.deps import page_allow, page_session
from node.web.context import WebContext
from node.web.deps import context
from node.web.results import IDENTIFIED_FILES

router = APIRouter()
_CTX, _USER = Depends(context), Depends(page_session)

#: how long a browser may keep an image for its user (seconds)
MAX_AGE_S = 300
_HEADERS = {"Cache-Control": f"private, max-age={MAX_AGE_S}", "Vary": "Cookie",
            "X-Content-Type-Options": "nosniff"}
_INDEX = Path(ge=0, le=100_000)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=_HEADERS)


def _refused(status: int, reason: str) -> Response:
    return PlainTextResponse(reason + "\n", status_code=status,
                             headers={"Cache-Control": "no-store"})


def _job(ctx: WebContext, study_id: int) -> StudyRow | None:
    try:
        return ctx.ledger.study_by_id(study_id)
    except UnknownStudy:
        return None


@page_route(router, "GET", "/studies/{study_id}/key-images/{run_id}/{index}/image.png",
            IDENTIFIED_FILES, page_allow, response_model=None)
def image(study_id: int, run_id: int, index: int = _INDEX,
          preset: str = Query("", max_length=32), user: Session = _USER,
          ctx: WebContext = _CTX) -> Response:
    """A key image's grey layer under the preset ``preset``."""
    chosen = keyimages.PRESETS.get(preset)
    if chosen is None:
        return _refused(400, f"unknown preset; one of: {', '.join(keyimages.PRESETS)}")
    row = _job(ctx, study_id)
    if row is None:
        return _refused(404, f"no job #{study_id}")
    try:
        return _png(keyimage_files.image(ctx, row, run_id, index, chosen))
    except keyimage_files.WrongPreset as exc:
        return _refused(400, str(exc))
    except keyimage_files.NotAvailable as exc:
        return _refused(404, str(exc))


@page_route(router, "GET", "/studies/{study_id}/key-images/{run_id}/{index}/overlay.png",
            IDENTIFIED_FILES, page_allow, response_model=None)
def overlay(study_id: int, run_id: int, index: int = _INDEX, user: Session = _USER,
            ctx: WebContext = _CTX) -> Response:
    """A key image's overlay: the model's result on a transparent layer."""
    row = _job(ctx, study_id)
    if row is None:
        return _refused(404, f"no job #{study_id}")
    try:
        return _png(keyimage_files.overlay(ctx, row, run_id, index))
    except keyimage_files.NotAvailable as exc:
        return _refused(404, str(exc))
