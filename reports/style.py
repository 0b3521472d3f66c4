"""One look for every figure: the style file, arm colours, and deterministic saving.

- `STYLE_FILE` (`reports/mseval.mplstyle`): fonts, sizes, colour-blind-safe palette (Okabe & Ito),
  vector text (`pdf.fonttype` 42, SVG text kept as text), a fixed SVG hash salt.
- `arm_colors(arms)`: arm -> colour, in arms-table order, so an arm has the same colour in every
  figure (the reference arm, first in the default table, is black).
- `save_figure(fig, base)`: PDF + 300-dpi PNG (+ SVG on request) with dates and software
  versions stripped, so the same figure gives byte-identical files.

Authors: `with reports.style.context(): fig = reports.figures.forest_plot(...)`, then
`reports.style.save_figure(fig, "fig2")`; every figure function already applies the style.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

STYLE_FILE = Path(__file__).with_name("mseval.mplstyle")

# Okabe & Ito (2008) "Color Universal Design": distinguishable with protanopia, deuteranopia, tritanopia.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")
# Beyond eight arms: Paul Tol's "muted" scheme (also colour-blind safe).
TOL_MUTED = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499", "#DDDDDD")
ARM_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h", "<", ">")

# Fixed metadata: no dates, no version strings (byte-identical files from identical figures).
PDF_METADATA = {"Creator": "mseval", "Producer": "mseval", "CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": "mseval"}
SVG_METADATA = {"Creator": "mseval", "Date": None, "Format": None, "Type": None}


def rc() -> dict[str, Any]:
    """The style as an rcParams dict."""
    return dict(matplotlib.rc_params_from_file(str(STYLE_FILE), use_default_template=False))


@contextlib.contextmanager
def context() -> Iterator[None]:
    """Apply the mseval style inside a `with` block (figure creation and saving)."""
    with plt.style.context(str(STYLE_FILE)):
        yield


def use() -> None:
    """Apply the mseval style globally (e.g. at the top of an author's notebook)."""
    plt.style.use(str(STYLE_FILE))


def arm_order(arms: pd.DataFrame | Sequence[str]) -> list[str]:
    """Arm identifiers in arms-table order."""
    if isinstance(arms, pd.DataFrame):
        return [str(a) for a in arms["arm"]]
    return [str(a) for a in arms]


def arm_labels(arms: pd.DataFrame | Sequence[str]) -> dict[str, str]:
    """arm -> display label (the arms table's `label`, else the identifier)."""
    if isinstance(arms, pd.DataFrame) and "label" in arms.columns:
        return {str(a): str(lab) for a, lab in zip(arms["arm"], arms["label"])}
    return {a: a for a in arm_order(arms)}


def arm_colors(arms: pd.DataFrame | Sequence[str]) -> dict[str, str]:
    """arm -> colour, by position in the arms table (Okabe-Ito, then Tol muted, then repeating)."""
    palette = OKABE_ITO + TOL_MUTED
    return {a: palette[i % len(palette)] for i, a in enumerate(arm_order(arms))}


SINGLE = 3.5
"""Single-column figure width, inches (89 mm)."""
DOUBLE = 7.0
"""Double-column (full-width) figure width, inches (178-183 mm)."""
MIN_FONT_PT = 6.0
"""No text in a figure is smaller than this (journal minimum at final size)."""
ARM_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2)), (0, (3, 1, 1, 1)))


def arm_linestyles(arms: pd.DataFrame | Sequence[str]) -> dict[str, Any]:
    """arm -> line style (a second cue beside colour in line figures)."""
    return {a: ARM_LINESTYLES[i % len(ARM_LINESTYLES)] for i, a in enumerate(arm_order(arms))}


def arm_markers(arms: pd.DataFrame | Sequence[str]) -> dict[str, str]:
    """arm -> marker (a second cue beside colour)."""
    return {a: ARM_MARKERS[i % len(ARM_MARKERS)] for i, a in enumerate(arm_order(arms))}


def new_figure(width: float = DOUBLE, height: float = 4.0, **kw: Any) -> Figure:
    """A Figure (not registered with pyplot: no global state, no leaks) under the mseval style.

    width, height: inches; width is SINGLE (3.5 in, one journal column) or DOUBLE (7.0 in, full width)."""
    if width not in (SINGLE, DOUBLE):
        raise ValueError(f"figure width must be {SINGLE} or {DOUBLE} in (journal columns), got {width}")
    with context():
        return Figure(figsize=(width, height), **kw)


def save_figure(fig: Figure, base: str | Path, formats: Sequence[str] = ("pdf", "png"), *, dpi: int = 300) -> list[Path]:
    """Write `base.<fmt>` for each format with fixed metadata; returns the paths written.

    PNG at `dpi` (300 for print); PDF with embedded TrueType (fonttype 42); SVG text as text.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        path.write_bytes(figure_bytes(fig, fmt, dpi=dpi))
        written.append(path)
    return written


def figure_renderings(fig: Figure, formats: Sequence[str], *, figure_dpi: int, html_dpi: int) -> tuple[dict[str, bytes], bytes]:
    """({format: the file's bytes at figure_dpi}, the HTML's PNG at html_dpi): the figure drawn once per distinct
    output (a PNG file at the HTML's resolution is the HTML's PNG)."""
    files = {fmt: figure_bytes(fig, fmt, dpi=figure_dpi) for fmt in formats}
    html = files["png"] if "png" in files and figure_dpi == html_dpi else figure_bytes(fig, "png", dpi=html_dpi)
    return files, html


def figure_bytes(fig: Figure, fmt: str = "png", *, dpi: int = 300) -> bytes:
    """The figure encoded as `fmt` (png, pdf, svg), deterministic."""
    meta = {"pdf": PDF_METADATA, "png": PNG_METADATA, "svg": SVG_METADATA}.get(fmt)
    if meta is None:
        raise ValueError(f"unsupported figure format {fmt!r} (png, pdf, svg)")
    buf = io.BytesIO()
    with context():
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()
