"""Both languages are complete: every string the pages and labels use (extracted as pybabel
extracts it, with babel.cfg) has a translation in English and German, and no catalogue keeps
strings the pages no longer use. Also: the browser's Accept-Language picks the language."""

from __future__ import annotations

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from node.web.console import i18n
from node.web.console.charts import bar_chart, nice_top

CONSOLE = i18n.LOCALE_DIR.parent


def _used() -> set[str | tuple[str, ...]]:
    with (CONSOLE / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    found: set[str | tuple[str, ...]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(CONSOLE), method_map, options_map, keywords=keywords):
        found.add(message)
    return found


def test_english_and_german_translate_every_string_the_pages_use() -> None:
    used = _used()
    assert "Overview" in used and ("%(num)s job was queued again.",
                                   "%(num)s jobs were queued again.") in used
    for lang in i18n.LANGUAGES:
        with (i18n.LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
            catalogue = read_po(f, locale=lang)
        have = {m.id: m.string for m in catalogue if m.id}
        assert set(have) == used, (lang, set(used) ^ set(have))
        untranslated = [k for k, v in have.items() if not (all(v) if isinstance(v, tuple) else v)]
        assert untranslated == [], lang
        assert not [m.id for m in catalogue if m.id and m.fuzzy], lang


def test_the_german_catalogue_translates() -> None:
    de = i18n.translations("de")
    assert de.gettext("Overview") == "Übersicht"
    assert de.ngettext("%(num)s job was queued again.", "%(num)s jobs were queued again.",
                       3) == "%(num)s Aufträge wurden erneut eingereiht."


def test_accept_language_picks_the_language() -> None:
    assert i18n.negotiate("de-DE,de;q=0.9,en;q=0.8") == "de"
    assert i18n.negotiate("en-US,en;q=0.9,de;q=0.8") == "en"
    assert i18n.negotiate("fr-FR, de;q=0.5, en;q=0.4") == "de"  # the best one we have
    assert i18n.negotiate("de;q=0, en") == "en"  # q=0: not wanted
    assert i18n.negotiate("fr, it") == "en"  # none: English
    assert i18n.negotiate(None) == i18n.negotiate("") == "en"
    assert i18n.negotiate("de;q=bogus, en") == "en"
    assert i18n.negotiate("x" * 10_000 + ",de") == "en"  # read only so far


def test_the_chart_scales_to_a_round_top() -> None:
    assert [nice_top(n) for n in (0, 1, 3, 7, 10, 11, 180, 4_300)] == \
        [1, 1, 5, 10, 10, 20, 200, 5_000]
    from datetime import date, timedelta

    days = [(date(2026, 12, 1) + timedelta(days=k), k) for k in range(30)]
    chart = bar_chart(days)
    assert chart.top == 50 and len(chart.bars) == 30
    tallest, empty = chart.bars[-1], chart.bars[0]
    assert empty.height == 0 and empty.y == chart.base
    assert tallest.y > 0 and tallest.height == round((chart.base - 8) * 29 / 50, 1)
    assert [b.labelled for b in chart.bars].count(True) == 5  # the last day and every 7th
    assert chart.bars[-1].labelled
