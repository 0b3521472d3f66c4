"""Validity of the trial statistics on simulated trials with known truth (`make bench` runs it).

500 two-arm trials (placebo vs dimethyl fumarate, RR 0.15 at age 37, 100 patients per arm, the
simulator's count model with its age effect modifier): coverage of the superpopulation rate
ratio by the NB2 95% CI (goal 93.5-96.5%); 500 trials with a null arm: rejection rate at 0.05
(goal 3.5-6.5%); the same with the oracle prognostic score as a covariate.
"""

from __future__ import annotations

from mseval.stats.validity import NULL, repeated_trials, summarize


def run(n_trials: int = 500) -> dict[str, float]:
    effect = summarize(repeated_trials(n_trials, patients_per_arm=100, seed0=100_000))
    null = summarize(repeated_trials(n_trials, patients_per_arm=100, drug=NULL, seed0=200_000))
    return {
        "trials": float(n_trials),
        "coverage_dmf": effect["coverage"],
        "coverage_dmf_prognostic_adjusted": effect["adjusted_coverage"],
        "se_ratio_adjusted_vs_unadjusted": effect["se_ratio_adjusted_vs_unadjusted"],
        "null_rejection_rate": null["rejection_rate"],
        "null_rejection_rate_prognostic_adjusted": null["adjusted_rejection_rate"],
        "null_coverage": null["coverage"],
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:42s} {v:10.4f}")
