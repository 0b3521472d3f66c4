"""Forecast rate ratios: NB2 on fully synthetic outcomes, with a variance made for them.

Setting. Each ensemble sample s = 1..M gives every patient i a synthetic count y_is under the
arm the patient was randomized to, drawn from the forecaster's law given the patient's baseline.
Nothing is observed in these outcomes: they are *fully synthetic*, not missing data.

Estimand (forecast RR). The NB2 rate ratio of arm vs the reference in the patient population
these patients were drawn from, randomized as in the trial, **if their outcomes followed the
forecaster's law**. It equals the trial's true rate ratio only when the forecaster's law is the
true law (an oracle); the CI is conditional on the forecaster (its errors are not carried).

Estimator (issue 22): ONE NB2 fit on all M samples stacked (n M rows; patient i's covariates
repeated M times), beta_hat solving sum_i sum_s U_is(beta, alpha) = 0 with U_is = x_i (y_is - mu_i)
/ (1 + alpha mu_i). Why stacked, not the mean of the M per-sample fits (the estimator before):
- same estimand: every sample is a draw from the same law, so each per-sample score equation and
  their sum have the same population solution (beta*, alpha*);
- immune to event-free samples: at demo scale (6 arms x 8 patients) an arm with a rate ratio near
  0.1 has no event in a sizeable share of samples; its per-sample MLE is -inf, so the mean of
  per-sample fits is -inf, and dropping those samples conditions on events and biases the ratio
  towards 1 (one seed: 18 of 20 fits dropped, an arm read 0.71 against 0.385 from the valid ones and
  a truth of 0.171). The stacked fit is finite whenever the arm has events in any sample;
- the outcome noise is averaged before the non-linear fit, so its small-sample bias is that of n M
  outcomes on n patients rather than of n outcomes (the mean of fits keeps the bias of one sample);
- one cold fit: no chain of warm starts to corrupt.
An arm with no event in any sample has an infinite MLE (`mseval.stats.event_free`): the other terms
come from the reduced model and that term is reported as rate ratio 0, not estimable.

Variance (derivation). beta_hat - beta* ~= A^-1 sum_i Ubar_i, Ubar_i = sum_s U_is the patient's
score summed over its samples and A = M X' W X the expected information of the stacked fit
(W = mu / (1 + alpha mu)). Patients are independent (their samples are not), hence the
patient-cluster sandwich Var(beta_hat) ~= n/(n - p) A^-1 (sum_i Ubar_i Ubar_i') A^-1 -- the
infinitesimal jackknife; the delta-method version of a patient bootstrap over the ensemble). It
carries the between-patient variance once and the synthetic outcomes' noise divided by M, as it
should: Var = V_patients + V_outcome / M, whereas Rubin's T = W + (1 + 1/M) B adds the outcome noise
twice over (W already holds V_patients + V_outcome; B estimates V_outcome). (The mean of per-sample
fits had the same sandwich with A_s^-1 per sample; the two agree to first order.)
The fully-synthetic rule of Raghunathan, Reiter and Rubin (2003), T_f = (1 + 1/M) B - W, assumes
each synthetic data set is drawn from a posterior predictive with parameter uncertainty; a fixed
forecaster has none, and T_f is negative here (bench/validity.py reports both for comparison).
No "fraction of missing information" is defined: nothing is missing. CI: t with n - p df.

Randomization interval (`ci="permutation"`; `ci="auto"` chooses it below `small_sample.SMALL_SAMPLE_N`
patients in the smallest compared arm, the SAP's own rule). At 100 per arm the sandwich's t interval covers
the law target a little short (93.3-93.6% on 1,000 trials per forecaster, bench/RESULTS.md, issue 20): the
treated arm's per-patient rates are heavy-tailed (gamma activity x lognormal response x age modifier), as
for the observed analysis. The randomization interval works on each patient's forecast total
T_i = sum_s y_is (the sufficient summary of the ensemble for the between-patient variance), offset
log(M x years_i), in the same NB2 formula, with the SAP's inverted permutation score test
(`small_sample.primary_tests(method="permutation")`): its rate ratio is the NB2 fit of the totals (the
stacked estimating equation with weights 1 / (1 + alpha M mu_i) instead of 1 / (1 + alpha mu_i): the
same population solution), its CI {b: the permutation test of beta_arm = b does not reject}, its p-value
the permutation test's. The stacked sandwich SE stays in `se` (for the two-level rule, which needs it).
Validated on 1,000 fresh trials per forecaster kind (rules R12, R13 in bench/RESULTS.md): 95.0-95.7%
coverage of the law target, where the sandwich gave 93.7-94.8% on the same trials.

Per-sample fits (diagnostics, and the inputs of the Rubin/RRR comparisons). Each sample is also
fitted alone, warm-started at the stacked fit and retried cold when that fails (`fit_nb2`); a term
with no event among its patients in a sample is an infinite MLE for that term only (-inf in
`per_sample_coef`; the other terms from the reduced model) and is counted per term
(`event_free_samples`), not as a failure. A term is not estimable when more than
MAX_FAILED_SHARE (5%) of its per-sample fits fail: the likelihood is then not one the fitter can
trust on these data, whatever the stacked fit says.

`rubin_combine` stays for the one case where it is right: observed outcomes for some patients,
multiply imputed ones for the others (missing-data imputation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.estimability import assess_ratio
from mseval.stats.design import design_matrix
from mseval.stats.event_free import Reduction, event_free_samples, event_free_terms
from mseval.stats.nb2_mle import fit_nb2, nb2_wald
from mseval.stats.small_sample import SMALL_SAMPLE_N, primary_tests

ESTIMAND = ("rate ratio (NB2, arm vs reference) in the population these patients represent, randomized as in the trial, "
            "if their outcomes followed the forecaster's law")
CONDITIONAL_ON = "the forecaster (its law taken as given; its errors are not in the CI)"
CI_METHOD = "one NB2 fit on all samples stacked, patient-cluster sandwich over the ensemble, t with n - p df"
CI_METHOD_PERMUTATION = ("randomization interval: NB2 on each patient's forecast total over the samples (offset log(samples x years)), "
                         "the permutation score test (arm labels permuted between patients) inverted")
CI_CHOICES = ("auto", "sandwich", "permutation")
MAX_FAILED_SHARE = 0.05
"""A term is not estimable when more than this share of its per-sample fits fail."""


@dataclass(frozen=True)
class ForecastRateRatios:
    """table: one row per term (term, rate_ratio, ci_low, ci_high, p_value, coef, se, df, se_mc (the
    ensemble Monte Carlo part of se, `StackedFit.vcov_mc`), samples,
    failed_fits, cold_retries, event_free_samples, estimand, conditional_on, ci_method, estimable,
    note). per_sample_coef / per_sample_var: (M_ok, p) estimates and model variances of the
    per-sample fits that converged (-inf / NaN for a term with no event in that sample), for
    comparisons with other combining rules. sample_table: one row per sample (sample, converged,
    cold_retry, event_free_terms, alpha)."""

    table: pd.DataFrame
    samples: int
    failed: int
    per_sample_coef: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    per_sample_var: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    note: str = ""
    sample_table: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Forecast rate ratios: NB2 on {self.samples} fully synthetic outcome sets stacked ({self.failed} per-sample fits failed); {CI_METHOD}",
                 f"  estimand: {ESTIMAND}; conditional on {CONDITIONAL_ON}"]
        for r in self.table.itertuples():
            lines.append(f"  {r.term:28s} RR {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}" if r.estimable
                         else f"  {r.term:28s} not estimable: {r.note}")
        return "\n".join(lines)


@dataclass(frozen=True)
class StackedFit:
    """coef (p,) (-inf for a term with no event in any sample, NaN for one with no patient), its
    patient-cluster sandwich covariance vcov (p, p) (NaN rows/columns for those terms), alpha,
    converged, and the Reduction used. vcov_mc (p, p): the part of vcov that is the ensemble's Monte
    Carlo noise, V_outcome / M, estimated from each patient's score spread over its own samples,
    A^-1 [sum_i M/(M-1) sum_s (U_is - Ubar_i/M)(U_is - Ubar_i/M)'] A^-1 (NaN when M = 1): draws of
    another forecaster are independent of it, so the two-level rule
    (`mseval.stats.forecaster_variance`) subtracts it from the between-forecaster spread."""

    coef: np.ndarray
    vcov: np.ndarray
    alpha: float
    converged: bool
    reduction: Reduction
    vcov_mc: np.ndarray | None = None


def stacked_sandwich(y: np.ndarray, X: np.ndarray, offset: np.ndarray) -> StackedFit:
    """One NB2 fit on every column of y (n, M) stacked, design X (n, p), offset (n,); the
    patient-cluster sandwich (see the module docstring)."""
    n, M = y.shape
    p = X.shape[1]
    red = event_free_terms(y.sum(axis=1), X)  # no event in any sample <=> no event in the patient totals
    cols, rows = red.keep_cols, red.keep_rows
    coef = np.full(p, np.nan)
    coef[red.infinite] = -np.inf
    vcov = np.full((p, p), np.nan)
    Xr, yr, offr = X[rows][:, cols], y[rows], offset[rows]
    if yr.size == 0 or yr.sum() == 0:
        return StackedFit(coef, vcov, float("nan"), False, red)
    fit = fit_nb2(yr.reshape(-1), np.repeat(Xr, M, axis=0), np.repeat(offr, M))
    if not fit.converged or not np.all(np.isfinite(fit.beta)):
        return StackedFit(coef, vcov, float(fit.alpha), False, red)
    wald = nb2_wald(Xr, offr, fit.beta, fit.alpha)  # (X'WX)^-1 for one copy of the patients
    Ainv = wald.vcov / M
    mu = wald.mu
    ubar = Xr * ((yr.sum(axis=1) - M * mu) / (1.0 + fit.alpha * mu))[:, None]  # (n_r, p_r) patient score summed over samples
    psi = ubar @ Ainv
    nr, pr = Xr.shape
    V = psi.T @ psi * (nr / max(nr - pr, 1))
    coef[cols] = fit.beta
    vcov[np.ix_(cols, cols)] = V
    vmc = np.full((p, p), np.nan)
    if M > 1:
        dev = (yr - yr.mean(axis=1, keepdims=True)) / (1.0 + fit.alpha * mu)[:, None]  # (n_r, M): U_is - Ubar_i / M per unit of x_i
        G = (Xr * (dev**2).sum(axis=1)[:, None]).T @ Xr * (M / (M - 1))  # sum_i x_i x_i' sum_s dev_is^2
        vmc[np.ix_(cols, cols)] = Ainv @ G @ Ainv
    return StackedFit(coef, vcov, float(fit.alpha), bool(wald.ok), red, vmc)


def sample_fits(y: np.ndarray, X: np.ndarray, offset: np.ndarray, start: StackedFit | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """NB2 on each column of y (n, M) alone: per-sample estimates and model variances (M, p) (NaN
    rows for failed fits; -inf / NaN for a term with no event in that sample) and a table of the
    samples (sample, converged, cold_retry, event_free_terms, alpha). Warm-started at `start`
    (restricted to each sample's reduced model), retried cold by `fit_nb2` when that fails."""
    n, M = y.shape
    p = X.shape[1]
    coefs, vars_ = np.full((M, p), np.nan), np.full((M, p), np.nan)
    rows = []
    for s in range(M):
        red = event_free_terms(y[:, s], X)
        cols, keep = red.keep_cols, red.keep_rows
        Xr, yr, offr = X[keep][:, cols], y[keep, s], offset[keep]
        b0 = a0 = None
        if start is not None and start.converged and np.all(np.isfinite(start.coef[cols])) and start.alpha > 0:
            b0, a0 = start.coef[cols], start.alpha
        ok, retry, alpha = False, False, float("nan")
        if yr.size and yr.sum() > 0:
            fit = fit_nb2(yr, Xr, offr, beta0=b0, alpha0=a0)
            retry, alpha = fit.cold_retry, float(fit.alpha)
            if fit.converged and np.all(np.isfinite(fit.beta)):
                wald = nb2_wald(Xr, offr, fit.beta, fit.alpha)
                if wald.ok:
                    ok = True
                    coefs[s, cols] = fit.beta
                    vars_[s, cols] = np.diag(wald.vcov)
                    coefs[s, red.infinite] = -np.inf
        rows.append({"sample": s, "converged": ok, "cold_retry": retry, "event_free_terms": int(red.infinite.sum()), "alpha": alpha})
    return coefs, vars_, pd.DataFrame(rows)


def fit_forecast_rate_ratios(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    reference: str,
    offset_years: str = "followup_years",
    arm_col: str = "arm",
    ci: str = "auto",
    seed: int = 0,
    n_permutations: int = 999,
) -> ForecastRateRatios:
    """Forecast rate ratios from the ensemble counts under each patient's allocated arm.

    table: one row per patient (patient_id, arm, covariates of `formula`, follow-up years);
    counts: (patient_id, arm, sample, count) -- only the allocated arm's blocks are used.
    ci: "sandwich" (stacked fit, t(n - p)), "permutation" (randomization interval on the patient
    totals; `seed` and `n_permutations` its Monte Carlo: the same seed gives the same interval) or
    "auto" (permutation below `small_sample.SMALL_SAMPLE_N` patients in the smallest compared arm).
    See the module docstring.
    """
    if ci not in CI_CHOICES:
        raise ValueError(f"unknown forecast-RR interval {ci!r}; choose one of {', '.join(CI_CHOICES)}")
    rhs = formula.split("~", 1)[1]
    alloc = counts.merge(table[["patient_id", arm_col]], left_on=["patient_id", "arm"], right_on=["patient_id", arm_col])
    wide = alloc.pivot(index="patient_id", columns="sample", values="count")
    tab = table[table["patient_id"].isin(wide.index)].reset_index(drop=True)
    des = design_matrix(tab, rhs, reference=reference, arm_col=arm_col, years=offset_years)
    y = wide.loc[tab["patient_id"].to_numpy()[des.rows]].to_numpy(dtype=float)
    n, M = y.shape
    p = des.X.shape[1]
    st = stacked_sandwich(y, des.X, des.offset)
    coefs, vars_, per = sample_fits(y, des.X, des.offset, st)
    ok_rows = per["converged"].to_numpy(bool)
    failed = int((~ok_rows).sum())
    retries = int(per["cold_retry"].sum())
    ev_free = event_free_samples(y, des.X)
    q = st.coef
    se = np.sqrt(np.clip(np.diag(st.vcov), 0.0, None))
    df = float(max(n - p, 1))
    crit = stats.t.ppf(0.975, df)
    notes = []
    if failed:
        notes.append(f"{failed} of {M} per-sample fits did not converge")
    if retries:
        notes.append(f"{retries} of {M} per-sample fits needed a cold retry")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = pd.DataFrame({
            "term": des.names, "rate_ratio": np.exp(q), "ci_low": np.exp(q - crit * se), "ci_high": np.exp(q + crit * se),
            "p_value": 2 * stats.t.sf(np.abs(q / se), df), "coef": q, "se": se, "df": df,
        })
    out["se_mc"] = np.sqrt(np.clip(np.diag(st.vcov_mc), 0.0, None)) if st.vcov_mc is not None else np.nan
    out["samples"] = M
    out["failed_fits"] = failed
    out["cold_retries"] = retries
    out["event_free_samples"] = ev_free
    out["estimand"] = ESTIMAND
    out["conditional_on"] = CONDITIONAL_ON
    out["ci_method"] = CI_METHOD
    if ci == "auto":
        n_min = int(tab.iloc[des.rows][arm_col].astype(str).value_counts().min())
        ci = "permutation" if n_min < SMALL_SAMPLE_N else "sandwich"
    if ci == "permutation":
        keep = st.reduction.keep_rows  # patients of an event-free arm out: that arm's term is -inf, the others from the reduced model
        perm_note = _permutation_rows(out, tab.iloc[des.rows].reset_index(drop=True)[keep], y[keep], formula, reference, offset_years, arm_col,
                                      seed, n_permutations)
        if perm_note:
            notes.append(perm_note)
    ys = y.sum(axis=0)
    common = []
    if ys.sum() == 0:
        common.append("no sample holds a lesion")
    elif not st.converged:
        common.append("the stacked NB2 fit did not converge")
    if failed > MAX_FAILED_SHARE * M:
        common.append(f"{failed} of {M} per-sample fits failed (more than {MAX_FAILED_SHARE:.0%})")
    estimable, note = [], []
    for j, r in enumerate(out.itertuples()):
        why = list(common)
        if st.reduction.infinite[j]:
            why.append(f"no event among this term's patients in any of the {M} samples (infinite MLE: rate ratio 0)")
        elif st.reduction.empty[j]:
            why.append("no patient left for this term")
        ok, nt = assess_ratio(r.rate_ratio, r.ci_low, r.ci_high, reasons=why)
        extra = [f"{ev_free[j]} of {M} samples hold no event among this term's patients (infinite per-sample MLE; the stacked fit uses them)"] if ev_free[j] else []
        if int(np.sum(ys == 0)):
            extra.append(f"{int(np.sum(ys == 0))} of {M} samples hold no lesion at all")
        estimable.append(ok)
        note.append("; ".join(x for x in (nt, *extra, *notes) if x))
    out["estimable"] = estimable
    out["note"] = note
    keep = out["term"] != "Intercept"
    out = out[keep].reset_index(drop=True)
    return ForecastRateRatios(out, M, failed, coefs[ok_rows], vars_[ok_rows], "; ".join(notes), per)


def _permutation_rows(out: pd.DataFrame, tab: pd.DataFrame, y: np.ndarray, formula: str, reference: str, offset_years: str,
                      arm_col: str, seed: int, n_permutations: int) -> str:
    """Replace, in place, each arm row's rate ratio, CI and p-value of `out` by the randomization interval on
    the patients' forecast totals (y (n, M) in the order of tab's rows); returns a note ('' when done).
    A formula the permutation test cannot take (the arm not a main effect, ...) keeps the sandwich, with a note."""
    lhs = formula.split("~", 1)[0].strip()
    M = y.shape[1]
    totals = tab.assign(**{lhs: y.sum(axis=1), "_exposure_": tab[offset_years].to_numpy(dtype=float) * M, arm_col: tab[arm_col].astype(str)})
    try:
        res = primary_tests(totals, formula, arm_col, reference, method="permutation", offset_col="_exposure_", seed=seed,
                            n_permutations=n_permutations).table.set_index("arm")
    except InputError as e:
        return f"the randomization interval could not be computed ({e.problem}); the sandwich interval is shown"
    for i, term in enumerate(out["term"]):
        if term not in res.index or not np.isfinite(out.at[i, "coef"]):
            continue
        r = res.loc[term]
        out.loc[i, ["rate_ratio", "ci_low", "ci_high", "p_value"]] = [r["rate_ratio"], r["ci_low"], r["ci_high"], r["p_value"]]
        rr = float(r["rate_ratio"])
        out.at[i, "coef"] = np.log(rr) if rr > 0 else (-np.inf if rr == 0 else np.nan)
        out.at[i, "df"] = np.nan
        out.at[i, "ci_method"] = f"{CI_METHOD_PERMUTATION}, B = {n_permutations}, seed {seed}"
    return ""


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
