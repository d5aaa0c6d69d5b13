"""``/healthz`` (the process answers) and ``/readyz`` (it can do its work), without login."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from node.core import db
from node.web.access import PUBLIC, route
from node.web.context import WebContext
from node.web.deps import context

router = APIRouter()
_CTX = Depends(context)


@route(router, "GET", "/healthz", PUBLIC)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _ledger_ok(ctx: WebContext) -> bool:
    try:
        with db.reader(ctx.ledger.engine) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


@route(router, "GET", "/readyz", PUBLIC, response_model=None)
def readyz(ctx: WebContext = _CTX) -> JSONResponse:
    """503 unless the ledger answers, the disk under var_dir is above the watermark
    (scp.min_free_disk_mb, below which C-STORE is refused) and every enabled model is loaded."""
    s = ctx.settings
    try:
        free_mb = shutil.disk_usage(s.var_path).free // 2**20
    except OSError:
        free_mb = -1
    checks: dict[str, Any] = {
        "ledger": _ledger_ok(ctx),
        "disk": free_mb >= s.scp.min_free_disk_mb,
        "models": ctx.expected_models <= set(ctx.models),
    }
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
