"""The confidentiality profile as data: PS3.15 Table E.1-1 plus the options chosen in settings.

``config/deid/table-e1-1.csv`` lists every attribute of the table with its Basic Profile action
and the action of each option column. :func:`load_profile` resolves one action per attribute for
the enabled options; the profile's SHA-256 (table file + options) identifies it in the audit
trail and in the de-identified objects.

Resolution: with no option touching an attribute its Basic Profile action applies. An enabled
option's action replaces it; where several enabled options name the attribute, ``C`` (clean)
wins over ``K`` (keep), so the stricter one applies. Combined basic actions are resolved without
IOD tables, always to a choice that keeps the object valid: anything with ``U`` replaces the
UID; ``X/Z/D``, ``X/D`` and ``Z/D`` become ``D`` (a dummy value is valid for a Type 1
attribute); ``X/Z`` becomes ``Z`` (an empty value is valid for Types 2 and 3).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from node.core.errors import ConfigError
from node.core.settings import DeidSettings

DEFAULT_TABLE = Path(__file__).resolve().parents[3] / "config" / "deid" / "table-e1-1.csv"


class Action(StrEnum):
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


#: option column -> settings field and CID 7050 code (DCM) naming it in the output
OPTIONS: dict[str, tuple[str, str, str]] = {
    "retain_safe_private": ("retain_safe_private", "113111", "Retain Safe Private Option"),
    "retain_uids": ("retain_uids", "113110", "Retain UIDs Option"),
    "retain_device_identity": ("retain_device_identity", "113109", "Retain Device Identity Option"),
    "retain_institution_identity": (
        "retain_institution_identity", "113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": (
        "retain_patient_characteristics", "113108", "Retain Patient Characteristics Option"),
    "retain_long_full_dates": (
        "retain_long_full_dates", "113106",
        "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": (
        "retain_long_modified_dates", "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("clean_descriptors", "113105", "Clean Descriptors Option"),
    "clean_structured_content": (
        "clean_structured_content", "113104", "Clean Structured Content Option"),
    "clean_graphics": ("clean_graphics", "113103", "Clean Graphics Option"),
}
#: at most this many tags' actions are remembered per profile (a few hundred occur in practice)
_RESOLVED_MAX = 65536

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")


@dataclass(frozen=True)
class Profile:
    """Resolved actions: exact tags, and (mask, value) patterns for repeating groups."""

    actions: dict[int, Action]
    patterns: tuple[tuple[int, int, Action], ...]
    options: tuple[str, ...]
    settings: DeidSettings
    digest: str
    date_options: frozenset[str] = field(default_factory=frozenset)
    #: every tag asked about so far -> its action (exact, by pattern, or None): a data set's
    #: tags recur in every instance, so each one is resolved once per profile
    _resolved: dict[int, Action | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def action(self, tag: int) -> Action | None:
        try:
            return self._resolved[tag]
        except KeyError:
            pass
        found = self.actions.get(tag)
        if found is None:
            found = next((act for mask, value, act in self.patterns if tag & mask == value), None)
        if len(self._resolved) < _RESOLVED_MAX:  # bounded: private or odd tags may be many
            self._resolved[tag] = found
        return found

    @property
    def option_codes(self) -> list[tuple[str, str]]:
        return [(OPTIONS[o][1], OPTIONS[o][2]) for o in self.options]


def _resolve_basic(code: str) -> Action:
    code = code.strip().rstrip("*")
    if "U" in code:
        return Action.UID
    if "D" in code:
        return Action.DUMMY
    if "Z" in code:
        return Action.EMPTY
    if code == "X":
        return Action.REMOVE
    if code == "K":
        return Action.KEEP
    if code == "C":
        return Action.CLEAN
    raise ValueError(code)


def _resolve(row: dict[str, str], enabled: tuple[str, ...]) -> Action:
    chosen = [row[o].strip().rstrip("*") for o in enabled if row.get(o, "").strip()]
    if "C" in chosen:
        return Action.CLEAN
    if "K" in chosen:
        return Action.KEEP
    return _resolve_basic(row["basic"])


def _pattern(tag: str) -> tuple[int, int]:
    mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
    value = int("".join("0" if c == "x" else c for c in tag), 16)
    return mask, value


def load_profile(settings: DeidSettings) -> Profile:
    path = Path(settings.table) if settings.table else DEFAULT_TABLE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"deid.table: cannot read {path} ({type(exc).__name__})"]) from None
    enabled = tuple(o for o, (attr, _, _) in OPTIONS.items() if getattr(settings, attr))
    rows = csv.DictReader(io.StringIO("".join(
        line for line in text.splitlines(keepends=True) if not line.startswith("#"))))
    actions: dict[int, Action] = {}
    patterns: list[tuple[int, int, Action]] = []
    for number, row in enumerate(rows, start=2):
        tag = row["tag"].strip()
        try:
            action = _resolve(row, enabled)
        except (KeyError, ValueError):
            raise ConfigError([f"deid.table: {path}: row {number} has no valid action"]) from None
        if "x" in tag:
            mask, value = _pattern(tag)
            patterns.append((mask, value, action))
        else:
            actions[int(tag, 16)] = action
    if not actions:
        raise ConfigError([f"deid.table: {path}: no attributes"])
    digest = hashlib.sha256(text.encode() + repr(sorted(enabled)).encode()
                            + repr(settings.safe_private).encode()).hexdigest()
    return Profile(actions=actions, patterns=tuple(patterns), options=enabled,
                   settings=settings, digest=digest)
