"""How a report prints a number: the one formatter for every table cell, headline, caption and
figure annotation, in journal style, with the one estimability rule (`mseval.stats.estimability`)
deciding whether an estimate is shown at all.

- plain notation only: no e-notation, no number of 7 or more digits (beyond `LARGEST` a value is
  'not estimable (beyond one million)'); a non-zero value that would round to zero gets two
  significant digits, below `SMALLEST` it reads '< 0.0001';
- a CI at the estimate's precision: '0.04 (< 0.01 to 0.32)', never '0.04 (0.0047 to 0.32)';
  ranges read '-2.89 to -1.76' (never '-2.89--1.76');
- p-values: 'p < 0.001' style (`p_text`: '0.012', '< 0.001');
- proportions: bounds clipped to [0, 1] (`proportion_text`);
- what is not a finite number reads `NOT_ESTIMABLE` ('not estimable'), the one spelling everywhere;
  an estimate outside its meaningful range is flagged beside it (`ranged_text`), never printed bare.
"""

from __future__ import annotations

import math
from typing import Any

from mseval.stats.estimability import assess_additive, assess_ratio

NOT_ESTIMABLE = "not estimable"
NOT_COMPUTED = "not computed"
SMALLEST = 1e-4
"""Non-zero values smaller than this in magnitude print as '< 0.0001'."""
LARGEST = 1e6
"""Values this large or larger are not printed: nothing a report estimates is meaningful there."""


def is_number(x: Any) -> bool:
    """True for a finite real number (bools and text excluded)."""
    if isinstance(x, (bool, str)) or x is None:
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _decimals(f: float, digits: int) -> int:
    """Decimals that print `f` with at least two significant digits when `digits` would round it to zero."""
    if f == 0 or abs(f) >= 0.5 * 10 ** -digits:
        return digits
    return max(digits, -math.floor(math.log10(abs(f))) + 1)


def num(x: Any, digits: int = 2, *, decimals: int | None = None) -> str:
    """A finite number in plain notation with `digits` decimals (small non-zero values with two
    significant digits, or exactly `decimals` when given); 'not estimable' otherwise; text passes through."""
    if isinstance(x, str):
        return x
    if not is_number(x):
        return NOT_ESTIMABLE
    f = float(x)
    if abs(f) >= LARGEST:
        return f"{NOT_ESTIMABLE} (beyond one million)"
    if f != 0 and abs(f) < SMALLEST and decimals is None:
        return "< 0.0001" if f > 0 else "> -0.0001"
    d = _decimals(f, digits) if decimals is None else decimals
    if f != 0 and abs(f) < 0.5 * 10 ** -d:
        return f"< {10 ** -d:.{d}f}" if f > 0 else f"> -{10 ** -d:.{d}f}"
    out = f"{f:.{d}f}"
    return out[1:] if out.startswith("-") and float(out) == 0 else out


def interval(lo: Any, hi: Any, digits: int = 2, *, decimals: int | None = None) -> str:
    """'-2.89 to -1.76'."""
    return f"{num(lo, digits, decimals=decimals)} to {num(hi, digits, decimals=decimals)}"


def p_text(p: Any) -> str:
    """A p-value: '0.012', '< 0.001' (print as 'p < 0.001'), 'not estimable' when not a number in [0, 1]."""
    if not is_number(p) or not 0 <= float(p) <= 1:
        return NOT_ESTIMABLE
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def _with_ci(est: Any, lo: Any, hi: Any, digits: int) -> str:
    """The estimate and its CI at the estimate's precision (the bounds take the estimate's decimals)."""
    s = num(est, digits)
    if not (is_number(lo) and is_number(hi)):
        return s
    d = _decimals(float(est), digits) if is_number(est) else digits
    return f"{s} ({interval(lo, hi, digits, decimals=d)})"


def proportion_text(est: Any, lo: Any = None, hi: Any = None, *, digits: int = 2) -> str:
    """A proportion with its CI, bounds clipped to [0, 1]: '0.96 (0.81 to 1.00)'."""
    if not is_number(est):
        return NOT_ESTIMABLE
    clip = (lambda v: min(max(float(v), 0.0), 1.0) if is_number(v) else v)  # noqa: E731
    return _with_ci(clip(est), clip(lo), clip(hi), digits)


def ranged_text(est: Any, lo: Any = None, hi: Any = None, *, low: float, high: float, what: str, digits: int = 2) -> str:
    """An estimate whose meaningful range is [low, high] (a calibration slope, a Qini coefficient):
    printed with its CI when inside, else 'not estimable (VALUE outside WHAT's range LOW to HIGH)'."""
    if not is_number(est):
        return NOT_ESTIMABLE
    if not low <= float(est) <= high:
        return f"{NOT_ESTIMABLE} ({num(est, digits)} is outside the meaningful range of {what}, {num(low, 0)} to {num(high, 0)})"
    return _with_ci(est, lo, hi, digits)


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
