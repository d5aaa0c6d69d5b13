"""The FastAPI app: the health routes and the API, documented by OpenAPI at /api/v1/docs."""

from __future__ import annotations

from fastapi import FastAPI

from node import __version__
from node.web import (
    api,
    audit,
    feedback,
    health,
    metrics,
    notes,
    quarantine,
    results,
    review,
    statistics,
    upload,
)
from node.web.console import install as install_console
from node.web.context import WebContext
from node.web.responses import SafeJSONResponse, SecurityHeaders
from node.web.tokens import router as tokens_router


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="dicom-node", version=__version__, openapi_url="/api/v1/openapi.json",
                  docs_url="/api/v1/docs", redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  default_response_class=SafeJSONResponse)
    app.add_middleware(SecurityHeaders)
    app.state.ctx = ctx
    app.include_router(health.router)
    app.include_router(api.router)
    app.include_router(tokens_router)
    app.include_router(audit.router)
    app.include_router(results.router)
    app.include_router(statistics.router)
    app.include_router(metrics.router)
    app.include_router(quarantine.router)
    app.include_router(feedback.router)
    app.include_router(upload.router)
    app.include_router(review.router)
    app.include_router(notes.router)
    install_console(app)  # the console's pages at /, /studies, ... and /static
    return app
