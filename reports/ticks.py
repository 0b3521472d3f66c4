"""Readable log-axis ticks: plain numbers ("0.5", "20", never "2x10^0"), chosen from nested
1-2-5 / 1-3-10 / decade sets, and the first set whose labels do not touch once the figure is
laid out (measured on the drawn figure, in display pixels, with a gap of `MIN_GAP_PT` points).

Only figures call these; a figure that needs a log axis calls `log_ratio_axis` (rate ratios,
always showing 1 when in range) or `log_count_axis` (patients per arm, counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

MIN_GAP_PT = 2.0
"""Smallest white space, in points, between two neighbouring tick labels."""

_RATIO_SETS = ([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50, 100],
               [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100],
               [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100],
               [0.01, 0.1, 1, 10, 100])


def _count_sets(hi: float) -> list[list[float]]:
    """1-2-5, 1-5 and decade ticks from 1 up to the first power of ten at or above `hi`."""
    top = int(np.ceil(np.log10(max(hi, 10.0))))
    decades = [10.0 ** k for k in range(top + 1)]
    return [[d * m for d in decades for m in (1, 2, 5)], [d * m for d in decades for m in (1, 5)], decades]


def _label(t: float) -> str:
    return f"{t:g}" if t < 1e5 else f"{t:,.0f}"


def _labels_touch(ax: Axes, axis: str) -> bool:
    """True when two drawn tick labels of `ax`'s x or y axis are closer than MIN_GAP_PT."""
    fig = ax.figure
    fig.draw_without_rendering()
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(a.get_view_interval())
    gap = MIN_GAP_PT * fig.dpi / 72.0
    boxes = sorted((t.label1.get_window_extent() for t in a.get_major_ticks()
                    if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi),
                   key=lambda b: b.x0 if axis == "x" else b.y0)
    for b0, b1 in zip(boxes, boxes[1:]):
        if (b1.x0 - b0.x1 if axis == "x" else b1.y0 - b0.y1) < gap:
            return True
    return False


def _fit(ax: Axes, axis: str, sets: Sequence[Sequence[float]], lo: float, hi: float, max_ticks: int) -> None:
    """Set the first tick set (restricted to [lo, hi]) with at most `max_ticks` ticks whose labels do not touch."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    a.set_minor_locator(NullLocator())
    a.set_minor_formatter(NullFormatter())
    chosen: list[float] = []
    for cand in sets:
        ticks = [t for t in cand if lo <= t <= hi]
        if not ticks:
            continue
        chosen = ticks
        a.set_major_locator(FixedLocator(ticks))
        a.set_ticklabels([_label(t) for t in ticks])
        if len(ticks) <= max_ticks and not _labels_touch(ax, axis):
            return
    if len(chosen) > 2:  # even decades touch (a very narrow axis): the two ends only
        ends = [chosen[0], chosen[-1]]
        a.set_major_locator(FixedLocator(ends))
        a.set_ticklabels([_label(t) for t in ends])


def log_ratio_axis(ax: Axes, values: np.ndarray, *, axis: str = "x", max_ticks: int = 9) -> None:
    """Log scale for rate ratios spanning `values` (and 1), ticks 0.05, 0.1, 0.2, 0.5, 1, 2, ..."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=float)
    lo, hi = (v.min(), v.max()) if len(v) else (0.1, 2.0)
    lo, hi = min(lo, 0.9), max(hi, 1.1)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo / 1.3, hi * 1.3)
    _fit(ax, axis, _RATIO_SETS, lo / 1.05, hi * 1.05, max_ticks)


def log_count_axis(ax: Axes, lo: float, hi: float, *, axis: str = "x", max_ticks: int = 9) -> None:
    """Log scale from `lo` to `hi` (counts >= 1, e.g. patients per arm), ticks 1, 2, 5, 10, 20, ..."""
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)
    _fit(ax, axis, _count_sets(hi), lo, hi, max_ticks)
