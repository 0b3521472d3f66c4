"""Forecaster uncertainty carried: K forecasters, a two-level variance for forecast effects.

Setting. A training procedure (e.g. an NB2 on arm + log1p(gd) + age fitted on a training trial)
gives a forecaster; K forecasters k = 1..K come from the same procedure on bootstrap resamples of
the training patients (or independently seeded trainings). Each forecasts every patient of this
trial under every arm with M_k samples drawn independently of the other forecasters. For an effect
(a forecast rate ratio's log, a counterfactual log ratio of means, a mean difference), forecaster k
gives q_k with its within-forecaster variance w_k (the patient-cluster sandwich or delta method,
conditional on forecaster k) and the Monte Carlo part of w_k, s_k (its ensemble noise, V_outcome / M_k;
see `mseval.stats.synthetic.StackedFit.vcov_mc`).

Estimand. The effect a new trial would show, predicted by this training procedure: the effect under
the law of a forecaster trained the way these were, on a training trial like the one used, in the
population this trial's patients represent. The training trial's estimation error is carried.

Decomposition. q_k = theta_hat + d_k + c + e_k: theta_hat the effect under the forecaster fitted on
the training trial itself (its error vs the procedure's target has variance V_train), d_k forecaster
k's deviation from it (the bootstrap reproduces V_train: Var d_k ~= V_train), c this trial's
patient-sampling error (shared by every forecaster: the same patients; variance V_pat), e_k the
ensemble noise (independent across forecasters; variance S). Then, with qbar = mean_k q_k,

    E[B] = V_train + S,  E[Wbar] = V_pat + S          (B = var_k q_k, Wbar = mean_k w_k, Sbar = mean_k s_k)
    Var(qbar - target) = V_train + V_train / K + V_pat + S / K

estimated by  T = (Wbar - Sbar)_+ + (1 + 1/K) (B - Sbar)_+ + Sbar / K.

Relation to the fully synthetic data rule of Raghunathan, Reiter and Rubin (2003),
T_f = (1 + 1/K) B - Wbar: it applies where each synthetic data set is a fresh draw of the whole
population, so that B holds the patient-sampling variance too and Wbar is subtracted whole. Here
the K forecasters forecast the SAME patients: the patient-sampling variance is in Wbar only, not in
B, and only the ensemble noise Sbar is common to both, so the rule above keeps Wbar - Sbar and
subtracts Sbar from B. Positivity fix (Reiter 2002 proposed one for T_f, which can be negative): a
component estimated negative is set to 0 (for the between-forecaster one this falls back to the
within-forecaster variance; `truncated` says so). With Sbar = 0 and V_pat = 0 it is
(1 + 1/K) B, the multiple-imputation between component.

Degrees of freedom: Satterthwaite on the mean squares, Wbar with the within analysis' df (n - p for
the sandwich, infinite for the delta method), (1 + 1/K) B with K - 1 (a between component that is a
small difference B - Sbar gets the few df of B, not those of a large component); t quantile. K = 1 has no
between-forecaster spread: asking for it is an error (`InputError`), not a zero.
Validated by coverage of the true rate ratio in bench/validity_forecasters.py (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.estimability import assess_additive, assess_ratio

ESTIMAND = ("rate ratio (NB2, arm vs reference) a new trial would show, predicted by this training procedure: under the law of a forecaster "
            "trained the way these K were, in the population these patients represent, randomized as in the trial")
CF_ESTIMAND = ("ratio of mean forecast counts (arm vs reference) a new trial would show, predicted by this training procedure "
               "(every patient under every arm, the population these patients represent)")
CF_DIFF_ESTIMAND = "mean difference of forecast counts over follow-up (arm minus reference), predicted by this training procedure"
CONDITIONAL_ON = ("the training procedure (its model and training trial design); the training trial's estimation error is carried "
                  "through the spread of the K forecasters")
CI_METHOD = ("two-level variance: within-forecaster (patient-cluster sandwich / delta method) plus between-forecaster spread, "
             "(W - S)+ + (1 + 1/K)(B - S)+ + S/K (S: ensemble Monte Carlo noise; Raghunathan-Reiter-Rubin adapted to shared patients, "
             "negative components set to 0); Satterthwaite df, t")


@dataclass(frozen=True)
class TwoLevel:
    """The two-level combination of one effect over K forecasters (log scale for ratios).

    estimate: qbar; variance: T; df: Satterthwaite; between: B; within: Wbar; mc: Sbar;
    v_patients: (Wbar - Sbar)+; v_training: (B - Sbar)+; truncated: a component was negative and set to 0."""

    estimate: float
    variance: float
    df: float
    forecasters: int
    between: float
    within: float
    mc: float
    v_patients: float
    v_training: float
    truncated: bool

    @property
    def se(self) -> float:
        return float(np.sqrt(self.variance))

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """(low, high) of the estimate's t interval (log scale for ratios)."""
        t = stats.t.ppf(0.5 + level / 2, self.df) if np.isfinite(self.df) else stats.norm.ppf(0.5 + level / 2)
        return self.estimate - t * self.se, self.estimate + t * self.se

    def covers(self, value: float, level: float = 0.95) -> bool:
        lo, hi = self.ci(level)
        return bool(lo <= value <= hi)


def two_level_combine(q: np.ndarray, w: np.ndarray, s: np.ndarray | None = None, *, df_within: float = np.inf) -> TwoLevel:
    """Combine K >= 2 forecasters' estimates q (K,), within variances w (K,) and Monte Carlo
    variances s (K,) (None or NaN: 0, which over-states the between component by the ensemble noise)."""
    q, w = np.asarray(q, dtype=float), np.asarray(w, dtype=float)
    K = len(q)
    if K < 2:
        raise InputError(None, f"a between-forecaster variance needs at least 2 forecasters; the store holds {K}", field="forecasters")
    s = np.zeros(K) if s is None else np.nan_to_num(np.asarray(s, dtype=float), nan=0.0)
    qbar, B, W, S = float(q.mean()), float(q.var(ddof=1)), float(w.mean()), float(s.mean())
    vp, vt = W - S, B - S
    truncated = vp < 0 or vt < 0
    vp, vt = max(vp, 0.0), max(vt, 0.0)
    between = (1 + 1 / K) * vt
    T = vp + between + S / K
    # Satterthwaite on the mean squares the components are made of: the between component (1 + 1/K)(B - S) varies as
    # (1 + 1/K) B does (B has K - 1 df; S, averaged over K x M samples, is far steadier), so a B barely above the ensemble
    # noise S gets few df, not the df of a large component; likewise Wbar for the within component.
    denom = (((1 + 1 / K) * B) ** 2 / (K - 1) if between > 0 else 0.0) + (W**2 / df_within if np.isfinite(df_within) and vp > 0 else 0.0)
    df = T**2 / denom if denom > 0 else float(df_within)
    return TwoLevel(qbar, float(T), float(df), K, B, W, S, vp, vt, bool(truncated))


def forecaster_ids(counts: pd.DataFrame) -> list[int]:
    """The forecasters of a counts table (column `forecaster`; absent: one forecaster, 0)."""
    if "forecaster" not in counts.columns:
        return [0]
    return sorted(int(k) for k in counts["forecaster"].unique())


def split_forecasters(counts: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Counts per forecaster with sample numbers 0..M_k-1 within each (the store numbers them across)."""
    if "forecaster" not in counts.columns:
        return {0: counts}
    out = {}
    for k, g in counts.groupby("forecaster", sort=True):
        g = g.copy()
        g["sample"] = g.groupby(["patient_id", "arm"]).cumcount().astype(np.int64)
        out[int(k)] = g.drop(columns="forecaster")
    return out


# -- counterfactual ratio of means: per forecaster, arrays ----------------------------------------
def counterfactual_arrays(ya: np.ndarray, yr: np.ndarray) -> dict[str, float]:
    """One forecaster's counterfactual effect of arm a vs the reference r from its samples ya, yr
    (n, M) (the same patients, row for row). Returns log_ratio, w_log_ratio (delta method over patients
    on the ensemble means, as `mseval.stats.counterfactual.counterfactual_effects`), s_log_ratio (its
    ensemble Monte Carlo part, from the per-sample totals), difference, w_difference, s_difference."""
    n, M = ya.shape
    ma_i, mr_i = ya.mean(axis=1), yr.mean(axis=1)
    ma, mr = ma_i.mean(), mr_i.mean()
    out = {"log_ratio": np.nan, "w_log_ratio": np.nan, "s_log_ratio": np.nan}
    if ma > 0 and mr > 0 and n > 1:
        cov = np.cov(ma_i, mr_i, ddof=1)
        out["log_ratio"] = float(np.log(ma / mr))
        out["w_log_ratio"] = float(max(cov[0, 0] / ma**2 + cov[1, 1] / mr**2 - 2 * cov[0, 1] / (ma * mr), 0.0) / n)
        if M > 1:
            ta, tr = ya.mean(axis=0), yr.mean(axis=0)  # (M,) per-sample mean over patients
            c = np.cov(ta, tr, ddof=1)
            out["s_log_ratio"] = float(max(c[0, 0] / ma**2 + c[1, 1] / mr**2 - 2 * c[0, 1] / (ma * mr), 0.0) / M)
    d_i = ma_i - mr_i
    out["difference"] = float(d_i.mean())
    out["w_difference"] = float(d_i.var(ddof=1) / n) if n > 1 else np.nan
    out["s_difference"] = float((ya - yr).mean(axis=0).var(ddof=1) / M) if M > 1 else np.nan
    return out


def _wide(counts: pd.DataFrame, arm: str, patients: list[str]) -> np.ndarray:
    w = counts[counts["arm"] == arm].pivot(index="patient_id", columns="sample", values="count")
    return w.loc[patients].to_numpy(dtype=float)


@dataclass(frozen=True)
class ForecasterEffects:
    """Forecast and counterfactual effects over K forecasters with the two-level variance.

    rate_ratios: one row per term (term, rate_ratio, ci_low, ci_high, p_value, coef, se, df, forecasters,
    between_sd, within_se, mc_se, training_se, truncated, estimand, conditional_on, ci_method,
    estimable, note); counterfactual: one row per non-reference arm (arm, ratio_of_means, ratio_ci_low,
    ratio_ci_high, mean_difference, difference_ci_low, difference_ci_high, the same variance columns,
    estimand, ...); per_forecaster: one row per forecaster x arm with its conditional estimates."""

    rate_ratios: pd.DataFrame
    counterfactual: pd.DataFrame
    per_forecaster: pd.DataFrame
    forecasters: int

    def to_frame(self) -> pd.DataFrame:
        return self.rate_ratios

    def summary(self) -> str:
        lines = [f"Forecast effects over {self.forecasters} forecasters (two-level variance)", f"  estimand: {ESTIMAND}"]
        for r in self.rate_ratios.itertuples():
            lines.append(f"  forecast RR {r.term:20s} {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}  "
                         f"(between-forecaster SD {r.between_sd:.3f}, within SE {r.within_se:.3f})" if r.estimable
                         else f"  forecast RR {r.term:20s} not estimable: {r.note}")
        for r in self.counterfactual.itertuples():
            lines.append(f"  counterfactual {r.arm:17s} {r.ratio_of_means:8.3f}  95% CI {r.ratio_ci_low:8.3f} to {r.ratio_ci_high:8.3f}" if r.estimable
                         else f"  counterfactual {r.arm:17s} not estimable: {r.note}")
        return "\n".join(lines)


def _components(tl: TwoLevel) -> dict:
    return {"forecasters": tl.forecasters, "between_sd": float(np.sqrt(tl.between)), "within_se": float(np.sqrt(tl.within)),
            "mc_se": float(np.sqrt(tl.mc)), "training_se": float(np.sqrt((1 + 1 / tl.forecasters) * tl.v_training)), "truncated": tl.truncated}


def forecaster_effects(table: pd.DataFrame, counts: pd.DataFrame, formula: str = "net2 ~ arm", *, reference: str,
                       offset_years: str = "followup_years") -> ForecasterEffects:
    """Forecast rate ratios and counterfactual effects over the K forecasters of `counts` (column
    `forecaster`, K >= 2; every forecaster forecasts every patient under every arm), two-level variance.

    table: one row per patient (patient_id, arm, covariates of `formula`, follow-up years)."""
    from mseval.stats.synthetic import fit_forecast_rate_ratios

    parts = split_forecasters(counts)
    K = len(parts)
    if K < 2:
        raise InputError(None, f"a between-forecaster variance needs at least 2 forecasters; the forecasts hold {K}", field="forecasters")
    per, fits = [], {}
    for k, ck in parts.items():
        fits[k] = fit_forecast_rate_ratios(table, ck, formula, reference=reference, offset_years=offset_years, ci="sandwich")  # needs the SE
    terms = list(fits[next(iter(fits))].table["term"])
    rr_rows = []
    for term in terms:
        rows = [fits[k].table.set_index("term").loc[term] for k in parts]
        q = np.array([r["coef"] for r in rows], dtype=float)
        w = np.array([r["se"] for r in rows], dtype=float) ** 2
        s = np.array([r.get("se_mc", np.nan) for r in rows], dtype=float) ** 2
        df_w = float(rows[0]["df"])
        bad = [f"forecaster {k}: {r['note']}" for k, r in zip(parts, rows) if not r["estimable"]]
        for k, r in zip(parts, rows):
            per.append({"quantity": "forecast_rate_ratio", "forecaster": k, "arm": term, "estimate": float(np.exp(r["coef"])), "log_estimate": float(r["coef"]),
                        "within_se": float(r["se"]), "mc_se": float(r.get("se_mc", np.nan)), "estimable": bool(r["estimable"])})
        row: dict = {"term": term}
        if bad or not np.all(np.isfinite(q)) or not np.all(np.isfinite(w)):
            row.update({"rate_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "coef": np.nan, "se": np.nan, "df": np.nan,
                        "forecasters": K, "between_sd": np.nan, "within_se": np.nan, "mc_se": np.nan, "training_se": np.nan, "truncated": False})
            why = bad or ["a forecaster's estimate is not finite"]
        else:
            tl = two_level_combine(q, w, s, df_within=df_w)
            lo, hi = tl.ci()
            tstat = tl.estimate / tl.se if tl.se > 0 else np.inf
            row.update({"rate_ratio": float(np.exp(tl.estimate)), "ci_low": float(np.exp(lo)), "ci_high": float(np.exp(hi)),
                        "p_value": float(2 * stats.t.sf(abs(tstat), tl.df)), "coef": tl.estimate, "se": tl.se, "df": tl.df, **_components(tl)})
            why = []
        ok, note = assess_ratio(row["rate_ratio"], row["ci_low"], row["ci_high"], reasons=why)
        if ok and row["truncated"]:
            note = "a variance component was estimated negative and set to 0 (positivity fix)"
        row.update({"estimand": ESTIMAND, "conditional_on": CONDITIONAL_ON, "ci_method": CI_METHOD, "estimable": ok, "note": note})
        rr_rows.append(row)
    cf_rows = []
    patients = sorted(set(counts["patient_id"]))
    z_arms = sorted(set(counts["arm"]) - {reference})
    for arm in z_arms:
        vals = {k: counterfactual_arrays(_wide(ck, arm, patients), _wide(ck, reference, patients)) for k, ck in parts.items()}
        for k, v in vals.items():
            per.append({"quantity": "counterfactual_ratio_of_means", "forecaster": k, "arm": arm, "estimate": float(np.exp(v["log_ratio"])),
                        "log_estimate": v["log_ratio"], "within_se": float(np.sqrt(v["w_log_ratio"])), "mc_se": float(np.sqrt(v["s_log_ratio"])),
                        "estimable": bool(np.isfinite(v["log_ratio"]))})
        row = {"arm": arm, "n": len(patients)}
        q = np.array([v["log_ratio"] for v in vals.values()])
        if np.all(np.isfinite(q)):
            tl = two_level_combine(q, [v["w_log_ratio"] for v in vals.values()], [v["s_log_ratio"] for v in vals.values()])
            lo, hi = tl.ci()
            row.update({"ratio_of_means": float(np.exp(tl.estimate)), "ratio_ci_low": float(np.exp(lo)), "ratio_ci_high": float(np.exp(hi)),
                        "log_ratio_se": tl.se, "df": tl.df, **_components(tl)})
            ok, note = assess_ratio(row["ratio_of_means"], row["ratio_ci_low"], row["ratio_ci_high"])
        else:
            row.update({"ratio_of_means": np.nan, "ratio_ci_low": np.nan, "ratio_ci_high": np.nan, "log_ratio_se": np.nan, "df": np.nan,
                        "forecasters": K, "between_sd": np.nan, "within_se": np.nan, "mc_se": np.nan, "training_se": np.nan, "truncated": False})
            ok, note = assess_ratio(np.nan, reasons=["a forecaster's reference-arm forecasts hold no lesion"])
        d = two_level_combine([v["difference"] for v in vals.values()], [v["w_difference"] for v in vals.values()],
                              [v["s_difference"] for v in vals.values()])
        dlo, dhi = d.ci()
        ok_d, note_d = assess_additive(d.estimate, dlo, dhi)
        row.update({"mean_difference": d.estimate, "difference_ci_low": dlo, "difference_ci_high": dhi,
                    "estimand": CF_ESTIMAND, "difference_estimand": CF_DIFF_ESTIMAND, "conditional_on": CONDITIONAL_ON, "ci_method": CI_METHOD,
                    "estimable": ok, "note": note, "difference_estimable": ok_d, "difference_note": note_d})
        cf_rows.append(row)
    return ForecasterEffects(pd.DataFrame(rr_rows), pd.DataFrame(cf_rows), pd.DataFrame(per), K)
