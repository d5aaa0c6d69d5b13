"""The API on uvicorn, in a thread of ``serve``: started with the node, stopped with it.

uvicorn's own signal handling is not used (only the main thread may take signals, and ``serve``
already does); its logging goes through the node's, without access lines, so request paths and
addresses never reach the node's log.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from node.core.errors import NodeError
from node.web.app import create_app
from node.web.context import WebContext

log = logging.getLogger("node.web")


class WebServer:
    def __init__(self, ctx: WebContext) -> None:
        w, tls = ctx.settings.web, ctx.settings.scp.tls
        config = uvicorn.Config(
            create_app(ctx), host=w.host, port=w.port, log_config=None, access_log=False,
            log_level="warning", ssl_certfile=tls.certificate if w.tls else None,
            ssl_keyfile=tls.private_key if w.tls else None, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self.url = f"{'https' if w.tls else 'http'}://{w.host}:{w.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start listening; a one-line NodeError when it cannot."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise NodeError(f"the web API could not listen on {self.url}")
            time.sleep(0.02)
        log.info("web API on %s/api/v1 (health: /healthz, /readyz)", self.url)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
