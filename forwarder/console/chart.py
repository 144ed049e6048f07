"""The overview's chart: outcomes per minute over the last hour, as SVG geometry.

Each series differs by its dash pattern and its marker as well as its
colour, and the legend names it, so the chart reads without colour; the same
figures are in a table beside it for screen readers and for copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.console.display import utc

#: (counter name, label, dash pattern, marker) for each line.
SERIES = (
    ("delivered", "Delivered", "", "circle"),
    ("retried", "Retried", "8 4", "square"),
    ("dead_lettered", "Dead-lettered", "2 3", "triangle"),
)
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28


@dataclass
class Line:
    name: str
    label: str
    dash: str
    marker: str
    points: list[tuple[float, float]]
    total: int

    @property
    def path(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.points)


@dataclass
class Chart:
    width: int
    height: int
    peak: int
    lines: list[Line]
    #: (x, label) along the time axis; (y, label) along the count axis.
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    #: (minute start, {outcome: count}) per minute, oldest first, for the table.
    rows: list[tuple[float, dict[str, int]]]
    plot: tuple[float, float, float, float]

    @property
    def empty(self) -> bool:
        return self.peak == 0


def build(series: list[tuple[int, dict[str, int]]]) -> Chart:
    """The chart of ``Store.outcome_series`` (minute, counts) pairs."""
    peak = max((counts.get(name, 0) for _, counts in series for name, *_ in SERIES), default=0)
    top = _nice(peak)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    step = (x1 - x0) / max(1, len(series) - 1)

    def y(count: int) -> float:
        return y1 - (y1 - y0) * count / top

    lines = [Line(name, label, dash, marker,
                  [(x0 + i * step, y(counts.get(name, 0))) for i, (_, counts) in
                   enumerate(series)], sum(c.get(name, 0) for _, c in series))
             for name, label, dash, marker in SERIES]
    x_ticks = [(x0 + i * step, utc(minute * 60)[11:16]) for i, (minute, _) in enumerate(series)
               if minute % 10 == 0]
    y_ticks = [(y(v), f"{v:,}") for v in (0, top // 2, top)] if top > 1 else [(y(0), "0"),
                                                                             (y(1), "1")]
    rows = [(minute * 60.0, counts) for minute, counts in series]
    return Chart(WIDTH, HEIGHT, peak, lines, x_ticks, y_ticks, rows, (x0, y0, x1, y1))


def _nice(peak: int) -> int:
    """The top of the count axis: 1, 2 or 5 times a power of ten, at least ``peak``."""
    top = 1
    while top < peak:
        for factor in (2, 5 / 2, 2):
            top = int(top * factor)
            if top >= peak:
                break
    return max(top, 1)
