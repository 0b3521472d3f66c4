"""Repeated simulated trials with known truth: CI coverage, type-I error, prognostic adjustment.

Used by the fast checks in tests/validity/test_observed_validity.py and the full runs in bench/validity.py.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from mseval.simulate.arms import ArmSpec
from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.ensemble_counts import forecast_means
from mseval.stats.observed_ci import observed_intervals
from mseval.stats.prognostic import prognostic_score

DRUG = ArmSpec("dmf", "Dimethyl fumarate", "moderate", 0.15)
NULL = ArmSpec("null", "Null arm", "none", 1.0)
PLACEBO = ArmSpec("placebo", "Placebo", "none", 1.0, reference=True)


def repeated_trials(n_trials: int, *, patients_per_arm: int = 100, drug: ArmSpec = DRUG, seed0: int = 0, samples: int = 10,
                    by_arm: bool = False, bootstrap_t: int = 0) -> pd.DataFrame:
    """One row per simulated two-arm trial: the arm-only NB2 rate ratio and CI, whether it covers the
    superpopulation rate ratio, p-value, and the same with the oracle prognostic score (`adj_`) and
    with the patient-level sandwich SE (`robust_`), and, with `by_arm`, with one NB2 dispersion per arm
    (`byarm_`: the treated arm's own overdispersion, observed-information SEs as glmmTMB's). With
    `bootstrap_t` = B > 0, the interval `mseval effects` reports by default below 1,000 per arm
    (`boot_`: `observed_ci.observed_intervals(method="bootstrap_t")`, B resamples, seed = the trial's)."""
    base = TrialConfig(patients_per_arm=patients_per_arm, arms=(PLACEBO, drug))
    target = population_rate_ratios(base)[drug.arm]
    rows = []
    for k in range(n_trials):
        tr = simulate_count_trial(replace(base, seed=seed0 + k), samples=samples, forecast_seed=seed0 + k)
        d = tr.table.merge(prognostic_score(forecast_means(tr.counts), "placebo"), left_on="patient_id", right_index=True)
        row = {"trial": k, "target_rate_ratio": target}
        fits = [(False, "expected", "common"), (True, "expected", "common"), (False, "robust", "common")]
        for adjusted, cov, dispersion in fits + ([(False, "observed", "by_arm")] if by_arm else []):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_count_model(d, "net2 ~ arm + prognostic_score" if adjusted else "net2 ~ arm", reference="placebo",
                                      adjusted_means=False, cov=cov, dispersion=dispersion)  # type: ignore[arg-type]
            r = fit.rate_ratio(drug.arm)
            tag = "adj_" if adjusted else ("robust_" if cov == "robust" else "byarm_" if dispersion == "by_arm" else "")
            row.update({f"{tag}rate_ratio": r.rate_ratio, f"{tag}ci_low": r.ci_low, f"{tag}ci_high": r.ci_high, f"{tag}p_value": r.p_value,
                        f"{tag}se": r.se, f"{tag}covers": bool(r.ci_low <= target <= r.ci_high), f"{tag}converged": fit.converged,
                        f"{tag}boundary": fit.boundary, f"{tag}estimable": bool(r.estimable)})
            if bootstrap_t > 0 and not adjusted and cov == "expected":
                b = observed_intervals(d, fit, method="bootstrap_t", seed=seed0 + k, n_bootstrap=bootstrap_t).set_index("arm").loc[drug.arm]
                row.update({"boot_ci_low": b.ci_low, "boot_ci_high": b.ci_high, "boot_p_value": b.p_value, "boot_p_value_symmetric": b.p_value_symmetric,
                            "boot_covers": bool(b.ci_low <= target <= b.ci_high), "boot_estimable": bool(b.estimable)})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(trials: pd.DataFrame) -> dict[str, float]:
    n = len(trials)
    mc = lambda p: float(np.sqrt(p * (1 - p) / n))  # noqa: E731
    cov, rej = trials["covers"].mean(), (trials["p_value"] < 0.05).mean()
    acov, arej = trials["adj_covers"].mean(), (trials["adj_p_value"] < 0.05).mean()
    return {"trials": n, "coverage": cov, "coverage_mc_se": mc(0.95), "rejection_rate": rej,
            "adjusted_coverage": acov, "adjusted_rejection_rate": arej,
            "se_ratio_adjusted_vs_unadjusted": float((trials["adj_se"] / trials["se"]).mean()),
            **({"robust_coverage": trials["robust_covers"].mean(), "robust_rejection_rate": (trials["robust_p_value"] < 0.05).mean()}
               if "robust_covers" in trials else {}),
            **({"by_arm_coverage": trials["byarm_covers"].mean(), "by_arm_rejection_rate": (trials["byarm_p_value"] < 0.05).mean()}
               if "byarm_covers" in trials else {}),
            **({"bootstrap_t_coverage": trials["boot_covers"].mean(), "bootstrap_t_rejection_rate": (trials["boot_p_value"] < 0.05).mean(),
                "bootstrap_t_rejection_rate_symmetric": (trials["boot_p_value_symmetric"] < 0.05).mean(),
                "bootstrap_t_null_ci_excludes_1": ((trials["boot_ci_low"] > 1.0) | (trials["boot_ci_high"] < 1.0)).mean(),
                "bootstrap_t_miss_low": (trials["boot_ci_low"] > trials["target_rate_ratio"]).mean(),
                "bootstrap_t_miss_high": (trials["boot_ci_high"] < trials["target_rate_ratio"]).mean(),
                "bootstrap_t_not_estimable": float((~trials["boot_estimable"].astype(bool)).mean())}
               if "boot_covers" in trials else {})}
