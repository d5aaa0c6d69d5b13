"""Which required-series rules (``[[completion.required_series]]``) an instance counts towards.

Shared by the receiver, which keeps the count per rule as each instance arrives, by recovery,
which counts again what it restores, and by the completion rule, which compares the counts with
each rule's minimum. Pure: settings in, rule names out.
"""

from __future__ import annotations

import re
from functools import lru_cache

from node.core.settings import RequiredSeries


def matching_rules(
    rules: tuple[RequiredSeries, ...], modality: str, series_description: str
) -> tuple[str, ...]:
    """Names of the required-series rules an instance with these attributes counts towards."""
    return tuple(r.name for r in rules if _matches(r, modality, series_description))


def _matches(rule: RequiredSeries, modality: str, series_description: str) -> bool:
    if rule.modality and rule.modality.upper() != modality.upper():
        return False
    if rule.series_description:
        return _regex(rule.series_description).search(series_description) is not None
    return True


@lru_cache(maxsize=64)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
