"""A per-arm summary of a simulated cohort: what was drawn beside what was true."""

from __future__ import annotations

import pandas as pd

from mseval.io.cohort import Cohort


def trial_summary(cohort: Cohort) -> pd.DataFrame:
    """One row per arm (arms-table order): patients, mean age, % female, mean baseline Gd+ count,
    mean true expected NET2 count over follow-up, mean observed NET2 count and % with >= 1 NET2
    lesion (both over the patients with an observed follow-up), and the true rate ratio vs the reference (ratio of mean true annual rates over all
    patients, i.e. the population-average counterfactual effect)."""
    m = cohort.manifest
    rows = []
    truth = cohort.truth
    ref = cohort.reference_arm
    for arm, label in zip(cohort.arms["arm"], cohort.arms["label"]):
        sub = m[m["arm"] == arm]
        row = {
            "arm": arm,
            "label": label,
            "patients": len(sub),
            "age_mean": sub["age"].mean(),
            "female_pct": 100.0 * (sub["sex"] == "F").mean() if len(sub) else float("nan"),
            "gd_mean": sub["gd_count"].mean(),
        }
        if truth is not None:
            alloc = truth[(truth["arm"] == arm) & truth["allocated"].astype(bool)]
            everyone = truth[truth["arm"] == arm]
            ref_rates = truth[truth["arm"] == ref]["annual_rate"].mean()
            observed = alloc["realized_count"].astype(float).dropna()  # patients without an observed follow-up left out
            row.update(
                {
                    "true_expected_mean": alloc["expected_count"].mean(),
                    "observed_mean": observed.mean(),
                    "active_pct": 100.0 * (observed > 0).mean() if len(observed) else float("nan"),
                    "true_rate_ratio": everyone["annual_rate"].mean() / ref_rates,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)
