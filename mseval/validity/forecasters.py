"""Coverage of forecast effects when the forecaster is TRAINED: train/test trial pairs.

Each pair: an independent training trial and a test trial (placebo vs dimethyl fumarate, one visit
at 48 weeks, the simulator's count model: dispersion, age effect and modifier, per-patient response
spread). On the training trial, the count-level forecaster (NB2 on arm + log1p(gd_count) + age,
`mseval.stats.nb2_forecaster`) is fitted once on the patients as they are (the "single" forecaster,
conditional CIs: what `mseval effects` reported before) and K times on bootstrap resamples (the
family, two-level variance: `mseval.stats.forecaster_variance`). Each forecaster draws `samples`
NB2 outcomes for every test patient under both arms. Per pair, whether each 95% CI covers the true
rate ratio (the 2-arm population ratio of mean rates, `population_rate_ratios`): the test trial's
observed NB2, the forecast rate ratio (NB2 "net2 ~ arm" on the allocated arm's synthetic outcomes)
and the counterfactual ratio of means, single and family; and the oracle forecaster (Poisson of the
true expected count) alone (conditional CI) and as K independently seeded copies (two-level rule;
no training error, so the between component should vanish).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from mseval.seeding import rng_for
from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.design import design_matrix
from mseval.validity.forecast import DRUG, PLACEBO
from mseval.stats.forecaster_variance import counterfactual_arrays, two_level_combine
from mseval.stats.nb2_forecaster import fit_forecaster_family
from mseval.stats.nb2_mle import fit_nb2, nb2_wald
from mseval.stats.synthetic import stacked_sandwich

Z = stats.norm.ppf(0.975)


def pair_config(patients_per_arm: int = 100) -> TrialConfig:
    """The 2-arm, one-visit (48 weeks) trial of every pair."""
    return TrialConfig(followup_weeks=48, patients_per_arm=patients_per_arm, arms=(PLACEBO, DRUG))


def _effects(ya: np.ndarray, yr: np.ndarray, alloc_drug: np.ndarray, X: np.ndarray, off: np.ndarray) -> dict[str, float]:
    """One forecaster's forecast log RR (stacked sandwich: estimate, variance, MC variance) and
    counterfactual log ratio (delta method), from its samples ya, yr (n, M) under drug and placebo."""
    y = np.where(alloc_drug[:, None], ya, yr)
    st = stacked_sandwich(y, X, off)
    cf = counterfactual_arrays(ya, yr)
    return {"fc": float(st.coef[1]), "fc_w": float(st.vcov[1, 1]), "fc_s": float(st.vcov_mc[1, 1]) if st.vcov_mc is not None else np.nan,
            "cf": cf["log_ratio"], "cf_w": cf["w_log_ratio"], "cf_s": cf["s_log_ratio"]}


def _draw(mu: np.ndarray, alpha: float, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(n, samples) NB2(mu, alpha) draws (Poisson when alpha = 0)."""
    lam = np.repeat(mu[:, None], samples, axis=1)
    if alpha > 0:
        lam = lam * rng.gamma(1.0 / alpha, alpha, lam.shape)
    return rng.poisson(lam).astype(float)


def trained_forecaster_pairs(n_pairs: int, *, forecasters: int = 10, samples: int = 10, train_per_arm: int = 100, test_per_arm: int = 100,
                             seed0: int = 0) -> pd.DataFrame:
    """One row per train/test pair (see the module docstring): for each method m in observed,
    single_fc, single_cf, family_fc, family_cf, oracle_fc, oracle_cf, oracle_family_fc,
    oracle_family_cf: m_log (estimate, log scale), m_se, m_covers (95% CI covers the true rate ratio);
    plus the family's components (between SD, within SE, MC SE, truncated, df)."""
    base = pair_config(test_per_arm)
    true_rr = population_rate_ratios(pair_config(100))["dmf"]
    target = float(np.log(true_rr))
    rows = []
    for k in range(n_pairs):
        train = simulate_count_trial(replace(base, patients_per_arm=train_per_arm, seed=seed0 + k), samples=1).table
        test = simulate_count_trial(replace(base, seed=seed0 + 5_000_000 + k), samples=1)
        tab = test.table
        des = design_matrix(tab, "arm", reference="placebo")
        X, off = des.X, des.offset
        alloc = (tab["arm"] == "dmf").to_numpy()
        row: dict = {"pair": k, "true_rate_ratio": true_rr}
        # observed NB2 of the test trial
        fit = fit_nb2(tab["net2"].to_numpy(dtype=float), X, off)
        se = float(np.sqrt(nb2_wald(X, off, fit.beta, fit.alpha).vcov[1, 1]))
        row.update({"observed_log": float(fit.beta[1]), "observed_se": se, "observed_covers": bool(abs(fit.beta[1] - target) <= Z * se)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = fit_forecaster_family(train, 1, reference="placebo", bootstrap=False)[0]
            family = fit_forecaster_family(train, forecasters, reference="placebo", seed=seed0 + k)
        rng = rng_for(seed0 + k, "trained-forecaster-pairs")
        # forecasters: single (conditional CIs) and family (two-level)
        per = []
        for f in [single, *family]:
            mu_d, mu_p = f.mean(tab, "dmf"), f.mean(tab, "placebo")
            per.append(_effects(_draw(mu_d, f.alpha, samples, rng), _draw(mu_p, f.alpha, samples, rng), alloc, X, off))
        # oracle: Poisson of the true expected count; alone and as K independently seeded copies
        t = test.truth.set_index(["patient_id", "arm"])["expected_count"]
        mu_d = t.loc[[(p, "dmf") for p in tab["patient_id"]]].to_numpy(dtype=float)
        mu_p = t.loc[[(p, "placebo") for p in tab["patient_id"]]].to_numpy(dtype=float)
        oracle = [_effects(_draw(mu_d, 0.0, samples, rng), _draw(mu_p, 0.0, samples, rng), alloc, X, off) for _ in range(forecasters)]
        df_fc = float(len(tab) - X.shape[1])
        for name, e in (("single", per[0]), ("oracle", oracle[0])):
            for q in ("fc", "cf"):
                crit = stats.t.ppf(0.975, df_fc) if q == "fc" else Z
                se = float(np.sqrt(e[f"{q}_w"]))
                row.update({f"{name}_{q}_log": e[q], f"{name}_{q}_se": se, f"{name}_{q}_covers": bool(abs(e[q] - target) <= crit * se)})
        for name, fam in (("family", per[1:]), ("oracle_family", oracle)):
            for q in ("fc", "cf"):
                tl = two_level_combine([e[q] for e in fam], [e[f"{q}_w"] for e in fam], [e[f"{q}_s"] for e in fam],
                                       df_within=df_fc if q == "fc" else np.inf)
                row.update({f"{name}_{q}_log": tl.estimate, f"{name}_{q}_se": tl.se, f"{name}_{q}_covers": tl.covers(target),
                            f"{name}_{q}_between_sd": float(np.sqrt(tl.between)), f"{name}_{q}_within_se": float(np.sqrt(tl.within)),
                            f"{name}_{q}_mc_se": float(np.sqrt(tl.mc)), f"{name}_{q}_truncated": tl.truncated, f"{name}_{q}_df": tl.df})
        rows.append(row)
    return pd.DataFrame(rows)


METHODS = ("observed", "single_fc", "single_cf", "family_fc", "family_cf", "oracle_fc", "oracle_cf", "oracle_family_fc", "oracle_family_cf")


def summarize_pairs(d: pd.DataFrame) -> pd.DataFrame:
    """Per method: coverage of the true rate ratio, its binomial SE, mean reported SE, empirical SD of
    the log estimate, mean bias (log scale), share of pairs with a truncated variance component."""
    n = len(d)
    target = float(np.log(d["true_rate_ratio"].iloc[0]))
    rows = []
    for m in METHODS:
        cov = float(d[f"{m}_covers"].mean())
        rows.append({"method": m, "pairs": n, "coverage": cov, "coverage_binomial_se": float(np.sqrt(cov * (1 - cov) / n)),
                     "mean_se": float(d[f"{m}_se"].mean()), "empirical_sd": float(d[f"{m}_log"].std(ddof=1)),
                     "bias_log": float(d[f"{m}_log"].mean() - target),
                     "truncated_share": float(d[f"{m}_truncated"].mean()) if f"{m}_truncated" in d else np.nan})
    return pd.DataFrame(rows)
