"""Repeated simulated trials for the forecast-derived numbers: coverage, type-I error, power.

Used by the fast checks in tests/stats (test_synthetic, test_heterogeneity, ...) and the full runs in
bench/validity.py. Trials come from the counts-only simulator (mseval.simulate.counts_only);
forecasts are drawn from the truth by simulated forecasters (`forecast_counts`):
    oracle         Poisson(mu)                          the true law
    overdispersed  Poisson(mu G), G ~ Gamma(1/k, k) per sample    right mean, too wide
    biased         Poisson(bias mu), every arm          over-forecast, ratios unchanged
    effect_biased  Poisson(bias mu) on non-reference arms only    wrong treatment effect
    uninformative  Poisson(m G_i), G_i ~ Gamma(1, 1) per patient, m the reference-arm mean
                   (no relation to the patient's real outcomes; arms share the noise)
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from mseval.seeding import rng_for
from mseval.simulate.arms import ArmSpec
from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.counterfactual import calibrated_counterfactual, counterfactual_effects
from mseval.stats.ensemble_counts import forecast_means
from mseval.stats.heterogeneity import interaction_test, predicted_benefit
from mseval.stats.prognostic import prognostic_score
from mseval.stats.synthetic import fit_forecast_rate_ratios, fully_synthetic_rrr, rubin_combine
from mseval.validity.observed import DRUG, PLACEBO  # the two arms of every validity study, defined once

KINDS = ("oracle", "overdispersed", "biased", "effect_biased", "uninformative")


def forecast_counts(truth: pd.DataFrame, kind: str, samples: int, seed: int, *, reference: str = "placebo",
                    extra_dispersion: float = 1.0, bias: float = 2.0) -> pd.DataFrame:
    """Ensemble counts (patient_id, arm, sample, count) for every row of truth.csv, from a simulated forecaster."""
    rng = rng_for(seed, "forecast-validity", kind)
    mu = truth["expected_count"].to_numpy(dtype=float)
    m = np.repeat(mu, samples)
    if kind == "oracle":
        lam = m
    elif kind == "overdispersed":
        k = extra_dispersion
        lam = m * rng.gamma(1.0 / k, k, len(m))
    elif kind == "biased":
        lam = bias * m
    elif kind == "effect_biased":
        lam = m * np.where(np.repeat(truth["arm"].to_numpy() == reference, samples), 1.0, bias)
    elif kind == "uninformative":
        pid = truth["patient_id"].to_numpy()
        uniq, inv = np.unique(pid, return_inverse=True)
        g = rng.gamma(1.0, 1.0, len(uniq))[inv]
        base = float(truth.loc[truth["arm"] == reference, "expected_count"].mean())
        rr = truth["rate_ratio"].to_numpy(dtype=float)
        lam = np.repeat(base * g * rr, samples)
    else:
        raise ValueError(f"unknown forecaster kind {kind!r}; choose one of {', '.join(KINDS)}")
    return pd.DataFrame({
        "patient_id": np.repeat(truth["patient_id"].to_numpy(), samples), "arm": np.repeat(truth["arm"].to_numpy(), samples),
        "sample": np.tile(np.arange(samples, dtype=np.int64), len(truth)), "count": rng.poisson(lam).astype(np.int64),
    })


def law_target(true_rr: float, kind: str, bias: float = 2.0) -> float:
    """The rate ratio under the forecaster's law (what forecast RR and counterfactual ratio estimate)."""
    return true_rr * bias if kind == "effect_biased" else true_rr


def _z_covers(est: float, high: float, df: float, target: float) -> bool:
    """Whether the normal-critical-value version of a t interval (est x exp(+/- t_df se)) covers target: the
    delta-method interval before the kurtosis df (`influence_t`), for comparison on the same trials."""
    se = np.log(high / est) / stats.t.ppf(0.975, df)
    return bool(abs(np.log(est) - np.log(target)) <= 1.959963984540054 * se)


def forecast_trials(n_trials: int, *, kind: str = "oracle", patients_per_arm: int = 100, samples: int = 10, seed0: int = 0,
                    heldout_per_arm: int = 0, drug: ArmSpec = DRUG, extra_dispersion: float = 1.0, bias: float = 2.0) -> pd.DataFrame:
    """One row per simulated two-arm trial: the forecast RR (sandwich; the randomization interval on the
    patient totals, `forecast_perm_*`; Rubin's and the RRR 2003 rule on the same fits for comparison), the counterfactual ratio of means and, with
    `heldout_per_arm` > 0, the ratio calibrated on a separate held-out trial with observed outcomes;
    each with whether its CI covers the true marginal RR and the forecaster-law target."""
    base = TrialConfig(patients_per_arm=patients_per_arm, arms=(PLACEBO, drug))
    true_rr = population_rate_ratios(base)[drug.arm]
    target = law_target(true_rr, kind, bias)
    z = 1.959963984540054
    rows = []
    for k in range(n_trials):
        cfg = replace(base, seed=seed0 + k)
        tr = simulate_count_trial(cfg, samples=1, forecast_seed=seed0 + k)
        counts = forecast_counts(tr.truth, kind, samples, seed0 + k, extra_dispersion=extra_dispersion, bias=bias)
        fc = fit_forecast_rate_ratios(tr.table, counts, reference="placebo", ci="sandwich")
        r = fc.table.set_index("term").loc[drug.arm]
        rp = fit_forecast_rate_ratios(tr.table, counts, reference="placebo", ci="permutation", seed=seed0 + k).table.set_index("term").loc[drug.arm]
        q, se_rubin, df_rubin, _ = rubin_combine(fc.per_sample_coef, fc.per_sample_var)
        t_rrr = fully_synthetic_rrr(fc.per_sample_coef, fc.per_sample_var)
        crit = stats.t.ppf(0.975, df_rubin[1])
        means = forecast_means(counts)
        cf = counterfactual_effects(means, "placebo").average.set_index("arm").loc[drug.arm]
        row = {"trial": k, "kind": kind, "true_rate_ratio": true_rr, "law_target": target,
               "forecast_rr": r["rate_ratio"], "forecast_ci_low": r["ci_low"], "forecast_ci_high": r["ci_high"], "forecast_se": r["se"],
               "forecast_covers_law": bool(r["ci_low"] <= target <= r["ci_high"]), "forecast_covers_truth": bool(r["ci_low"] <= true_rr <= r["ci_high"]),
               "forecast_perm_rr": rp["rate_ratio"], "forecast_perm_ci_low": rp["ci_low"], "forecast_perm_ci_high": rp["ci_high"],
               "forecast_perm_covers_law": bool(rp["ci_low"] <= target <= rp["ci_high"]),
               "rubin_se": float(se_rubin[1]), "rubin_covers_law": bool(abs(q[1] - np.log(target)) <= crit * se_rubin[1]),
               "rrr_variance": float(t_rrr[1]), "between_sample_sd": float(np.std(fc.per_sample_coef[:, 1], ddof=1)),
               "cf_ratio": cf["ratio_of_means"], "cf_ci_low": cf["ratio_ci_low"], "cf_ci_high": cf["ratio_ci_high"],
               "cf_covers_law": bool(cf["ratio_ci_low"] <= target <= cf["ratio_ci_high"]), "cf_covers_truth": bool(cf["ratio_ci_low"] <= true_rr <= cf["ratio_ci_high"]),
               "cf_df": cf["ratio_df"], "cf_z_covers_law": _z_covers(cf["ratio_of_means"], cf["ratio_ci_high"], cf["ratio_df"], target)}
        if heldout_per_arm > 0:
            hcfg = replace(base, patients_per_arm=heldout_per_arm, seed=10_000_000 + seed0 + k)
            ho = simulate_count_trial(hcfg, samples=1, forecast_seed=seed0 + k)
            ho_truth = ho.truth[ho.truth["allocated"]].assign(patient_id=lambda x: "H" + x["patient_id"])
            ho_counts = forecast_counts(ho_truth, kind, samples, 20_000_000 + seed0 + k, extra_dispersion=extra_dispersion, bias=bias)
            all_means = pd.concat([means, forecast_means(ho_counts)], ignore_index=True)
            observed = ho.table.assign(patient_id="H" + ho.table["patient_id"])
            cal = calibrated_counterfactual(all_means, observed, list(observed["patient_id"]), "placebo").set_index("arm").loc[drug.arm]
            row.update({"cal_ratio": cal["calibrated_ratio"], "cal_ci_low": cal["ci_low"], "cal_ci_high": cal["ci_high"],
                        "cal_covers_truth": bool(cal["ci_low"] <= true_rr <= cal["ci_high"]), "cal_df": cal["df"],
                        "cal_z_covers_truth": _z_covers(cal["calibrated_ratio"], cal["ci_high"], cal["df"], true_rr)})
        rows.append(row)
    return pd.DataFrame(rows)


def heterogeneity_trials(n_trials: int, *, modifier: float, patients_per_arm: int = 100, samples: int = 10, seed0: int = 0,
                         drug: ArmSpec = DRUG) -> pd.DataFrame:
    """One row per trial: the arm x predicted-benefit interaction test with oracle forecasts, p-value
    with the model-based SE (`p_value`, the test's) and the sandwich one (`p_value_sandwich`)
    (modifier 0: a constant true rate ratio, the null, so the per-patient response spread is off too;
    the simulator's 0.3: age modifies the effect, beside the default response spread)."""
    spread = {} if modifier else {"response_sd": 0.0}
    base = TrialConfig(patients_per_arm=patients_per_arm, arms=(PLACEBO, drug), modifier=modifier, **spread)
    rows = []
    for k in range(n_trials):
        tr = simulate_count_trial(replace(base, seed=seed0 + k), samples=samples, forecast_seed=seed0 + k)
        means = forecast_means(tr.counts)
        res = interaction_test(tr.table, predicted_benefit(means, "placebo", drug.arm), drug.arm, "placebo",
                               prognostic=prognostic_score(means, "placebo"))
        rows.append({"trial": k, "modifier": modifier, **{c: res[c] for c in ("interaction_ratio", "p_value", "p_value_sandwich", "estimable")}})
    return pd.DataFrame(rows)


def null_prognostic_trials(n_trials: int, *, patients_per_arm: int = 100, samples: int = 10, seed0: int = 0, n_boot: int = 200,
                           power_sims: int = 0, drug: ArmSpec = DRUG) -> pd.DataFrame:
    """Homogeneous true risk (no age effect, no modifier, near-zero dispersion) and uninformative
    forecasts: per trial, the prognostic saving with its CI, and optionally simulated power."""
    from mseval.stats.power import power_table
    from mseval.stats.prognostic import prognostic_adjustment

    base = TrialConfig(patients_per_arm=patients_per_arm, arms=(PLACEBO, drug), dispersion=1e-4, age_effect=0.0, modifier=0.0,
                       response_sd=0.0)
    rows = []
    for k in range(n_trials):
        tr = simulate_count_trial(replace(base, seed=seed0 + k), samples=1, forecast_seed=seed0 + k)
        means = forecast_means(forecast_counts(tr.truth, "uninformative", samples, seed0 + k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = prognostic_adjustment(tr.table, means, "placebo", n_boot=n_boot, seed=seed0 + k).table.iloc[0]
        row = {"trial": k, "saving_pct": p["sample_size_saving_pct"], "saving_ci_low_pct": p["saving_ci_low_pct"],
               "saving_ci_high_pct": p["saving_ci_high_pct"], "procova_r": p["procova_correlation"],
               "procova_ci_low": p["procova_correlation_ci_low"], "procova_ci_high": p["procova_correlation_ci_high"],
               "procova_saving_pct": p["procova_saving_pct"], "procova_saving_ci_low_pct": p["procova_saving_ci_low_pct"],
               "procova_saving_ci_high_pct": p["procova_saving_ci_high_pct"]}
        if power_sims:
            sim = power_table(tr.table, means, "placebo", sims=power_sims, seed=seed0 + k).simulated
            row.update({"n_per_arm": int(sim["n_per_arm"].iloc[0]), "power_unadjusted": float(sim.loc[~sim["adjusted"], "power"].iloc[0]),
                        "power_adjusted": float(sim.loc[sim["adjusted"], "power"].iloc[0])})
        rows.append(row)
    return pd.DataFrame(rows)
