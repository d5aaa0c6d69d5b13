"""The console's languages: the browser's Accept-Language picks one, Babel catalogues translate.

The catalogues are the ``.po`` files under ``locale/<lang>/LC_MESSAGES/``, read once at start-up
(babel.messages.pofile) and turned into gettext translations in memory, so no compiled ``.mo``
file is kept in git or has to be built before the wheel. Extracting new strings and updating
the catalogues (from the repository root)::

    pybabel extract -F node/web/console/babel.cfg -k N_ --no-location --sort-output \\
        -o node/web/console/locale/messages.pot node/web/console
    pybabel update -i node/web/console/locale/messages.pot -d node/web/console/locale

``tests/web/console/test_catalogues.py`` fails while a string of a page is missing from either
language.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from babel.core import Locale, UnknownLocaleError, negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).with_name("locale")
#: the console's languages; the first is the fallback
LANGUAGES = ("en", "de")
#: an Accept-Language header longer than this, or with more entries, is read only this far
_MAX_HEADER, _MAX_ENTRIES = 512, 16


def preferences(header: str | None) -> list[str]:
    """The languages of an Accept-Language header, most wanted first (RFC 9110, 12.5.4)."""
    wanted: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "")[:_MAX_HEADER].split(",")[:_MAX_ENTRIES]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        if tag and tag != "*" and quality > 0:
            wanted.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(wanted)]


def negotiate(header: str | None) -> str:
    """The console language for an Accept-Language header (English when none fits)."""
    chosen = negotiate_locale(preferences(header), LANGUAGES, sep="-")
    if chosen is None:  # "de_AT"-style tags
        chosen = negotiate_locale(preferences(header), LANGUAGES, sep="_")
    return chosen or LANGUAGES[0]


@cache
def translations(lang: str) -> Translations:
    """The language's catalogue as gettext translations, read from its .po file once."""
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalogue = read_po(f, locale=lang)
    compiled = io.BytesIO()
    write_mo(compiled, catalogue)
    compiled.seek(0)
    return Translations(compiled)


@cache
def locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(LANGUAGES[0])
