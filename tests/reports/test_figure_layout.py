"""Every figure a report saves is journal-ready: 3.5 or 7.0 in wide, no text under 6 pt, and no
text clipped by the canvas or overlapping other text (bounding boxes of every visible text
artist after drawing, in display pixels, with a 0.5 px tolerance for antialiasing)."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from reports.style import DOUBLE, MIN_FONT_PT, SINGLE

TOL = 0.5


def text_problems(fig) -> list[str]:  # noqa: ANN001
    """Every text under MIN_FONT_PT, outside the canvas, or overlapping another text, as a message."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    boxes, out = [], []
    all_ticks, drawn = set(), set()  # tick labels outside the view limits exist but are not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.majorTicks + axis.minorTicks:
                all_ticks |= {id(tick.label1), id(tick.label2)}
            for tick in axis._update_ticks():
                drawn |= {id(tick.label1), id(tick.label2)}
    for t in fig.findobj(Text):
        if id(t) in all_ticks and id(t) not in drawn:
            continue
        if not t.get_visible() or not t.get_text().strip() or (t.axes is not None and not t.axes.get_visible()):
            continue
        if t.get_fontsize() < MIN_FONT_PT:
            out.append(f"{t.get_text()!r}: {t.get_fontsize():.1f} pt")
        bb = t.get_window_extent(r)
        if bb.width == 0 or bb.height == 0:
            continue
        if bb.x0 < -TOL or bb.y0 < -TOL or bb.x1 > W + TOL or bb.y1 > H + TOL:
            out.append(f"{t.get_text()!r} leaves the canvas ({bb.x0:.0f}, {bb.y0:.0f}, {bb.x1:.0f}, {bb.y1:.0f}) of ({W:.0f}, {H:.0f})")
        boxes.append((t.get_text(), bb))
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        ix = min(a.x1, b.x1) - max(a.x0, b.x0)
        iy = min(a.y1, b.y1) - max(a.y0, b.y0)
        if ix > TOL and iy > TOL:
            out.append(f"{ta!r} overlaps {tb!r}")
    return out


@pytest.fixture(scope="module")
def saved_figures(tmp_path_factory: pytest.TempPathFactory, ) -> dict:
    """Every Figure object the report builder saves (captured at figure_renderings), by name order."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial
    from reports import builder
    from reports.builder import ReportSettings, build_report

    root = tmp_path_factory.mktemp("layout")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=3, shape=(32, 38, 32), seed=8, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "fc", ForecasterSpec("oracle", samples=10, seed=3))  # 10: every figure drawn (PIT, coverage need 10)
    seen: dict[int, object] = {}
    original = builder.figure_renderings

    def capture(fig, formats, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.setdefault(id(fig), fig)
        return original(fig, formats, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(builder, "figure_renderings", capture)
    try:
        build_report(root / "cohort", root / "fc", root / "report",
                     settings=ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=2, figure_dpi=40, html_dpi=30, figure_formats=("png",)))
    finally:
        mp.undo()
    return list(seen.values())


def test_every_figure_has_a_journal_width(saved_figures):
    assert len(saved_figures) >= 12
    widths = sorted({round(float(f.get_size_inches()[0]), 2) for f in saved_figures})
    assert set(widths) <= {SINGLE, DOUBLE}, widths


def test_no_text_is_small_clipped_or_overlapping(saved_figures):
    problems = {}
    for fig in saved_figures:
        p = text_problems(fig)
        if p:
            title = next((t.get_text() for ax in fig.axes for t in (ax.title, ax._left_title) if t.get_text()), "?")
            problems[title] = p[:6]
    assert problems == {}


def test_the_check_catches_overlap_and_clipping():
    from reports.style import new_figure

    fig = new_figure(SINGLE, 2.0)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.5, 0.5, "second label", transform=ax.transAxes)
    ax.text(1.2, 0.5, "far outside the canvas", transform=ax.transAxes)
    ax.text(0.1, 0.1, "tiny", fontsize=5)
    p = text_problems(fig)
    assert any("overlaps" in x for x in p) and any("leaves the canvas" in x for x in p) and any("5.0 pt" in x for x in p)


@pytest.mark.parametrize("hi", [20, 300, 2000])
@pytest.mark.parametrize("width", [SINGLE, DOUBLE])
def test_log_axes_have_plain_labels_that_do_not_touch(hi, width):
    """A log axis of patients per arm (2..hi) or of rate ratios, in a one- or two-column figure:
    plain-number labels ('20', never '2x10^1'), 1 shown on a ratio axis, and no two labels overlapping."""
    from reports.style import new_figure
    from reports.ticks import log_count_axis, log_ratio_axis

    fig = new_figure(width, 2.5)
    ax_n, ax_r = fig.subplots(1, 2)
    ax_n.plot([2, hi], [0, 1])
    log_count_axis(ax_n, 2, hi)
    log_ratio_axis(ax_r, [0.02, hi / 10])
    assert text_problems(fig) == []
    for ax in (ax_n, ax_r):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(labels) >= 2 and not any("times" in s or "^" in s for s in labels), labels
    assert "1" in [t.get_text() for t in ax_r.get_xticklabels()]
