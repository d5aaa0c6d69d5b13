"""Pages from templates: one Jinja2 environment per language, autoescaped, with the security
headers every page carries.

Templates hold no logic beyond loops and conditions; figures come in ready to show, and dates,
numbers and sizes are formatted here by Babel in the page's language. Times are kept in the
ledger as naive UTC and shown in the node machine's local time zone, named in the footer.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

from babel.dates import format_datetime, format_skeleton, format_timedelta
from babel.numbers import format_decimal
from babel.units import format_unit
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from node import __version__
from node.web.console import i18n

#: every page: nothing from elsewhere, no inline script or style, never inside a frame
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # pages show what one user may see, as of now: no cache keeps them
    "Cache-Control": "no-store",
}


def local_zone() -> Any:
    """The node machine's time zone now (times on the pages are in it)."""
    return datetime.now().astimezone().tzinfo


@cache
def environment(lang: str) -> Environment:
    """The Jinja2 environment of one language (built once; environments are thread-safe)."""
    env = Environment(
        loader=PackageLoader("node.web.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined, extensions=["jinja2.ext.i18n"],
        trim_blocks=True, lstrip_blocks=True,
    )
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    loc = i18n.locale(lang)

    def when(value: datetime | None) -> str:
        if value is None:
            return "\u2013"  # an en dash: no time
        return format_datetime(value, "medium", tzinfo=local_zone(), locale=loc)

    def day(value: date) -> str:
        return format_skeleton("MMMd", datetime(value.year, value.month, value.day), locale=loc)

    def number(value: float) -> str:
        return format_decimal(value, locale=loc)

    def size(value: int) -> str:
        return format_unit(round(value / 1e9, 1), "digital-gigabyte", length="short",
                           locale=loc)

    def duration(seconds: float) -> str:
        return format_timedelta(timedelta(seconds=seconds), threshold=1.5, locale=loc)

    env.filters.update(when=when, day=day, number=number, size=size, duration=duration)
    env.globals.update(lang=lang, version=__version__)
    return env


def page(request: Request, template: str, *, status: int = 200,
         **context: Any) -> HTMLResponse:
    """One page in the language the browser asks for, with the security headers."""
    lang = i18n.negotiate(request.headers.get("accept-language"))
    zone = datetime.now().astimezone().strftime("%Z")
    html = environment(lang).get_template(template).render(zone=zone, **context)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    response.headers["Content-Language"] = lang
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response
