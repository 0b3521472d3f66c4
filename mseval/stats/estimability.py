"""The one rule that decides whether an estimate is shown as a number or as "not estimable".

Every table (CSV/JSON), figure and report line goes through these functions, so a quantity is
either estimable everywhere or nowhere. A row that fails carries `estimable = False` and a `note`
saying why; the number itself may stay in the CSV for the record, but readers (reports, figures,
headlines) must print the note instead of it.

Rule for a ratio (rate ratio, odds ratio, ratio of means), estimate and CI on the ratio scale:
    - estimate, CI bounds finite and > 0,
    - estimate inside [RATIO_MIN, RATIO_MAX] = [1e-3, 1e3],
    - CI not wider than CI_RATIO_MAX = 1e3 (ci_high / ci_low), when a CI is given,
    - the fit converged and no caller-supplied reason (separation, zero events, boundary) applies.
Rule for an additive quantity (difference, slope, AUC): estimate and CI finite, and
CI width (ci_high - ci_low) at most `max_ci_width` (default 1e3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

RATIO_MIN = 1e-3
RATIO_MAX = 1e3
CI_RATIO_MAX = 1e3
ADDITIVE_CI_WIDTH_MAX = 1e3


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def assess_ratio(
    estimate: Any,
    ci_low: Any = None,
    ci_high: Any = None,
    *,
    converged: bool = True,
    reasons: Iterable[str] = (),
) -> tuple[bool, str]:
    """(estimable, note) for a ratio estimate; `note` is "" when estimable.

    `ci_low`/`ci_high` None means no interval was computed (only the estimate is judged).
    `reasons`: reasons already known to make the estimate non-estimable (e.g. "separation").
    """
    why = [r for r in reasons if r]
    if not converged:
        why.append("the fit did not converge")
    if not _finite(estimate) or float(estimate) <= 0:
        why.append("estimate is not a finite positive number")
    elif not (RATIO_MIN <= float(estimate) <= RATIO_MAX):
        side = f"below {RATIO_MIN:g}" if float(estimate) < RATIO_MIN else f"above {RATIO_MAX:g}"
        why.append(f"estimate {side}, outside [{RATIO_MIN:g}, {RATIO_MAX:g}] (boundary)")  # no value: it would print as 3.8e-23
    if ci_low is not None or ci_high is not None:
        if not (_finite(ci_low) and _finite(ci_high)) or float(ci_low) <= 0:
            why.append("confidence interval is not finite")
        elif float(ci_high) / float(ci_low) > CI_RATIO_MAX:
            why.append(f"confidence interval spans more than a factor {CI_RATIO_MAX:g}")
    return (not why, "; ".join(dict.fromkeys(why)))


def assess_additive(
    estimate: Any,
    ci_low: Any = None,
    ci_high: Any = None,
    *,
    max_ci_width: float = ADDITIVE_CI_WIDTH_MAX,
    converged: bool = True,
    reasons: Iterable[str] = (),
) -> tuple[bool, str]:
    """(estimable, note) for a difference, slope or other additive estimate."""
    why = [r for r in reasons if r]
    if not converged:
        why.append("the fit did not converge")
    if not _finite(estimate):
        why.append("estimate is not a finite number")
    if ci_low is not None or ci_high is not None:
        if not (_finite(ci_low) and _finite(ci_high)):
            why.append("confidence interval is not finite")
        elif float(ci_high) - float(ci_low) > max_ci_width:
            why.append(f"confidence interval wider than {max_ci_width:g}")
    return (not why, "; ".join(dict.fromkeys(why)))


def _merge_note(old: Any, new: str) -> str:
    parts = [p for p in (str(old) if isinstance(old, str) else "", new) if p]
    return "; ".join(dict.fromkeys(parts))


def flag_table(
    df: pd.DataFrame,
    estimate: str,
    ci_low: str | None = None,
    ci_high: str | None = None,
    *,
    kind: str = "ratio",
    converged: str | None = None,
    max_ci_width: float = ADDITIVE_CI_WIDTH_MAX,
) -> pd.DataFrame:
    """Return a copy of `df` with `estimable` (bool) and `note` (str) columns set by the rule.

    An existing `estimable` column is AND-ed (a row already flagged stays flagged) and an existing
    `note` is kept and extended. `kind` is "ratio" or "additive".
    """
    out = df.copy()
    prior_ok = out["estimable"].astype(bool) if "estimable" in out else pd.Series(True, index=out.index)
    prior_note = out["note"] if "note" in out else pd.Series("", index=out.index)
    ok_col, notes = [], []
    for i, row in out.iterrows():
        conv = bool(row[converged]) if converged and converged in out and pd.notna(row[converged]) else True
        lo = row[ci_low] if ci_low else None
        hi = row[ci_high] if ci_high else None
        if kind == "ratio":
            ok, note = assess_ratio(row[estimate], lo, hi, converged=conv)
        else:
            ok, note = assess_additive(row[estimate], lo, hi, converged=conv, max_ci_width=max_ci_width)
        ok_col.append(bool(ok and prior_ok[i]))
        old = prior_note[i] if isinstance(prior_note[i], str) else ""
        notes.append(_merge_note(old, note) if not ok else old)
    out["estimable"] = ok_col
    out["note"] = notes
    return out
