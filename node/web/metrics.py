"""``/metrics``: the node's Prometheus metrics, for a scraper, which has no login session.

The route is PUBLIC in the role table (no session). When ``web.metrics_token_env`` names an
environment variable, the route wants ``Authorization: Bearer <its value>`` instead (401
otherwise); when that variable is empty or unset it refuses every scrape (503) rather than
open a route the settings meant to close.
"""

from __future__ import annotations

import logging
import os
import secrets

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from node.core import metrics
from node.web.access import PUBLIC, route
from node.web.context import WebContext
from node.web.deps import context

log = logging.getLogger("node.web")
router = APIRouter()
_CTX = Depends(context)


def _check_token(request: Request, env: str) -> None:
    if not env:
        return
    token = os.environ.get(env, "")
    if not token:
        log.error("/metrics refused: web.metrics_token_env names %s, which is not set", env)
        raise HTTPException(status_code=503, detail="the metrics token is not set")
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(sent.strip().encode(),
                                                                 token.encode()):
        raise HTTPException(status_code=401, detail="a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})


@route(router, "GET", "/metrics", PUBLIC, response_class=Response)
def scrape(request: Request, ctx: WebContext = _CTX) -> Response:
    """The node's metrics in Prometheus text format (counters of every receiving process)."""
    _check_token(request, ctx.settings.web.metrics_token_env)
    try:
        body = metrics.exposition(metrics.LedgerGauges(ctx.ledger.engine, ctx.settings.var_path))
    except SQLAlchemyError as exc:
        log.error("/metrics: the ledger cannot be read (%s)", type(exc).__name__)
        raise HTTPException(status_code=503, detail="the ledger cannot be read") from None
    return Response(body, media_type=metrics.CONTENT_TYPE)
