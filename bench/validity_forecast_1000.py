"""The forecast-derived intervals of the validity bench (`bench/validity.py forecast`: forecast RR with the stacked
NB2 sandwich and with the randomization interval on the patient totals (rule R12), counterfactual ratio by the delta method, the counterfactual calibrated on a held-out trial) on 1,000
fresh two-arm trials per forecaster kind, to separate a real under-coverage from the Monte Carlo noise of 300 trials.

    PYTHONPATH=. nice .venv/bin/python bench/validity_forecast_1000.py 1000 oracle|overdispersed|biased|effect_biased 450000
"""
import sys, time
import numpy as np
from mseval.validity.forecast import forecast_trials
n, kind, seed0 = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t0 = time.time()
d = forecast_trials(n, kind=kind, patients_per_arm=100, samples=10, seed0=seed0, heldout_per_arm=100)
se = np.sqrt(0.95 * 0.05 / n)
lo, hi = (d["forecast_perm_ci_low"] > d["law_target"]).mean(), (d["forecast_perm_ci_high"] < d["law_target"]).mean()
w = np.median(np.log(d["forecast_perm_ci_high"] / d["forecast_perm_ci_low"]) / np.log(d["forecast_ci_high"] / d["forecast_ci_low"]))
print(kind, n, "trials", round(time.time() - t0), "s; binomial SE", round(se, 4))
for c in ("forecast_covers_law", "forecast_perm_covers_law", "cf_covers_law", "cf_z_covers_law", "cf_covers_truth", "cal_covers_truth", "cal_z_covers_truth"):
    print(f"  {c:24s} {d[c].mean():.4f}")
print(f"  median df: counterfactual {d['cf_df'].median():.1f}, calibrated {d['cal_df'].median():.1f}")
print(f"  permutation misses: low bound above {lo:.4f}, high bound below {hi:.4f}; median width ratio to the sandwich {w:.3f}")
