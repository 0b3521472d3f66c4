"""How a report prints a number: the one estimability rule (`mseval.stats.estimability`) decides
whether an estimate is shown; ranges read "-2.89 to -1.76" (never "-2.89--1.76").

Every table cell, headline and figure annotation of a report goes through `ratio_text`,
`additive_text` or `num`, so a quantity that is not estimable is printed nowhere as a number.
"""

from __future__ import annotations

import math
from typing import Any

from mseval.stats.estimability import assess_additive, assess_ratio

NOT_ESTIMABLE = "not estimable"


def num(x: Any, digits: int = 2) -> str:
    """A finite number with `digits` decimals (small values with two significant digits); 'NA' otherwise."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x) if x is not None else "NA"
    if not math.isfinite(f):
        return "NA"
    if f != 0 and abs(f) < 10 ** -digits:
        return f"{f:.2g}" if abs(f) >= 1e-4 else f"{f:.1e}"
    return f"{f:.{digits}f}"


def interval(lo: Any, hi: Any, digits: int = 2) -> str:
    """'-2.89 to -1.76'."""
    return f"{num(lo, digits)} to {num(hi, digits)}"


def _with_ci(est: Any, lo: Any, hi: Any, digits: int) -> str:
    s = num(est, digits)
    if num(lo) == "NA" or num(hi) == "NA":
        return s
    return f"{s} ({interval(lo, hi, digits)})"


def _given(*v: Any) -> bool:
    return all(x is not None and not (isinstance(x, float) and math.isnan(x)) for x in v)


def ne_text(note: str) -> str:
    """'not estimable (reason)'; a reason given twice (by the analysis and by the shared rule) is printed once."""
    note = "; ".join(dict.fromkeys(p.strip() for p in note.split(";") if p.strip())) if note else ""
    return f"{NOT_ESTIMABLE} ({note})" if note else NOT_ESTIMABLE


def flagged(estimable: Any) -> bool:
    """True when a table's `estimable` cell says False (bool, 0, 'False'); missing means not flagged."""
    if estimable is None or (isinstance(estimable, float) and math.isnan(estimable)):
        return False
    if isinstance(estimable, str):
        return estimable.strip().lower() in ("false", "0", "no")
    return not bool(estimable)


def ratio_ok(est: Any, lo: Any = None, hi: Any = None, *, estimable: Any = True, note: Any = "", reasons: tuple[str, ...] = ()) -> tuple[bool, str]:
    """The shared ratio rule, AND-ed with a table's own `estimable`/`note` columns when present."""
    extra = list(reasons)
    if flagged(estimable):
        extra.append(note if isinstance(note, str) and note else "flagged by the analysis")
    return assess_ratio(est, lo if _given(lo, hi) else None, hi if _given(lo, hi) else None, reasons=extra)


def ratio_text(est: Any, lo: Any = None, hi: Any = None, *, digits: int = 2, **kw: Any) -> str:
    """'0.47 (0.24 to 0.90)' or 'not estimable (reason)'."""
    ok, why = ratio_ok(est, lo, hi, **kw)
    return _with_ci(est, lo, hi, digits) if ok else ne_text(why)


def additive_ok(est: Any, lo: Any = None, hi: Any = None, *, max_ci_width: float | None = None, reasons: tuple[str, ...] = ()) -> tuple[bool, str]:
    kw = {"max_ci_width": max_ci_width} if max_ci_width is not None else {}
    return assess_additive(est, lo if _given(lo, hi) else None, hi if _given(lo, hi) else None, reasons=reasons, **kw)


def additive_text(est: Any, lo: Any = None, hi: Any = None, *, digits: int = 2, max_ci_width: float | None = None,
                  reasons: tuple[str, ...] = ()) -> str:
    """'-1.20 (-2.89 to -1.76)' or 'not estimable (reason)'."""
    ok, why = additive_ok(est, lo, hi, max_ci_width=max_ci_width, reasons=reasons)
    return _with_ci(est, lo, hi, digits) if ok else ne_text(why)
