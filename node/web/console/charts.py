"""A bar chart's geometry, so that the template only draws rectangles (no chart library).

Pure: given (day, count) pairs it returns each bar's place in an SVG view box, the scale's
top value and its grid lines; the template writes them as ``<rect>`` and ``<line>`` elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

#: the view box the template declares (the SVG scales to the page's width)
WIDTH, HEIGHT = 1000, 200
#: room left of the bars for the scale, right of them for the last day's label, and under
#: them for the day labels
LEFT, RIGHT, BOTTOM = 44, 24, 26


@dataclass(frozen=True)
class Bar:
    day: date
    count: int
    x: float
    y: float
    width: float
    height: float
    #: the day is written under this bar (every seventh, and the last)
    labelled: bool

    @property
    def middle(self) -> float:
        return round(self.x + self.width / 2, 1)


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    #: (y, value) of each horizontal grid line, bottom up
    grid: list[tuple[float, int]]
    top: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    base: int = HEIGHT - BOTTOM


def nice_top(peak: int) -> int:
    """The scale's top: the smallest 1, 2 or 5 times a power of ten at or above ``peak``."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= peak:
                return step * top
        top *= 10


def bar_chart(days: list[tuple[date, int]]) -> Chart:
    top = nice_top(max((n for _, n in days), default=0))
    base = HEIGHT - BOTTOM
    plot = base - 8  # headroom above the tallest bar
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    bars = []
    for k, (day, count) in enumerate(days):
        height = plot * count / top
        bars.append(Bar(day, count, round(LEFT + k * slot + slot * 0.15, 1),
                        round(base - height, 1), round(slot * 0.7, 1), round(height, 1),
                        labelled=(len(days) - 1 - k) % 7 == 0))
    values = sorted({0, top // 2, top})  # whole numbers only: 0, 2, 5 for a top of 5
    grid = [(round(base - plot * v / top, 1), v) for v in values]
    return Chart(bars, grid, top)
