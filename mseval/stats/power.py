"""Power and sample size for a two-arm NB2 comparison of NET2 counts, with and without the
prognostic score -- the outcome law taken from the OBSERVED trial, never from the forecasts.

Design assumptions (stated in every row): reference rate and NB2 dispersion from the observed
NB2 fit; the treatment effect (rate ratio) assumed for the design is the forecast ratio of means
(column `design_rate_ratio`; an assumption, not an estimate of power).

Analytic: statsmodels' `power_negbin_ratio_2indep` (Zhu and Lakkis 2014 variance, 'alt') with the
observed dispersion, solved for the patients per arm that reach 80% / 90% power.

Simulated: the score-outcome relation is the observed NB2 fit `net2 ~ arm + score` (score centred):
slope gamma with its SE, intercept, residual dispersion alpha. Each simulated trial resamples
2n patients' (score, follow-up) from the trial, randomizes them 1:1, draws gamma* ~ N(gamma_hat,
SE^2) (the relation's uncertainty is carried into the power), and draws counts
NB2(exp(b0 + log RR [treated] + gamma* (score - mean)) x years, alpha). Both analyses (arm; arm +
score) are fitted to the same trials; rejection at two-sided 0.05 (Wald). A score unrelated to
the observed outcomes gives gamma_hat ~ 0 and the two powers agree within Monte Carlo error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from mseval.stats.design import design_matrix
from mseval.stats.nb2_mle import fit_nb2, nb2_wald

ESTIMAND = ("power of a new two-arm trial (NB2 Wald test, two-sided 0.05) whose outcomes follow the observed trial's NB2 law "
            "and score-outcome relation, with the design rate ratio assumed")


def analytic_power(rate_ref: float, rate_arm: float, n_per_arm: float, *, years: float = 1.0, dispersion: float = 1.0, alpha: float = 0.05) -> float:
    """Power of the two-sided Wald test of the rate ratio (rates per year, `years` of follow-up)."""
    from statsmodels.stats.rates import power_negbin_ratio_2indep

    res = power_negbin_ratio_2indep(rate_arm, rate_ref, n_per_arm, exposure=years, dispersion=dispersion, alpha=alpha)
    return float(res.power)


def sample_size(rate_ref: float, rate_arm: float, *, power: float = 0.8, years: float = 1.0, dispersion: float = 1.0, alpha: float = 0.05) -> float:
    """Patients per arm (continuous; round up) for `power`."""
    f = lambda n: analytic_power(rate_ref, rate_arm, n, years=years, dispersion=dispersion, alpha=alpha) - power  # noqa: E731
    if f(2.0) >= 0:
        return 2.0
    hi = 10.0
    while f(hi) < 0 and hi < 1e7:
        hi *= 4
    return float(optimize.brentq(f, 2.0, hi, xtol=1e-3))


@dataclass(frozen=True)
class PowerTable:
    """analytic: per arm, patients per arm for 80% and 90% power; simulated: per (arm, n per arm,
    adjusted) the simulated power with its Monte Carlo standard error."""

    analytic: pd.DataFrame
    simulated: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.analytic


@dataclass(frozen=True)
class OutcomeLaw:
    """The observed NB2 fit net2 ~ arm + centred score, restricted to the reference arm's law."""

    intercept: float  # log rate per year at the mean score, reference arm
    gamma: float
    gamma_se: float
    alpha: float
    alpha_unadjusted: float
    score_mean: float


def observed_outcome_law(table: pd.DataFrame, score: pd.Series, reference: str, *, response: str = "net2") -> OutcomeLaw:
    """Fit the observed counts on arm (+ the centred score) to get the design's outcome law."""
    d = table.assign(score=score.loc[table["patient_id"]].to_numpy(dtype=float))
    m = float(d["score"].mean())
    d["score"] = d["score"] - m
    y = d[response].to_numpy(dtype=float)
    des0 = design_matrix(d, "arm", reference=reference)
    f0 = fit_nb2(y[des0.rows], des0.X, des0.offset)
    if d["score"].std() < 1e-12:
        return OutcomeLaw(float(f0.beta[0]), 0.0, 0.0, f0.alpha, f0.alpha, m)
    des = design_matrix(d, "arm + score", reference=reference)
    f = fit_nb2(y[des.rows], des.X, des.offset)
    k = des.names.index("score")
    se = nb2_wald(des.X, des.offset, f.beta, f.alpha).se
    return OutcomeLaw(float(f.beta[0]), float(f.beta[k]), float(se[k]), f.alpha, f0.alpha, m)


def simulate_power(law: OutcomeLaw, scores: np.ndarray, years: np.ndarray, rate_ratio: float, n_per_arm: int, sims: int,
                   rng: np.random.Generator) -> tuple[int, int, int]:
    """(rejections unadjusted, rejections adjusted, simulations that could be fitted) over `sims` trials."""
    z = stats.norm.ppf(0.975)
    hits = [0, 0]
    done = 0
    treated = np.r_[np.zeros(n_per_arm), np.ones(n_per_arm)]
    X0 = np.c_[np.ones(2 * n_per_arm), treated]
    for _ in range(sims):
        idx = rng.integers(0, len(scores), 2 * n_per_arm)
        s, yrs = scores[idx] - law.score_mean, years[idx]
        g = rng.normal(law.gamma, law.gamma_se) if law.gamma_se > 0 else law.gamma
        mu = np.exp(law.intercept + np.log(rate_ratio) * treated + g * s) * yrs
        lam = mu * rng.gamma(1.0 / law.alpha, law.alpha, len(mu)) if law.alpha > 1e-8 else mu
        y = rng.poisson(lam).astype(float)
        if y.sum() == 0:
            done += 1  # no events: no rejection
            continue
        off = np.log(yrs)
        ok = True
        for k, X in enumerate((X0, np.c_[X0, s])):
            f = fit_nb2(y, X, off)
            wald = nb2_wald(X, off, f.beta, f.alpha)
            ok = ok and f.converged and wald.ok
            hits[k] += int(abs(f.beta[1]) > z * wald.se[1])
        done += int(ok)
    return hits[0], hits[1], done


def power_table(
    table: pd.DataFrame,
    means: pd.DataFrame,
    reference: str,
    *,
    arms: list[str] | None = None,
    n_grid: tuple[int, ...] = (),
    sims: int = 100,
    seed: int = 0,
    response: str = "net2",
) -> PowerTable:
    """Analytic sample sizes and simulated power (unadjusted and score-adjusted) per arm.

    table: observed analysis table; means: forecast_means output (for the score and the design
    rate ratio). `n_grid` empty: the analytic 80%-power n only."""
    from mseval.stats.prognostic import prognostic_score

    years_mean = float(table["followup_years"].mean())
    wide = means.pivot(index="patient_id", columns="arm", values="expected")
    arms = arms or [a for a in wide.columns if a != reference]
    score = prognostic_score(means, reference)
    law = observed_outcome_law(table, score, reference, response=response)
    r0 = float(np.exp(law.intercept))  # per year, at the mean score (adjusted model)
    obs_ref = table[table["arm"] == reference]
    r0_obs = float(obs_ref[response].sum() / obs_ref["followup_years"].sum()) if len(obs_ref) else np.nan
    rng = np.random.default_rng(seed)
    sc = score.loc[table["patient_id"]].to_numpy(dtype=float)
    yrs = table["followup_years"].to_numpy(dtype=float)
    analytic, simulated = [], []
    common = {"estimand": ESTIMAND, "outcome_law": "observed NB2 fit (reference rate, dispersion, score slope with its SE)",
              "design_rate_ratio_source": "forecast ratio of means (assumption)"}
    for arm in arms:
        rr = float(wide[arm].sum() / wide[reference].sum()) if wide[reference].sum() > 0 else np.nan
        base = {"arm": arm, "rate_reference": r0_obs, "rate_arm": r0_obs * rr, "design_rate_ratio": rr, "rate_ratio": rr,
                "dispersion": law.alpha_unadjusted, "dispersion_adjusted": law.alpha, "score_slope": law.gamma, "score_slope_se": law.gamma_se,
                "years": years_mean, **common}
        if not (np.isfinite(rr) and rr > 0 and np.isfinite(r0_obs) and r0_obs > 0) or abs(rr - 1) < 1e-9:
            analytic.append({**base, "n_per_arm_80": np.nan, "n_per_arm_90": np.nan, "estimable": False,
                             "note": "not estimable: a rate is zero or the design rate ratio is 1"})
            continue
        n80 = sample_size(r0_obs, r0_obs * rr, power=0.8, years=years_mean, dispersion=law.alpha_unadjusted)
        n90 = sample_size(r0_obs, r0_obs * rr, power=0.9, years=years_mean, dispersion=law.alpha_unadjusted)
        analytic.append({**base, "n_per_arm_80": int(np.ceil(n80)), "n_per_arm_90": int(np.ceil(n90)), "estimable": True, "note": ""})
        for n in (n_grid or (max(int(np.ceil(n80)), 4),)):
            if sims <= 0:
                continue
            h0, h1, done = simulate_power(law, sc, yrs, rr, n, sims, rng)
            for adjusted, h in ((False, h0), (True, h1)):
                p = h / sims
                simulated.append({"arm": arm, "n_per_arm": n, "adjusted": adjusted, "power": p, "mc_se": float(np.sqrt(p * (1 - p) / sims)),
                                  "simulations": sims, "fitted": done, "design_rate_ratio": rr, "reference_rate_at_mean_score": r0,
                                  "estimand": ESTIMAND, "outcome_law": common["outcome_law"]})
    sim_cols = ["arm", "n_per_arm", "adjusted", "power", "mc_se", "simulations", "fitted", "design_rate_ratio", "reference_rate_at_mean_score",
                "estimand", "outcome_law"]
    return PowerTable(pd.DataFrame(analytic), pd.DataFrame(simulated, columns=sim_cols))


# ---------------------------------------------------------------------------------------------
# Power for the test and multiplicity the SAP plans (issue 23), and assurance.
#
# K treated arms, each compared with one shared reference arm (n patients per arm, rates per year,
# `years` of follow-up, NB2 dispersion alpha). The Wald statistic of arm k is approximately
# Z_k ~ N(log RR_k / se_k, 1) with se_k^2 = (1 / (n t r_0) + 1 / (n t r_k) + 2 alpha / n) (the
# variance statsmodels' `power_negbin_ratio_2indep` uses, 'alt'), and the shared reference makes
# corr(Z_j, Z_k) = v_0 / (se_j se_k), v_0 = (1 / (t r_0) + alpha) / n (0.5 for equal rates).

PROCEDURES = ("none", "bonferroni", "holm", "dunnett", "fixed_sequence")


def dunnett_critical_value(k: int, alpha: float = 0.05, rho: float = 0.5) -> float:
    """Two-sided single-step Dunnett critical value c: P(max_k |Z_k| <= c) = 1 - alpha for K = k
    standard normal statistics with common correlation rho (0.5: equal arms sharing the control;
    large-sample, i.e. infinite degrees of freedom). K = 1 gives z_{1 - alpha/2}.

    Computed by one-dimensional Gauss-Hermite quadrature (160 nodes) over W: Z_k = sqrt(rho) W + sqrt(1 - rho) E_k."""
    if k < 1 or not 0.0 <= rho < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need k >= 1, 0 <= rho < 1, 0 < alpha < 1 (got k={k}, rho={rho}, alpha={alpha})")
    s, r = np.sqrt(rho), np.sqrt(1.0 - rho)
    x, w = np.polynomial.hermite_e.hermegauss(160)
    w = w / np.sqrt(2.0 * np.pi)

    def coverage(c: float) -> float:
        return float(np.sum(w * (stats.norm.cdf((c - s * x) / r) - stats.norm.cdf((-c - s * x) / r)) ** k))

    lo = stats.norm.isf(alpha / 2)
    return float(optimize.brentq(lambda c: coverage(c) - (1.0 - alpha), lo - 1e-9, stats.norm.isf(alpha / (2 * k)) + 1e-9, xtol=1e-12))


def per_comparison_alpha(procedure: str, k: int, alpha: float = 0.05, rho: float = 0.5) -> float:
    """Two-sided level at which each arm's first (or only) test is made: none / fixed_sequence: alpha
    (the sequence spends alpha step by step); bonferroni / holm: alpha / K (for Holm this is the first
    step only: its later steps test at alpha / (K - 1), ..., so power computed at alpha / K is a lower
    bound, conservative); dunnett: 2 (1 - Phi(c_K)) with c_K the single-step Dunnett critical value
    (step-down Dunnett is at least as powerful)."""
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown multiplicity procedure {procedure!r} (one of {', '.join(PROCEDURES)})")
    if procedure in ("none", "fixed_sequence"):
        return alpha
    if procedure in ("bonferroni", "holm"):
        return alpha / k
    return float(2.0 * stats.norm.sf(dunnett_critical_value(k, alpha, rho)))


def wald_se_log_rr(rate_ref: float, rate_arm: float, n_per_arm: float, *, years: float = 1.0, dispersion: float = 1.0) -> float:
    """Large-sample SE of the NB2 log rate ratio, n patients per arm (rates per year, `years` of follow-up)."""
    return float(np.sqrt((1.0 / (years * rate_ref) + 1.0 / (years * rate_arm) + 2.0 * dispersion) / n_per_arm))


def success_power(log_rr: float, se: float, level: float) -> float:
    """Probability that the two-sided test at `level` rejects with the estimate favouring the treated
    arm (rate ratio < 1): Phi(-z_{1 - level/2} - log_rr / se). The trial's "success" for assurance."""
    return float(special.ndtr(special.ndtri(level / 2) - log_rr / se))


def wald_power(log_rr: float, se: float, level: float) -> float:
    """Two-sided power of |Z| > z_{1 - level/2}, Z ~ N(log_rr / se, 1)."""
    c, m = -special.ndtri(level / 2), abs(log_rr) / se
    return float(special.ndtr(m - c) + special.ndtr(-c - m))


def planned_power(rate_ref: float, rate_ratios: list[float] | np.ndarray, n_per_arm: float, *, years: float = 1.0, dispersion: float = 1.0,
                  alpha: float = 0.05, procedure: str = "holm") -> pd.DataFrame:
    """Analytic (Wald) power of each arm's comparison with the shared reference under `procedure`.

    rate_ratios: design rate ratio of each treated arm, in the order of a fixed sequence. Columns:
    step, rate_ratio, se_log_rr, level (the per-comparison two-sided level), power (probability of
    rejecting this arm's null; fixed_sequence: of reaching and rejecting this step, i.e. rejecting
    steps 1..k, computed from the correlated Wald statistics with the effects in the design's
    direction), bound ("exact" in the normal approximation, or "lower bound" for Holm), procedure, note."""
    rr = np.asarray(rate_ratios, dtype=float)
    k = len(rr)
    if k == 0 or np.any(~np.isfinite(rr) | (rr <= 0)) or not (rate_ref > 0 and n_per_arm > 0 and years > 0 and dispersion >= 0):
        raise ValueError("need positive rates, rate ratios, n per arm, years and a non-negative dispersion")
    se = np.array([wald_se_log_rr(rate_ref, rate_ref * r, n_per_arm, years=years, dispersion=dispersion) for r in rr])
    v0 = (1.0 / (years * rate_ref) + dispersion) / n_per_arm
    level = per_comparison_alpha(procedure, k, alpha)
    power = np.array([wald_power(np.log(r), s, level) for r, s in zip(rr, se)])
    notes = [""] * k
    bound = "exact (normal approximation)"
    if procedure == "holm":
        bound = "lower bound (Holm's later steps test at larger levels)"
    if procedure == "dunnett" and k > 1 and np.ptp(se) > 1e-12:
        notes = ["critical value for correlation 0.5 (equal arms); the rates differ, so the true correlation is not exactly 0.5"] * k
    if procedure == "fixed_sequence":
        c = stats.norm.isf(alpha / 2)
        corr = np.outer(1 / se, 1 / se) * v0
        np.fill_diagonal(corr, 1.0)
        mean = np.abs(np.log(rr)) / se  # each statistic signed in its effect's direction
        power = np.empty(k)
        for s in range(k):
            if s == 0:
                power[s] = stats.norm.sf(c - mean[0])
            else:
                # P(all S_i > c, i <= s) = P(all -S_i < -c): an orthant of the multivariate normal
                mvn = stats.multivariate_normal(mean=-mean[: s + 1], cov=corr[: s + 1, : s + 1], allow_singular=True, seed=0,
                                                abseps=1e-7, releps=1e-7)
                power[s] = float(mvn.cdf(np.full(s + 1, -c)))
        notes = ["probability of reaching and rejecting this step (steps rejected in the design's direction)"] * k
    return pd.DataFrame({"step": np.arange(1, k + 1), "rate_ratio": rr, "se_log_rr": se, "level": level, "power": power, "bound": bound,
                         "procedure": procedure, "n_per_arm": n_per_arm, "note": notes})


def assurance(power_of_log_rr: Any, mean_log_rr: float, sd_log_rr: float) -> float:
    """Assurance: E[power(L)] over the design prior L ~ N(mean_log_rr, sd_log_rr^2) of the log rate
    ratio (adaptive quadrature over mean +/- 10 SD, with a breakpoint at L = 0 where a power curve
    turns steeply for large trials; sd 0 gives power(mean)). `power_of_log_rr`: a function of one
    log rate ratio, e.g. lambda l: planned_power(r0, [exp(l)], n).power[0]."""
    from scipy import integrate

    if sd_log_rr < 0:
        raise ValueError("sd_log_rr must be >= 0")
    if sd_log_rr == 0:
        return float(power_of_log_rr(mean_log_rr))
    z0 = -mean_log_rr / sd_log_rr
    f = lambda z: float(power_of_log_rr(mean_log_rr + sd_log_rr * z)) * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)  # noqa: E731
    pts = [z0] if -10.0 < z0 < 10.0 else None
    return float(integrate.quad(f, -10.0, 10.0, points=pts, epsabs=1e-10, epsrel=1e-10, limit=200)[0])


def planned_assurance(rate_ref: float, mean_log_rr: float, sd_log_rr: float, n_per_arm: float, *, k: int = 1, years: float = 1.0,
                      dispersion: float = 1.0, alpha: float = 0.05, procedure: str = "none") -> float:
    """Assurance of one arm's comparison: the probability of success (a rejection favouring the treated
    arm, `success_power`; Wald, at the per-comparison level of `procedure` with K = k arms; for
    fixed_sequence: of its first step) averaged over the prior N(mean_log_rr, sd_log_rr^2) on its log
    rate ratio. It is capped by the prior's mass on benefit, Phi(-mean_log_rr / sd_log_rr)."""
    level = per_comparison_alpha(procedure, k, alpha)
    f = lambda l: success_power(l, wald_se_log_rr(rate_ref, rate_ref * np.exp(l), n_per_arm, years=years, dispersion=dispersion), level)  # noqa: E731
    return assurance(f, mean_log_rr, sd_log_rr)


def planned_sample_size(rate_ref: float, rate_ratio: float, *, target: float = 0.8, k: int = 1, years: float = 1.0, dispersion: float = 1.0,
                        alpha: float = 0.05, procedure: str = "none", sd_log_rr: float = 0.0) -> float:
    """Patients per arm (continuous; round up) for which one arm's success power (sd_log_rr = 0; a
    rejection favouring the treated arm, as `planned_power` up to the negligible wrong-direction tail) or assurance
    (prior N(log rate_ratio, sd_log_rr^2)) reaches `target` under `procedure` with K = k arms. NaN
    when no n reaches it (assurance is capped by the prior's mass on effects in the design's direction)."""
    f = lambda n: planned_assurance(rate_ref, np.log(rate_ratio), sd_log_rr, n, k=k, years=years, dispersion=dispersion, alpha=alpha,  # noqa: E731
                                    procedure=procedure) - target
    if f(2.0) >= 0:
        return 2.0
    hi = 8.0
    while f(hi) < 0:
        hi *= 4
        if hi > 1e7:
            return float("nan")
    return float(optimize.brentq(f, 2.0, hi, xtol=1e-4))


def simulated_power(rate_ref: float, rate_ratio: float, n_per_arm: int, *, test: str = "wald", level: float = 0.05, years: float = 1.0,
                    dispersion: float = 1.0, sims: int = 200, seed: int = 0, n_permutations: int = 199) -> tuple[float, float]:
    """(power, Monte Carlo SE) of the SAP's primary test (`mseval.stats.small_sample` method `test`)
    at two-sided per-comparison `level`, from `sims` two-arm NB2 trials (n per arm, arm-only model,
    offset log(years)). For the tests without an analytic power (t, lrt, permutation, ...)."""
    from mseval.stats.small_sample import _Model, arm_tests

    rng = np.random.default_rng(seed)
    arm = np.repeat(["reference", "treated"], n_per_arm)
    d = (arm == "treated").astype(float)
    X = np.c_[np.ones(2 * n_per_arm), d]
    off = np.full(2 * n_per_arm, np.log(years))
    hits = 0
    for s in range(sims):
        mu = rate_ref * years * np.where(d == 1, rate_ratio, 1.0)
        lam = mu * rng.gamma(1.0 / dispersion, dispersion, len(mu)) if dispersion > 0 else mu
        y = rng.poisson(lam).astype(float)
        if y.sum() == 0:
            continue  # no events: no rejection
        (row,) = arm_tests(_Model(y, X, off, {"treated": 1}, arm, "reference", None), "treated", (test,), seed=seed + s,
                           n_permutations=n_permutations, ci=False)
        hits += int(row["p_value"] <= level)
    p = hits / sims
    return p, float(np.sqrt(p * (1 - p) / sims))
