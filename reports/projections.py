"""The report's "Model-based projections" section: forecast-derived effects beside observed ones.

The CONSORT primary table holds observed effects only; the forecast rate ratio, the counterfactual
ratio of means (both conditional on the single forecaster) and the calibrated ratio move here,
each arm's row beside the observed interval of the forecaster's training trial (or the reason it
is unavailable) and this trial's observed interval, with a flag where a projection's interval is
narrower than the observed one it is compared with (`mseval.projections`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mseval.projections import TRAINING, projections_frame
from reports import numbers as N
from reports import tables as T

SECTION = "Model-based projections (conditional on the forecaster)"
SECTION_TWO_LEVEL = "Model-based projections (predicted by the forecaster's training procedure; training error carried)"


def _two_level(frame: pd.DataFrame) -> bool:
    """Whether the projections carry the training error (K > 1 forecasters, two-level variance)."""
    return bool(len(frame)) and "label" in frame.columns and frame["label"].astype(str).str.contains("training procedure").any()


def section_title(frame: pd.DataFrame) -> str:
    """The section's title: conditional on the one forecaster, or with the training error carried."""
    return SECTION_TWO_LEVEL if _two_level(frame) else SECTION
OBSERVED_THIS = "Observed RR, this trial (95% CI; primary table)"
OBSERVED_TRAINING = "Observed RR, the forecaster's training trial (95% CI)"
FLAG = "Flag"
FORECAST_COL_TWO_LEVEL = "Forecast RR (95% CI over K forecasters, training error carried)"
COUNTERFACTUAL_COL_TWO_LEVEL = "Counterfactual RR (95% CI over K forecasters, training error carried)"


def read_or_build(effects_frame: pd.DataFrame | None, primary: pd.DataFrame, calibrated: pd.DataFrame | None) -> pd.DataFrame:
    """effects' projections.csv, or (effects folders written before it) the same frame without the
    training trial, saying why."""
    if effects_frame is not None:
        return effects_frame
    return projections_frame(primary, None, calibrated, training_note="the effects folder predates the training-trial lookup (rerun mseval effects)")


def _width_text(w: Any) -> str:
    try:
        w = float(w)
    except (TypeError, ValueError):
        return N.NOT_ESTIMABLE
    return f"x{N.num(w, 2)}" if math.isfinite(w) else N.NOT_ESTIMABLE


def flag_text(row: dict[str, Any], name: str) -> str:
    """'Forecast RR: CI narrower than the training trial's observed CI (width x2.1 vs x5.3)' or '' (width: ci_high / ci_low)."""
    if row.get("narrower_than_observed") is not True and str(row.get("narrower_than_observed")).lower() != "true":
        return ""
    which = "the training trial's" if row.get("comparator") == TRAINING else "this trial's"
    return f"{name}: CI narrower than {which} observed CI (width {_width_text(row.get('width_factor'))} vs {_width_text(row.get('comparator_width_factor'))})"


def projections_table(frame: pd.DataFrame, primary_consort: pd.DataFrame, labels: dict[str, str], order: list[str], reference: str,
                      fc_reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    """The section's table as strings: one row per non-reference arm in arms-table order."""
    cal = frame[frame["quantity"] == "counterfactual_calibrated_ratio"]
    cal_label = str(cal["label"].iloc[0]) if len(cal) else ""
    two = [FORECAST_COL_TWO_LEVEL, COUNTERFACTUAL_COL_TWO_LEVEL] if _two_level(frame) else [T.FORECAST_COL, T.COUNTERFACTUAL_COL]
    cols = ["Arm", OBSERVED_THIS, OBSERVED_TRAINING, *two]
    if len(cal):
        cols.append(f"Calibrated ratio: {cal_label} (95% CI)")
    cols.append(FLAG)
    cp = primary_consort.set_index("arm") if len(primary_consort) else pd.DataFrame()
    rows = []
    for arm in order:
        if arm == reference:
            continue
        g = frame[frame["arm"].astype(str) == arm]
        if g.empty:
            continue
        q = {r["quantity"]: r for r in g.to_dict("records")}
        first = next(iter(q.values()))
        o = cp.loc[arm] if arm in cp.index else {}
        observed = N.ratio_text(o.get("observed_rate_ratio"), o.get("observed_ci_low"), o.get("observed_ci_high"),
                                estimable=o.get("observed_estimable", True), note=o.get("observed_note", "")) if len(o) else N.NOT_COMPUTED
        if not N.is_number(first.get("training_rate_ratio")) and not first.get("training_estimable"):
            training = "unavailable"
        else:
            training = N.ratio_text(first.get("training_rate_ratio"), first.get("training_ci_low"), first.get("training_ci_high"),
                                    estimable=first.get("training_estimable", True), note=first.get("training_note", ""))

        def cell(name: str, reasons: tuple[str, ...] = fc_reasons) -> str:
            r = q.get(name)
            if r is None:
                return N.NOT_COMPUTED
            return N.ratio_text(r.get("estimate"), r.get("ci_low"), r.get("ci_high"), estimable=r.get("estimable", True), note=r.get("note", ""),
                                reasons=reasons)

        row = [labels.get(arm, arm), observed, training, cell("forecast_rate_ratio"), cell("counterfactual_ratio_of_means")]
        if len(cal):
            row.append(cell("counterfactual_calibrated_ratio", ()))
        flags = [flag_text(q[k], n) for k, n in (("forecast_rate_ratio", "Forecast RR"), ("counterfactual_ratio_of_means", "Counterfactual RR")) if k in q]
        row.append("; ".join(f for f in flags if f))
        rows.append(row)
    return {"columns": cols, "rows": rows}


def projections_note(training_sentence: str, frame: pd.DataFrame, calibrated_sentence: str = "") -> str:
    """The paragraph under the table: what the projections are, where the training trial's numbers
    come from (or why they are unavailable) and what the flag compares."""
    comp = set(frame["comparator"].dropna().astype(str)) if len(frame) else set()
    against = ("the training trial's observed interval" if comp == {TRAINING} else
               "the training trial's observed interval where available, otherwise this trial's" if TRAINING in comp else
               "this trial's observed interval (the training trial's is unavailable)")
    if _two_level(frame):
        lead = ("Forecast and counterfactual RRs are projections of K forecasters trained the same way on bootstrap resamples of the "
                "training trial: the rate ratio a new trial would show, predicted by this training procedure. Their CIs carry the "
                "training trial's estimation error (two-level variance: within-forecaster sandwich plus the spread between forecasters), "
                "but they are still model-based, not results of this trial, and stay out of the primary table. ")
        tail = "a projection no better informed than the trial the forecasters learned from."
    else:
        lead = ("Forecast and counterfactual RRs are projections of one forecaster: their CIs take its law as given and do not carry its "
                "training error, so they are not results of this trial and stay out of the primary table. ")
        tail = "precision conditional on the forecaster, not evidence about the treatment."
    text = (lead
            + (training_sentence + " " if training_sentence else "")
            + f"Flag: a projection's 95% CI narrower (width as the factor ci_high / ci_low) than {against} for the same arm: "
            + tail)
    return text + (" " + calibrated_sentence if calibrated_sentence else "")
