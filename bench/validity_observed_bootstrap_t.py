"""A lead for issue 23: the studentized bootstrap (patients resampled within arms, B draws) of the log ratio of
rates (sum of counts / sum of follow-up years per arm; ratio-estimator sandwich SE) against the same Wald CI
and the percentile bootstrap, on two-arm trials of the multi-visit default world (placebo vs DMF, 100 per arm).

    PYTHONPATH=. nice .venv/bin/python bench/validity_observed_bootstrap_t.py TRIALS B SEED0
"""
import sys, time
from dataclasses import replace
import numpy as np, pandas as pd
from mseval.simulate.counts_only import simulate_count_trial, population_rate_ratios
from mseval.simulate.model import TrialConfig
from mseval.validity.observed import PLACEBO, DRUG
n, B, seed0 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = TrialConfig(patients_per_arm=100, arms=(PLACEBO, DRUG))
target = np.log(population_rate_ratios(base)[DRUG.arm])
def est(y, t):  # (..., n) -> log rate, its ratio-estimator variance
    r = y.sum(-1) / t.sum(-1)
    v = ((y - r[..., None] * t) ** 2).sum(-1) / (y.sum(-1) ** 2)
    return np.log(r), v
rows = []
for k in range(n):
    tab = simulate_count_trial(replace(base, seed=seed0 + k), samples=1).table
    rng = np.random.default_rng(k)
    out = {}
    parts = {}
    for arm in ("placebo", DRUG.arm):
        g = tab[tab.arm == arm]; y, t = g.net2.to_numpy(float), g.followup_years.to_numpy(float)
        idx = rng.integers(0, len(y), (B, len(y)))
        parts[arm] = (est(y, t), est(y[idx], t[idx]))
    (lt, vt), (ltb, vtb) = parts[DRUG.arm]; (lp, vp), (lpb, vpb) = parts["placebo"]
    th, se = lt - lp, np.sqrt(vt + vp)
    thb, seb = ltb - lpb, np.sqrt(vtb + vpb)
    T = (thb - th) / seb
    qlo, qhi = np.quantile(T, [0.025, 0.975])
    rows.append({"wald": abs(th - target) <= 1.96 * se, "boot_t": th - qhi * se <= target <= th - qlo * se,
                 "pct": np.quantile(thb, 0.025) <= target <= np.quantile(thb, 0.975), "se": se, "th": th})
d = pd.DataFrame(rows)
print(n, "trials; target", target, "coverage", d[["wald", "boot_t", "pct"]].mean().round(3).to_dict(), "sd th", d.th.std().round(3), "mean se", d.se.mean().round(3))
