"""The SAP's permutation CI (inverted permutation score test, `mseval.stats.small_sample.primary_tests(method="permutation")`)
of the arm-only NB2 at 100 patients per arm, on the observed validity bench's trials (seeds 100_000 + k, placebo vs
DMF, the multi-visit default world): does the permutation CI cover where the Wald CIs do not?

    PYTHONPATH=. nice .venv/bin/python bench/validity_observed_permutation.py 500 common|by_arm
"""
import sys, time, warnings
from dataclasses import replace
import numpy as np, pandas as pd
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.validity.observed import PLACEBO, DRUG
from mseval.simulate.counts_only import population_rate_ratios
from mseval.stats.small_sample import primary_tests
n, disp = int(sys.argv[1]), sys.argv[2]
base = TrialConfig(patients_per_arm=100, arms=(PLACEBO, DRUG))
target = population_rate_ratios(base)[DRUG.arm]
rows = []
t0 = time.time()
for k in range(n):
    tr = simulate_count_trial(replace(base, seed=100_000 + k), samples=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = primary_tests(tr.table, "net2 ~ arm", reference="placebo", method="permutation", seed=k, dispersion=disp)
    t = r.table if hasattr(r, "table") else r.to_frame()
    row = t[t["arm"] == DRUG.arm].iloc[0]
    rows.append({"k": k, "lo": row["ci_low"], "hi": row["ci_high"], "p": row["p_value"]})
    if k % 20 == 19:
        d = pd.DataFrame(rows); print(k + 1, round(((d.lo <= target) & (target <= d.hi)).mean(), 3), round(time.time() - t0), flush=True)
d = pd.DataFrame(rows)
print("coverage", ((d.lo <= target) & (target <= d.hi)).mean(), "miss low", (d.lo > target).mean(), "miss high", (d.hi < target).mean())
