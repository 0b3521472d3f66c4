"""Forecast rate ratios: NB2 on fully synthetic outcomes, with a variance made for them.

Setting. Each ensemble sample s = 1..M gives every patient i a synthetic count y_is under the
arm the patient was randomized to, drawn from the forecaster's law given the patient's baseline.
Nothing is observed in these outcomes: they are *fully synthetic*, not missing data.

Estimand (forecast RR). The NB2 rate ratio of arm vs the reference in the patient population
these patients were drawn from, randomized as in the trial, **if their outcomes followed the
forecaster's law**. It equals the trial's true rate ratio only when the forecaster's law is the
true law (an oracle); the CI is conditional on the forecaster (its errors are not carried).

Estimator. beta_bar = mean over samples of the NB2 estimates beta_s (same model, same design).

Variance (derivation). beta_s - beta* ~= A_s^-1 sum_i U_is, with U_is = x_i (y_is - mu_is) /
(1 + alpha_s mu_is) the patient's score and A_s = X' W_s X the expected information. So
beta_bar - beta* ~= sum_i psi_i, psi_i = (1/M) sum_s A_s^-1 U_is: the patient's influence,
averaged over the samples. Patients are independent (their samples are not), hence
Var(beta_bar) ~= n/(n - p) sum_i psi_i psi_i' -- a patient-level sandwich (infinitesimal
jackknife; the delta-method version of a patient bootstrap over the ensemble). It carries the
between-patient variance once and the synthetic outcomes' noise divided by M, as it should:
Var(beta_bar) = V_patients + V_outcome / M, whereas Rubin's T = W + (1 + 1/M) B adds the
outcome noise twice over (W already holds V_patients + V_outcome; B estimates V_outcome).
The fully-synthetic rule of Raghunathan, Reiter and Rubin (2003), T_f = (1 + 1/M) B - W, assumes
each synthetic data set is drawn from a posterior predictive with parameter uncertainty; a fixed
forecaster has none, and T_f is negative here (bench/validity.py reports both for comparison).
No "fraction of missing information" is defined: nothing is missing. CI: t with n - p df.

`rubin_combine` stays for the one case where it is right: observed outcomes for some patients,
multiply imputed ones for the others (missing-data imputation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.estimability import assess_ratio
from mseval.stats.design import design_matrix
from mseval.stats.nb2_mle import fit_nb2, nb2_wald

ESTIMAND = ("rate ratio (NB2, arm vs reference) in the population these patients represent, randomized as in the trial, "
            "if their outcomes followed the forecaster's law")
CONDITIONAL_ON = "the forecaster (its law taken as given; its errors are not in the CI)"
CI_METHOD = "patient-level sandwich over the ensemble (mean of per-sample NB2 fits), t with n - p df"


@dataclass(frozen=True)
class ForecastRateRatios:
    """table: one row per term (term, rate_ratio, ci_low, ci_high, p_value, coef, se, df, samples,
    failed_fits, estimand, conditional_on, ci_method, estimable, note). per_sample: (M, p) estimates
    and model variances of the fitted samples (for comparisons with other combining rules)."""

    table: pd.DataFrame
    samples: int
    failed: int
    per_sample_coef: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    per_sample_var: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    note: str = ""

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Forecast rate ratios: NB2 on {self.samples} fully synthetic outcome sets ({self.failed} failed fits); {CI_METHOD}",
                 f"  estimand: {ESTIMAND}; conditional on {CONDITIONAL_ON}"]
        for r in self.table.itertuples():
            lines.append(f"  {r.term:28s} RR {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}" if r.estimable
                         else f"  {r.term:28s} not estimable: {r.note}")
        return "\n".join(lines)


def ensemble_sandwich(y: np.ndarray, X: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """NB2 on every column of y (n, M) with design X (n, p); returns the mean estimate (p,), its
    patient-level sandwich covariance (p, p), the per-sample estimates (M_ok, p) and model
    variances (M_ok, p), and the number of failed fits (left out, and reported)."""
    n, M = y.shape
    p = X.shape[1]
    psi = np.zeros((n, p))
    coefs, vars_ = [], []
    failed = 0
    beta0 = alpha0 = None  # warm start from the last good fit
    for s in range(M):
        fit = fit_nb2(y[:, s], X, offset, beta0=beta0, alpha0=alpha0)
        if not fit.converged or not np.all(np.isfinite(fit.beta)):
            failed += 1
            continue
        wald = nb2_wald(X, offset, fit.beta, fit.alpha)
        if not wald.ok:
            failed += 1
            continue
        beta0, alpha0 = fit.beta, fit.alpha
        u = X * ((y[:, s] - wald.mu) / (1.0 + fit.alpha * wald.mu))[:, None]  # (n, p) score per patient
        psi += u @ wald.vcov  # A^-1 symmetric
        coefs.append(fit.beta)
        vars_.append(np.diag(wald.vcov))
    k = len(coefs)
    if k == 0:
        return np.full(p, np.nan), np.full((p, p), np.nan), np.empty((0, p)), np.empty((0, p)), failed
    psi /= k
    V = psi.T @ psi * (n / max(n - p, 1))
    return np.mean(coefs, axis=0), V, np.array(coefs), np.array(vars_), failed


def fit_forecast_rate_ratios(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    reference: str,
    offset_years: str = "followup_years",
    arm_col: str = "arm",
) -> ForecastRateRatios:
    """Forecast rate ratios from the ensemble counts under each patient's allocated arm.

    table: one row per patient (patient_id, arm, covariates of `formula`, follow-up years);
    counts: (patient_id, arm, sample, count) -- only the allocated arm's blocks are used.
    """
    rhs = formula.split("~", 1)[1]
    alloc = counts.merge(table[["patient_id", arm_col]], left_on=["patient_id", "arm"], right_on=["patient_id", arm_col])
    wide = alloc.pivot(index="patient_id", columns="sample", values="count")
    tab = table[table["patient_id"].isin(wide.index)].reset_index(drop=True)
    des = design_matrix(tab, rhs, reference=reference, arm_col=arm_col, years=offset_years)
    y = wide.loc[tab["patient_id"].to_numpy()[des.rows]].to_numpy(dtype=float)
    n, M = y.shape
    p = des.X.shape[1]
    q, V, coefs, vars_, failed = ensemble_sandwich(y, des.X, des.offset)
    se = np.sqrt(np.clip(np.diag(V), 0.0, None))
    df = float(max(n - p, 1))
    crit = stats.t.ppf(0.975, df)
    notes = []
    if failed:
        notes.append(f"{failed} of {M} sample fits did not converge and are left out")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = pd.DataFrame({
            "term": des.names, "rate_ratio": np.exp(q), "ci_low": np.exp(q - crit * se), "ci_high": np.exp(q + crit * se),
            "p_value": 2 * stats.t.sf(np.abs(q / se), df), "coef": q, "se": se, "df": df,
        })
    out = out[out["term"] != "Intercept"].reset_index(drop=True)
    out["samples"] = M - failed
    out["failed_fits"] = failed
    out["estimand"] = ESTIMAND
    out["conditional_on"] = CONDITIONAL_ON
    out["ci_method"] = CI_METHOD
    ys = y.sum(axis=0)
    reasons = ["no sample could be fitted"] if len(coefs) == 0 else []
    if np.any(ys == 0):
        reasons.append(f"{int(np.sum(ys == 0))} samples hold no lesion at all")
    flags = [assess_ratio(r.rate_ratio, r.ci_low, r.ci_high, reasons=reasons) for r in out.itertuples()]
    out["estimable"] = [f[0] for f in flags]
    out["note"] = ["; ".join(x for x in (f[1], *notes) if x) for f in flags]
    return ForecastRateRatios(out, M - failed, failed, coefs, vars_, "; ".join(notes))


def rubin_combine(estimates: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rubin's rules (1987) for MISSING data multiply imputed: estimates, variances (M, K) ->
    pooled estimate, total SE, df, fraction of missing information (K,). Right only when every
    imputed data set re-uses observed outcomes; wrong for fully synthetic outcomes (use
    `fit_forecast_rate_ratios`)."""
    M = estimates.shape[0]
    q = estimates.mean(axis=0)
    w = variances.mean(axis=0)
    b = estimates.var(axis=0, ddof=1) if M > 1 else np.zeros_like(q)
    t = w + (1 + 1 / M) * b
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (1 + 1 / M) * b / w
        df = np.where(b > 0, (M - 1) * (1 + 1 / r) ** 2, np.inf)
        fmi = np.where(t > 0, (1 + 1 / M) * b / t, 0.0)
    return q, np.sqrt(t), df, fmi


def fully_synthetic_rrr(estimates: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Raghunathan, Reiter and Rubin (2003) fully synthetic variance T_f = (1 + 1/M) B - W (K,),
    for comparison only (it can be negative, and is here: see the module docstring)."""
    M = estimates.shape[0]
    return (1 + 1 / M) * estimates.var(axis=0, ddof=1) - variances.mean(axis=0)
