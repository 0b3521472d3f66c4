"""Validity of the trial statistics on simulated trials with known truth (`make bench` runs it).

Parts (python bench/validity.py PART [PART ...]; default: all; each part a few minutes on one core, observed about 10: 999
bootstrap refits per trial;
`forecast-KIND` runs one forecaster of the `forecast` part):
  observed       500 two-arm trials (placebo vs dimethyl fumarate, RR 0.15 at age 37, 100 patients
                 per arm, the simulator's count model with its age effect modifier): coverage of the
                 superpopulation rate ratio by the 95% CI `mseval effects` reports (the studentized
                 bootstrap below 1,000 per arm; goal 93.5-96.5%); 500 null-arm trials: rejection rate
                 at 0.05 (goal 3.5-6.5%); beside them the NB2 model-based Wald CI (glm.nb's), the
                 sandwich, one dispersion per arm, and the oracle prognostic score.
                 `observed N SEED0 NULL_SEED0 [PER_ARM]` runs N trials of each from other seeds; `observed-null N
                 SEED0` only the null-arm trials.
  forecast       300 trials per forecaster (oracle, overdispersed, biased, effect_biased; 10 samples):
                 coverage of the forecast-RR CI (patient-level sandwich; Rubin's rules on the same fits
                 for comparison) and of the counterfactual ratio-of-means CI, of the forecaster-law
                 target and of the true rate ratio; the ratio calibrated on a held-out trial of 100 per
                 arm with observed outcomes, coverage of the true rate ratio.
  heterogeneity  500 trials with a constant true rate ratio (modifier 0): rejection rate of the arm x
                 predicted-benefit interaction test (goal 3.5-6.5%), sandwich SE (the test's) and
                 model-based SE on the same fits; 500 with the simulator's age modifier (0.3): power.
                 `heterogeneity-null N` runs only N null trials (e.g. 200).
  prognostic     uninformative forecasts, homogeneous true risk: 60 trials (100 bootstrap replicates
                 each), how often the prognostic sample-size saving's 95% CI includes 0 (and
                 PROCOVA's rho^2 CI); 6 trials x 300 simulated designs: adjusted vs unadjusted power.
  qini           200 oracle trials with the age modifier: Qini coefficient of the true ranking, of the
                 oracle forecasts' ranking and of random rankings; an all-tied score.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from mseval.stats.observed_ci import BOOTSTRAP_REPLICATES
from mseval.validity.observed import NULL, repeated_trials, summarize


def _mc(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n))


def observed(n_trials: int = 500, seed0: int = 100_000, null_seed0: int = 200_000, bootstrap: int = BOOTSTRAP_REPLICATES,
             per_arm: int = 100) -> dict[str, float]:
    """The tool's default interval first (`mseval effects`: the studentized bootstrap below 1,000 per arm,
    `mseval.stats.observed_ci`), then the model-based Wald CI of `glm.nb` and the other SEs for comparison."""
    effect = summarize(repeated_trials(n_trials, patients_per_arm=per_arm, seed0=seed0, by_arm=True, bootstrap_t=bootstrap))
    null = summarize(repeated_trials(n_trials, patients_per_arm=per_arm, drug=NULL, seed0=null_seed0, by_arm=True, bootstrap_t=bootstrap))
    return {
        "trials": float(n_trials),
        "coverage_dmf_default_interval": effect["bootstrap_t_coverage"],
        "miss_low_default_interval": effect["bootstrap_t_miss_low"],
        "miss_high_default_interval": effect["bootstrap_t_miss_high"],
        "null_rejection_rate_default_test": null["bootstrap_t_rejection_rate"],
        "null_rejection_rate_symmetric_bootstrap_p": null["bootstrap_t_rejection_rate_symmetric"],
        "null_ci_excludes_1_default_interval": null["bootstrap_t_null_ci_excludes_1"],
        "not_estimable_default_interval": effect["bootstrap_t_not_estimable"],
        "coverage_dmf_model_wald": effect["coverage"],
        "coverage_dmf_prognostic_adjusted": effect["adjusted_coverage"],
        "se_ratio_adjusted_vs_unadjusted": effect["se_ratio_adjusted_vs_unadjusted"],
        "null_rejection_rate_model_wald": null["rejection_rate"],
        "null_rejection_rate_prognostic_adjusted": null["adjusted_rejection_rate"],
        "null_coverage_model_wald": null["coverage"],
        "coverage_dmf_robust_se": effect["robust_coverage"],
        "null_rejection_rate_robust_se": null["robust_rejection_rate"],
        "coverage_dmf_by_arm_dispersion": effect["by_arm_coverage"],
        "null_rejection_rate_by_arm_dispersion": null["by_arm_rejection_rate"],
    }


def forecast(n_trials: int = 300, kinds: tuple[str, ...] = ("oracle", "overdispersed", "biased", "effect_biased")) -> pd.DataFrame:
    from mseval.validity.forecast import forecast_trials

    rows = []
    for kind in kinds:
        d = forecast_trials(n_trials, kind=kind, patients_per_arm=100, samples=10, seed0=400_000, heldout_per_arm=100)
        row = {"forecaster": kind, "trials": len(d)}
        for c in ("forecast_covers_law", "forecast_perm_covers_law", "forecast_covers_truth", "rubin_covers_law", "cf_covers_law", "cf_covers_truth",
                  "cal_covers_truth"):
            row[c] = float(d[c].mean())
        row["mc_se_at_95"] = _mc(0.95, len(d))
        row["forecast_se_over_empirical_sd"] = float(d["forecast_se"].mean() / np.log(d["forecast_rr"]).std(ddof=1))
        row["rubin_se_over_empirical_sd"] = float(d["rubin_se"].mean() / np.log(d["forecast_rr"]).std(ddof=1))
        row["rrr2003_variance_negative"] = float((d["rrr_variance"] < 0).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def heterogeneity(n_trials: int = 500) -> dict[str, float]:
    from mseval.validity.forecast import heterogeneity_trials

    null = heterogeneity_trials(n_trials, modifier=0.0, seed0=300_000)
    alt = heterogeneity_trials(n_trials, modifier=0.3, seed0=310_000)
    r0, r1 = float((null["p_value"] < 0.05).mean()), float((alt["p_value"] < 0.05).mean())
    return {"trials": float(n_trials), "null_rejection_rate": r0, "null_mc_se": _mc(0.05, n_trials), "null_not_estimable": float((~null["estimable"]).mean()),
            "null_rejection_rate_sandwich_se": float((null["p_value_sandwich"] < 0.05).mean()),
            "power_age_modifier_0.3": r1, "power_mc_se": _mc(r1, n_trials),
            "power_sandwich_se": float((alt["p_value_sandwich"] < 0.05).mean())}


def prognostic(n_trials: int = 60, n_power: int = 6, sims: int = 300) -> dict[str, float]:
    from mseval.validity.forecast import null_prognostic_trials

    d = null_prognostic_trials(n_trials, seed0=600_000, n_boot=100)
    inc = ((d["saving_ci_low_pct"] <= 0) & (d["saving_ci_high_pct"] >= 0)).mean()
    pw = null_prognostic_trials(n_power, seed0=610_000, n_boot=0, power_sims=sims)
    diff = pw["power_adjusted"] - pw["power_unadjusted"]
    return {"trials": float(n_trials), "saving_ci_includes_0": float(inc), "mean_saving_pct": float(d["saving_pct"].mean()),
            "saving_ci_claims_gain": float((d["saving_ci_low_pct"] > 0).mean()),
            "procova_saving_ci_includes_0": float(((d["procova_saving_ci_low_pct"] <= 0) & (d["procova_saving_ci_high_pct"] >= 0)).mean()),
            "procova_ci_includes_0": float(((d["procova_ci_low"] <= 0) & (d["procova_ci_high"] >= 0)).mean()),
            "power_designs": float(n_power), "sims_per_design": float(sims), "mean_power_unadjusted": float(pw["power_unadjusted"].mean()),
            "mean_power_adjusted": float(pw["power_adjusted"].mean()), "mean_difference": float(diff.mean()),
            "mc_se_of_mean_difference_unpaired_bound": float(np.sqrt(2 * 0.25 / sims / n_power))}


def qini(n_trials: int = 200) -> dict[str, float]:
    from mseval.simulate.counts_only import simulate_count_trial
    from mseval.simulate.model import TrialConfig
    from mseval.stats.ensemble_counts import forecast_means
    from mseval.validity.forecast import DRUG, PLACEBO
    from mseval.stats.qini import qini_coefficient

    base = TrialConfig(patients_per_arm=100, arms=(PLACEBO, DRUG))
    out: dict[str, list[float]] = {k: [] for k in ("true_vs_true", "true_obs", "oracle_vs_true", "oracle_obs", "random_vs_true", "random_obs", "tied_obs")}
    rng = np.random.default_rng(7)
    for k in range(n_trials):
        tr = simulate_count_trial(replace(base, seed=700_000 + k), samples=10, forecast_seed=k)
        m = forecast_means(tr.counts).pivot(index="patient_id", columns="arm", values="expected")
        t = tr.truth.pivot(index="patient_id", columns="arm", values="expected_count")
        d = tr.table
        treated = (d["arm"] == "dmf").to_numpy()
        y = (d["net2"] / d["followup_years"]).to_numpy()
        ids = d["patient_id"]
        true_b = (t["placebo"] - t["dmf"]).loc[ids].to_numpy()
        pred_b = (m["placebo"] - m["dmf"]).loc[ids].to_numpy()
        rand = rng.random(len(ids))
        for name, s in (("true", true_b), ("oracle", pred_b), ("random", rand)):
            out[f"{name}_vs_true"].append(qini_coefficient(s, treated, y, perfect_score=true_b))
            out[f"{name}_obs"].append(qini_coefficient(s, treated, y))
        out["tied_obs"].append(qini_coefficient(np.zeros(len(ids)), treated, y))
    res: dict[str, float] = {"trials": float(n_trials)}
    for k, v in out.items():
        a = np.array(v, dtype=float)
        res[f"{k}_mean"] = float(np.nanmean(a))
        res[f"{k}_sd"] = float(np.nanstd(a, ddof=1))
    return res


def heterogeneity_null(n_trials: int = 200) -> dict[str, float]:
    """Level only: `n_trials` null trials, sandwich and model-based SE on the same fits."""
    from mseval.validity.forecast import heterogeneity_trials

    null = heterogeneity_trials(n_trials, modifier=0.0, seed0=300_000)
    return {"trials": float(n_trials), "null_rejection_rate_sandwich_se": float((null["p_value_sandwich"] < 0.05).mean()),
            "null_rejection_rate_model_based_se": float((null["p_value"] < 0.05).mean()),
            "mc_se_at_0.05": _mc(0.05, n_trials), "null_not_estimable": float((~null["estimable"]).mean())}


PARTS = {"observed": observed, "forecast": forecast, "heterogeneity": heterogeneity, "prognostic": prognostic, "qini": qini,
         **{f"forecast-{k}": (lambda k=k: forecast(kinds=(k,))) for k in ("oracle", "overdispersed", "biased", "effect_biased")}}


def run() -> dict[str, float]:
    """The observed-analysis part (kept for bench/run_all.py)."""
    return observed()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["heterogeneity-null"]:
        t0 = time.time()
        n = int(args[1]) if len(args) > 1 else 200
        print(f"== heterogeneity-null {n}")
        for k, v in heterogeneity_null(n).items():
            print(f"{k:42s} {v:10.4f}")
        print(f"({time.time() - t0:.0f} s)")
        sys.exit(0)
    if args[:1] == ["observed-null"] and len(args) == 3:  # observed-null N SEED0: the default test's level only
        t0 = time.time()
        res = summarize(repeated_trials(int(args[1]), patients_per_arm=100, drug=NULL, seed0=int(args[2]), bootstrap_t=BOOTSTRAP_REPLICATES))
        print(f"== observed-null {args[1]} trials, seeds {args[2]}+ ({time.time() - t0:.0f} s)")
        for k in ("rejection_rate", "robust_rejection_rate", "bootstrap_t_rejection_rate", "bootstrap_t_rejection_rate_symmetric",
                  "bootstrap_t_null_ci_excludes_1", "bootstrap_t_not_estimable"):
            print(f"{k:42s} {res[k]:10.4f}")
        sys.exit(0)
    if args[:1] == ["observed"] and len(args) in (4, 5):  # observed N SEED0 NULL_SEED0 [PER_ARM]: a fresh-seed run
        t0 = time.time()
        per_arm = int(args[4]) if len(args) == 5 else 100
        res = observed(int(args[1]), int(args[2]), int(args[3]), per_arm=per_arm)
        print(f"== observed {args[1]} trials of {per_arm} per arm, seeds {args[2]}+ / {args[3]}+ ({time.time() - t0:.0f} s)")
        for k, v in res.items():
            print(f"{k:42s} {v:10.4f}")
        sys.exit(0)
    for part in args or ["observed", "forecast", "heterogeneity", "prognostic", "qini"]:
        t0 = time.time()
        res = PARTS[part]()
        print(f"== {part} ({time.time() - t0:.0f} s)")
        if isinstance(res, pd.DataFrame):
            with pd.option_context("display.width", 250, "display.max_columns", 30):
                print(res.round(4).to_string(index=False))
        else:
            for k, v in res.items():
                print(f"{k:42s} {v:10.4f}")
