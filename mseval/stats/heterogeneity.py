"""Treatment-effect heterogeneity along the forecast's predicted benefit, tested as a trial would.

Predicted benefit of arm a for patient i (a baseline quantity: it uses only the forecasts):
    b_i = log((E_ir + 1/(2S)) / (E_ia + 1/(2S)))      (minus the predicted log rate ratio)
with E the ensemble mean count and S the ensemble size (1/(2S) keeps all-zero ensembles finite).

Primary test (confirmatory): among the patients randomized to a or the reference r, the NB2 model
    log E[net2] = b0 + b1 [arm = a] + b2 z_i + b3 [arm = a] z_i + b4 p_i + log(years)
with z the standardised benefit and p the prognostic score (log(E_ir + 1/(2S))), and the Wald test
of b3 = 0 (no effect modification along the predicted benefit) with the model-based (expected
information) SE at the fitted alpha. The patient-level sandwich SE (HC0, `mseval.stats.nb2_mle.nb2_sandwich`,
the SE of `fit_count_model(cov="robust")`) and its p-value are reported beside it (`se_sandwich`,
`p_value_sandwich`) but are not the test: in 500 null trials (100 per arm, bench/validity.py
heterogeneity-null 500, 2026-12-06) the sandwich rejected 8.4% against 6.0% for the model-based SE
(MC SE 1.0 point; goal 3.5-6.5%): HC0 is anti-conservative for an interaction at this size.
`se_method` names the one used. exp(b3) is the ratio of rate
ratios per SD of predicted benefit (< 1: patients predicted to benefit more do). The prognostic
main effect is needed: a benefit on the log scale rises with the baseline rate (small forecast
means shrink toward no benefit), so without it a misspecified main effect leaks into the
interaction (60 null trials with oracle forecasts: 17% rejections without it, 1.7% with it).

Responder strata (exploratory): the observed NB2 rate ratio (net2 ~ arm) among the randomized
patients whose predicted benefit is in the top 10/30/50%. A stratum holds every patient whose
benefit ties with the cut-off's (so membership never depends on patient order). A stratum is
estimated only with at least `min_per_arm` patients in each arm (default 10), and flagged not
estimable when the NB2 dispersion reaches the Poisson boundary (alpha < 1e-4: the CI is then too
narrow). The "all" row is the trial's primary estimate, copied, not refitted; its predicted and
true ratios are over every patient of the trial under both arms, so they equal the primary table's
counterfactual ratio of means and true ratio (the strata's are over their randomized patients).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import fit_count_model
from mseval.stats.estimability import assess_ratio
from mseval.stats.design import design_matrix
from mseval.stats.nb2_mle import fit_nb2, nb2_sandwich, nb2_wald
from mseval.stats.prognostic import prognostic_score

MIN_PER_ARM = 10
ALPHA_BOUNDARY = 1e-4
INTERACTION_ESTIMAND = ("ratio of rate ratios (arm vs reference) per SD of forecast-predicted benefit, "
                        "among patients randomized to the arm or the reference (NB2 arm x score interaction, adjusted for the prognostic score)")
SE_METHODS = {"robust": "patient-level sandwich (HC0) at the fitted NB2 alpha", "model": "NB2 Wald (expected information)"}
STRATUM_ESTIMAND = "rate ratio (NB2, observed counts) among randomized patients in the top fraction of forecast-predicted benefit"


def predicted_benefit(means: pd.DataFrame, reference: str, arm: str) -> pd.Series:
    """b_i by patient_id from forecast_means output (patient_id, arm, expected, samples)."""
    w = means.pivot(index="patient_id", columns="arm", values="expected")
    s = means.pivot(index="patient_id", columns="arm", values="samples")
    eps_r, eps_a = 0.5 / s[reference], 0.5 / s[arm]
    return np.log((w[reference] + eps_r) / (w[arm] + eps_a)).rename("predicted_benefit")


@dataclass(frozen=True)
class Heterogeneity:
    """interaction: one row per arm (the primary test); strata: exploratory responder strata."""

    interaction: pd.DataFrame
    strata: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.interaction

    def summary(self) -> str:
        se = self.interaction["se_method"].iloc[0] if "se_method" in self.interaction and len(self.interaction) else SE_METHODS["model"]
        lines = [f"Effect modification along forecast-predicted benefit (NB2 arm x score interaction, SE: {se}; primary test)"]
        for r in self.interaction.itertuples():
            lines.append(f"  {r.arm:16s} ratio of RRs per SD {r.interaction_ratio:.3f} ({r.ci_low:.3f} to {r.ci_high:.3f}), p = {r.p_value:.3g}"
                         if r.estimable else f"  {r.arm:16s} not estimable: {r.note}")
        return "\n".join(lines)


def interaction_test(table: pd.DataFrame, benefit: pd.Series, arm: str, reference: str, *, prognostic: pd.Series | None = None,
                     response: str = "net2", years: str = "followup_years", se_method: Literal["robust", "model"] = "model") -> dict:
    """Wald test of the arm x standardised-benefit interaction in NB2 (randomized patients of arm and
    reference), adjusted for the prognostic score `prognostic` (by patient_id) when given; its SE by
    `se_method` (model: expected information, the validated default; robust: sandwich), both SEs and
    p-values beside it (`se_model_based`, `p_value_model_based`, `se_sandwich`, `p_value_sandwich`)."""
    if se_method not in SE_METHODS:
        raise ValueError(f"se_method {se_method!r}: choose one of {', '.join(SE_METHODS)}")
    d = table[table["arm"].isin([arm, reference])].reset_index(drop=True)
    b = benefit.loc[d["patient_id"]].to_numpy(dtype=float)
    row = {"arm": arm, "n_arm": int((d["arm"] == arm).sum()), "n_reference": int((d["arm"] == reference).sum()),
           "benefit_sd": float(np.std(b, ddof=1)) if len(b) > 1 else float("nan"), "se_method": SE_METHODS[se_method]}
    if not (len(b) > 4 and row["benefit_sd"] > 1e-12):
        return _not_estimable(row, "not estimable: predicted benefit is the same for every patient")
    y_all = pd.to_numeric(d[response], errors="coerce")
    events = [float(y_all[(d["arm"] == a).to_numpy()].sum()) for a in (arm, reference)]
    if min(events) <= 0:  # separation: that arm's rate and its interaction drift to -inf
        return _not_estimable(row, "not estimable: an arm has no events (its rate ratio has no finite estimate)")
    d = d.assign(score=(b - b.mean()) / row["benefit_sd"])
    rhs = "arm * score"
    if prognostic is not None:
        d["prognostic_score"] = prognostic.loc[d["patient_id"]].to_numpy(dtype=float)
        rhs += " + prognostic_score"
    des = design_matrix(d, rhs, reference=reference, years=years)
    y = d[response].to_numpy(dtype=float)[des.rows]
    fit = fit_nb2(y, des.X, des.offset)
    wald = nb2_wald(des.X, des.offset, fit.beta, fit.alpha)
    robust, ok_r = nb2_sandwich(y, des.X, wald.mu, fit.alpha)
    k = des.names.index(f"{arm}:score")
    coef, se_m, se_r = float(fit.beta[k]), float(wald.se[k]), float(np.sqrt(max(robust[k, k], 0.0)))
    se, inverted = (se_r, wald.ok and ok_r) if se_method == "robust" else (se_m, wald.ok)
    z = stats.norm.ppf(0.975)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        out = {**row, "interaction_coef": coef, "se": se, "interaction_ratio": float(np.exp(coef)), "ci_low": float(np.exp(coef - z * se)),
               "ci_high": float(np.exp(coef + z * se)), "p_value": _wald_p(coef, se),
               "se_model_based": se_m, "p_value_model_based": _wald_p(coef, se_m),
               "se_sandwich": se_r, "p_value_sandwich": _wald_p(coef, se_r)}
    # A dispersion at the Poisson boundary is legitimate here (a good prognostic score can explain the
    # extra-Poisson variation of a whole trial); it is reported in `alpha`, not flagged.
    ok, note = assess_ratio(out["interaction_ratio"], out["ci_low"], out["ci_high"], converged=fit.converged and inverted)
    if not (np.isfinite(se) and se > 0):  # a zero SE (e.g. a sandwich whose score contributions all vanish) is no interval
        ok, note = False, "not estimable: the interaction's standard error is zero or not finite (degenerate fit)"
    return {**out, "alpha": fit.alpha, "estimable": ok, "note": note}


def _not_estimable(row: dict, note: str) -> dict:
    """`row` with every estimate, SE and p-value NaN, flagged not estimable with `note`."""
    nan = float("nan")
    return {**row, **dict.fromkeys(("interaction_coef", "se", "interaction_ratio", "ci_low", "ci_high", "p_value", "se_model_based",
                                    "p_value_model_based", "se_sandwich", "p_value_sandwich"), nan), "estimable": False, "note": note}


def _wald_p(coef: float, se: float) -> float:
    """Two-sided normal p-value of coef / se; NaN where se is not a positive finite number."""
    return float(2 * stats.norm.sf(abs(coef / se))) if np.isfinite(se) and se > 0 else float("nan")


def _stratum(rand: pd.DataFrame, f: float) -> pd.DataFrame:
    """Top fraction f by benefit, tie groups at the cut-off included whole."""
    k = max(int(np.ceil(f * len(rand))), 1)
    rank = rand["benefit"].rank(method="min", ascending=False)
    return rand[rank <= k]


def heterogeneity(
    table: pd.DataFrame,
    means: pd.DataFrame,
    reference: str,
    primary: pd.DataFrame,
    *,
    arms: list[str] | None = None,
    fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0),
    min_per_arm: int = MIN_PER_ARM,
    truth: pd.DataFrame | None = None,
    response: str = "net2",
) -> Heterogeneity:
    """Interaction test and exploratory responder strata for every non-reference arm.

    primary: the observed analysis' rate-ratio table (term, rate_ratio, ci_low, ci_high, p_value), copied
    into the "all" rows. truth (simulated cohorts): adds each stratum's true ratio of mean counts."""
    arms = arms or [a for a in pd.unique(means["arm"]) if a != reference]
    prim = primary.set_index("term")
    t_exp = truth.set_index(["patient_id", "arm"])["expected_count"] if truth is not None else None
    pm = means.set_index(["patient_id", "arm"])["expected"]
    all_ids = pd.unique(means["patient_id"])
    inter, rows = [], []
    for arm in arms:
        ben = predicted_benefit(means, reference, arm)
        inter.append({**interaction_test(table, ben, arm, reference, prognostic=prognostic_score(means, reference), response=response),
                      "estimand": INTERACTION_ESTIMAND,
                      "analysis": "primary test of heterogeneity"})
        rand = table[table["arm"].isin([arm, reference])].copy()
        rand["benefit"] = ben.loc[rand["patient_id"]].to_numpy()
        for f in fractions:
            top = rand if f >= 1 else _stratum(rand, f)
            # the "all" row's predicted and true ratios are over every patient of the trial, each under both
            # arms: the primary table's counterfactual ratio of means and true ratio, the same numbers
            ids = all_ids if f >= 1 else top["patient_id"].to_numpy()
            n_a, n_r = int((top["arm"] == arm).sum()), int((top["arm"] == reference).sum())
            ref_sum = float(pm.loc[list(zip(ids, [reference] * len(ids)))].sum())
            row = {"arm": arm, "stratum": "all" if f >= 1 else f"top {round(100 * f)}%", "fraction": f, "n_arm": n_a, "n_reference": n_r,
                   "predicted_rate_ratio": float(pm.loc[list(zip(ids, [arm] * len(ids)))].sum()) / ref_sum if ref_sum > 0 else np.nan,
                   "predicted_over": "every patient of the trial under both arms (the counterfactual ratio of means)" if f >= 1
                   else "the stratum's randomized patients under both arms",
                   "min_per_arm": min_per_arm, "alpha": np.nan}
            nan = {"observed_rate_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
            if f >= 1:
                if arm in prim.index:
                    r = prim.loc[arm]
                    est = {"observed_rate_ratio": r["rate_ratio"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"]}
                    ok, note = assess_ratio(est["observed_rate_ratio"], est["ci_low"], est["ci_high"])
                    note = "; ".join(x for x in ("the trial's primary estimate (observed NB2, all patients)", note) if x)
                else:
                    est, ok, note = nan, False, "not estimable: arm missing from the primary analysis"
                row.update({**est, "estimable": ok, "note": note, "analysis": "primary"})
            elif n_a < min_per_arm or n_r < min_per_arm:
                row.update({**nan, "estimable": False, "analysis": "exploratory",
                            "note": f"not estimated: fewer than {min_per_arm} patients per arm ({n_a} / {n_r})"})
            else:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fit = fit_count_model(top, f"{response} ~ arm", reference=reference, adjusted_means=False)
                    r = fit.rate_ratio(arm)
                    est = {"observed_rate_ratio": r["rate_ratio"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"]}
                    reasons = [f"dispersion at the Poisson boundary (alpha = {fit.alpha:.2g}): CI too narrow"] if fit.alpha < ALPHA_BOUNDARY else []
                    ok, note = assess_ratio(est["observed_rate_ratio"], est["ci_low"], est["ci_high"], converged=fit.converged, reasons=reasons)
                    row.update({**est, "alpha": fit.alpha, "estimable": ok, "note": note, "analysis": "exploratory"})
                except Exception as exc:  # noqa: BLE001 - a stratum without events: say so
                    row.update({**nan, "estimable": False, "analysis": "exploratory", "note": f"not estimable: {getattr(exc, 'problem', exc)}"})
            row["estimand"] = STRATUM_ESTIMAND
            if t_exp is not None:
                row["true_rate_ratio"] = float(t_exp.loc[list(zip(ids, [arm] * len(ids)))].sum() / t_exp.loc[list(zip(ids, [reference] * len(ids)))].sum())
            rows.append(row)
    return Heterogeneity(pd.DataFrame(inter), pd.DataFrame(rows))
