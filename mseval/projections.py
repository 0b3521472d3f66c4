"""Model-based projections: the forecast-derived effects, kept out of the primary table.

With one forecaster in the store, the forecast rate ratio and the counterfactual ratio of means
have CIs conditional on it (its training error is not in them). With K > 1 forecasters (bootstrap
resamples of the training trial) they carry it: the two-level variance of
`mseval.stats.forecaster_variance`, labelled "predicted by this training procedure". They are projections of a model, not results of the trial, so
the report shows them in their own section (issue 22), each beside the observed interval of the
trial the forecaster learned from (`mseval.training_trial`) and flagged where the projection's
interval is narrower than that observed interval. Where the training trial is unavailable, the
comparison is with this trial's own observed interval, and the table says so.

The calibrated ratio (with --heldout-patients) is listed here too, under its own label: an
observed-data ratio estimator with the forecast as covariate (`mseval.heldout`); it is not
flagged, since covariate adjustment may legitimately narrow an observed interval.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mseval.stats.estimability import assess_ratio

QUANTITIES = {"forecast_rate_ratio": ("forecast", "Forecast RR"), "counterfactual_ratio_of_means": ("counterfactual", "Counterfactual RR")}
TRAINING = "training trial"
THIS_TRIAL = "this trial"


def _width(lo: Any, hi: Any) -> float:
    """The CI's width as a factor, ci_high / ci_low (NaN when not finite and positive)."""
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return float("nan")
    return hi / lo if math.isfinite(lo) and math.isfinite(hi) and lo > 0 else float("nan")


def _flagged(estimable: Any) -> bool:
    """True when an `estimable` cell says False (bool, numpy bool, 0, 'False'); missing means not flagged."""
    if estimable is None or (isinstance(estimable, float) and math.isnan(estimable)):
        return False
    if isinstance(estimable, str):
        return estimable.strip().lower() in ("false", "0", "no")
    return not bool(estimable)


def _ok(est: Any, lo: Any, hi: Any, estimable: Any = True, note: Any = "") -> bool:
    """The shared ratio rule (`mseval.stats.estimability`), AND-ed with the table's own flag."""
    return assess_ratio(est, lo, hi, reasons=[str(note) or "flagged"] if _flagged(estimable) else [])[0]


CONDITIONAL_LABEL = "conditional on the forecaster"


def two_level_label(forecasters: int) -> str:
    """The label suffix of a projection with the two-level variance over K forecasters."""
    return f"predicted by this training procedure; {forecasters} forecasters, training error carried"


def projections_frame(primary: pd.DataFrame, training: pd.DataFrame | None, calibrated: pd.DataFrame | None = None,
                      *, training_note: str = "", forecasters: int = 1) -> pd.DataFrame:
    """One row per non-reference arm x projected quantity.

    primary: effects' primary_endpoint table (observed_*, forecast_*, counterfactual_* per arm);
    training: the training trial's observed rate ratios (term, rate_ratio, ci_low, ci_high,
    estimable, note) or None when unavailable (`training_note` says why); calibrated: effects'
    counterfactual_calibrated table or None.
    Columns: arm, quantity, estimate, ci_low, ci_high, estimable, note, label, training_rate_ratio,
    training_ci_low, training_ci_high, training_estimable, training_note, comparator (TRAINING,
    THIS_TRIAL or ""), comparator_ci_low, comparator_ci_high, width_factor, comparator_width_factor,
    narrower_than_observed (True / False / None when not comparable). forecasters: K > 1 when the
    forecast-derived CIs carry the training error (two-level variance); the label says which.
    """
    suffix = two_level_label(forecasters) if forecasters > 1 else CONDITIONAL_LABEL
    tr = training.set_index("term") if training is not None and len(training) else None
    cal = calibrated.set_index("arm") if calibrated is not None and len(calibrated) else None
    rows = []
    for p in primary.to_dict("records"):
        arm = str(p["arm"])
        t = tr.loc[arm] if tr is not None and arm in tr.index else None
        t_ok = t is not None and _ok(t["rate_ratio"], t["ci_low"], t["ci_high"], t.get("estimable", True), t.get("note", ""))
        o_ok = _ok(p.get("observed_rate_ratio"), p.get("observed_ci_low"), p.get("observed_ci_high"), p.get("observed_estimable", True),
                   p.get("observed_note", ""))
        if t_ok:
            comp, c_lo, c_hi = TRAINING, t["ci_low"], t["ci_high"]
        elif o_ok:
            comp, c_lo, c_hi = THIS_TRIAL, p.get("observed_ci_low"), p.get("observed_ci_high")
        else:
            comp, c_lo, c_hi = "", float("nan"), float("nan")
        base = {"arm": arm,
                "training_rate_ratio": float(t["rate_ratio"]) if t is not None else float("nan"),
                "training_ci_low": float(t["ci_low"]) if t is not None else float("nan"),
                "training_ci_high": float(t["ci_high"]) if t is not None else float("nan"),
                "training_estimable": bool(t_ok),
                "training_note": (str(t.get("note") or "") if t is not None else (training_note or "training trial unavailable")),
                "comparator": comp, "comparator_ci_low": c_lo, "comparator_ci_high": c_hi, "comparator_width_factor": _width(c_lo, c_hi)}
        for q, (key, label) in QUANTITIES.items():
            est, lo, hi = p.get(f"{key}_rate_ratio"), p.get(f"{key}_ci_low"), p.get(f"{key}_ci_high")
            ok = _ok(est, lo, hi, p.get(f"{key}_estimable", True), p.get(f"{key}_note", ""))
            w = _width(lo, hi)
            narrower = bool(w < base["comparator_width_factor"]) if ok and comp else None
            rows.append({**base, "quantity": q, "label": f"{label} ({suffix})", "estimate": est, "ci_low": lo, "ci_high": hi,
                         "estimable": ok, "note": str(p.get(f"{key}_note") or ""), "width_factor": w, "narrower_than_observed": narrower})
        if cal is not None and arm in cal.index:
            c = cal.loc[arm]
            rows.append({**base, "quantity": "counterfactual_calibrated_ratio", "label": str(c.get("label") or "calibrated ratio"),
                         "estimate": c["calibrated_ratio"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                         "estimable": _ok(c["calibrated_ratio"], c["ci_low"], c["ci_high"], c.get("estimable", True), c.get("note", "")),
                         "note": str(c.get("note") or ""), "width_factor": _width(c["ci_low"], c["ci_high"]), "narrower_than_observed": None})
    cols = ["arm", "quantity", "label", "estimate", "ci_low", "ci_high", "estimable", "note", "training_rate_ratio", "training_ci_low",
            "training_ci_high", "training_estimable", "training_note", "comparator", "comparator_ci_low", "comparator_ci_high", "width_factor",
            "comparator_width_factor", "narrower_than_observed"]
    return pd.DataFrame(rows, columns=cols)
