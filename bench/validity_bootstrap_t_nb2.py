"""Coverage of `small_sample.primary_tests(method="bootstrap_t")` (studentized bootstrap of the NB2 arm coefficient,
patients resampled within arms, each resample refitted) on fresh two-arm trials of the multi-visit default world
(placebo vs DMF, 100 per arm): the arm-only NB2, the target `population_rate_ratios`.

    PYTHONPATH=. nice .venv/bin/python bench/validity_bootstrap_t_nb2.py TRIALS B SEED0
"""
import sys, time, warnings
from dataclasses import replace
import numpy as np, pandas as pd
from mseval.simulate.counts_only import simulate_count_trial, population_rate_ratios
from mseval.simulate.model import TrialConfig
from mseval.validity.observed import PLACEBO, DRUG
from mseval.stats.small_sample import primary_tests
n, B, seed0 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = TrialConfig(patients_per_arm=100, arms=(PLACEBO, DRUG))
target = population_rate_ratios(base)[DRUG.arm]
rows, t0 = [], time.time()
for k in range(n):
    tab = simulate_count_trial(replace(base, seed=seed0 + k), samples=1).table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = primary_tests(tab, "net2 ~ arm", reference="placebo", method="bootstrap_t", seed=k, n_bootstrap=B).table
    row = r[r.arm == DRUG.arm].iloc[0]
    rows.append({"lo": row.ci_low, "hi": row.ci_high, "p": row.p_value, "est": row.estimable})
d = pd.DataFrame(rows)
print(n, "trials B", B, round(time.time() - t0), "s; coverage", round(((d.lo <= target) & (target <= d.hi)).mean(), 4),
      "miss low", round((d.lo > target).mean(), 4), "miss high", round((d.hi < target).mean(), 4), "estimable", d.est.mean())
