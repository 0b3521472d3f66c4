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

import numpy as np
import pandas as pd
from scipy import optimize, stats

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
