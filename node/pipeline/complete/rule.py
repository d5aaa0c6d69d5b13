"""Study completion: a pure rule over a study's progress, the clock and the settings.

A study is complete when every required-series rule is met (if any are configured) and no
instance arrived for ``quiet_period_s``, or, without waiting, once an association of a peer
that sends whole studies (``whole_study_senders``) delivered it and was released, and no
instance arrived after that release (a late one re-opens the study, and then its quiet period,
or the next release, decides again). If that has not happened ``max_wait_s`` after the study
was opened, ``max_wait_action`` decides: ``proceed`` (complete anyway), ``hold`` (wait for an
operator's ``force-complete``) or ``discard`` (keep the files, never process).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from node.core.settings import CompletionSettings, RequiredSeries


@dataclass(frozen=True)
class StudyProgress:
    opened_at: datetime
    last_received_at: datetime
    instances: int
    rule_counts: Mapping[str, int]
    #: when a whole-study sender's association that delivered the study was released
    released_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "complete", "hold", "discard"]
    reason: str


WAIT = Decision("wait", "")


def decide(progress: StudyProgress, settings: CompletionSettings, now: datetime) -> Decision:
    quiet = (now - progress.last_received_at).total_seconds() >= settings.quiet_period_s
    missing = unmet_rules(progress.rule_counts, settings.required_series)
    if released_whole(progress) and not missing:
        return Decision("complete", "released")
    if quiet and not missing:
        return Decision("complete", "rules-met" if settings.required_series else "quiet-period")
    if (now - progress.opened_at).total_seconds() >= settings.max_wait_s:
        action = {"proceed": "complete", "hold": "hold", "discard": "discard"}[
            settings.max_wait_action
        ]
        return Decision(action, "max-wait")  # type: ignore[arg-type]
    return WAIT


def released_whole(progress: StudyProgress) -> bool:
    """Delivered by a whole-study sender whose association was released, nothing since."""
    released = progress.released_at
    return released is not None and released >= progress.last_received_at


def unmet_rules(counts: Mapping[str, int], rules: tuple[RequiredSeries, ...]) -> list[str]:
    return [r.name for r in rules if counts.get(r.name, 0) < r.min_instances]
