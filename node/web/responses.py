"""JSON that is safe to put anywhere, and the security headers every response carries.

Values in the API's JSON come from peers (a Series Description, an AE title, a reason quoting a
data set): ``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so a
body that ends up inside an HTML page or is sniffed as HTML by an old browser runs nothing. It
stays the same JSON: in JSON these three characters can only occur inside strings, where the
escapes mean the same characters.

:class:`SafeJSONResponse` is the app's ``default_response_class``. FastAPI (0.165) however
writes a route that declares its return type straight to bytes with pydantic, past the response
class, and its error handlers use Starlette's own ``JSONResponse``; so :class:`SecurityHeaders`
escapes every JSON body on the way out as well (escaping twice changes nothing: the escapes
hold none of the three characters). It also adds, to every response, ``X-Content-Type-Options:
nosniff`` and ``Referrer-Policy: no-referrer``, and to the API's (``/api/``) ``Cache-Control:
no-store`` (no patient data left in a shared cache) and a Content-Security-Policy that allows
nothing (``default-src 'none'``: JSON needs no scripts, styles or frames). The OpenAPI page
(``/api/v1/docs``) is HTML that loads Swagger UI, so it gets no CSP.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ESCAPES = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))
#: the API's responses: JSON only; nothing to load, nothing to frame
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_PATH = "/api/v1/docs"


def escape_json(body: bytes) -> bytes:
    """``<``, ``>``, ``&`` of a JSON text as ``\\u`` escapes: the same JSON value."""
    for raw, escaped in _ESCAPES:
        body = body.replace(raw, escaped)
    return body


class SafeJSONResponse(JSONResponse):
    """Starlette's JSONResponse, with ``<``, ``>``, ``&`` escaped."""

    def render(self, content: Any) -> bytes:
        return escape_json(super().render(content))


class SecurityHeaders:
    """ASGI middleware: the headers above on every response, JSON bodies escaped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        api = path.startswith("/api/")
        rewrite = scope.get("method") != "HEAD"
        held: list[Message] = []
        body: list[bytes] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if api:
                    headers["Cache-Control"] = "no-store"
                    if path != DOCS_PATH:
                        headers["Content-Security-Policy"] = API_CSP
                if rewrite and headers.get("content-type", "").startswith("application/json"):
                    held.append(message)  # sent with the escaped body's length
                    return
            elif message["type"] == "http.response.body" and held:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                escaped = escape_json(b"".join(body))
                MutableHeaders(scope=held[0])["Content-Length"] = str(len(escaped))
                await send(held[0])
                await send({"type": "http.response.body", "body": escaped})
                return
            await send(message)

        await self.app(scope, receive, send_with_headers)
