"""Monte Carlo checks of the missing-data analyses (issue 23 item 3), count-level world (`simulate_count_trial`).

  coverage: world defaults (6 arms, 20 patients per arm, visits w24/w48/w96) with MAR dropout
            (dropout_per_year 0.09, dropout_mar 1.0: the hazard x e after an interval with NET2 activity;
            about 20% of patients leave before week 96): coverage of the population rate ratio by the
            exposure-based NB2, beside the same trials without dropout and the completers only.
  mnar:     placebo vs a drug (RR 0.5), 100 patients per arm, dropout 0.15/year, 1 more on the reference
            arm (dropout_arm_difference 1): MAR (dropout_mnar 0) vs MNAR (dropout_mnar +1.5: the most active
            patients leave; -1.5: the least active leave): delta-adjusted MI on every arm's missing follow-up.

PYTHONPATH=. python bench/validity_missing.py coverage --trials 500 --out bench/out_missing [--patients-per-arm 50]
PYTHONPATH=. python bench/validity_missing.py mnar --trials 60 --imputations 5 --out bench/out_missing
"""
import argparse, json, time, warnings
from dataclasses import replace
from pathlib import Path

warnings.simplefilter("ignore")
import numpy as np, pandas as pd

from mseval.simulate.arms import ArmSpec
from mseval.simulate.model import TrialConfig
from mseval.validity.missing import coverage_summary, dropout_trials, mean_curve_delta, mnar_trials
from mseval.validity.observed import PLACEBO

p = argparse.ArgumentParser()
p.add_argument("what", choices=["coverage", "mnar"])
p.add_argument("--trials", type=int, default=500)
p.add_argument("--seed0", type=int, default=2_300_000)
p.add_argument("--out", default="bench/out_missing")
p.add_argument("--imputations", type=int, default=5)
p.add_argument("--patients-per-arm", type=int, default=20, help="coverage: patients per arm (world default 20)")
a = p.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
if a.what == "coverage":
    base = TrialConfig(patients_per_arm=a.patients_per_arm, dropout_per_year=0.09, dropout_mar=1.0)
    tr = dropout_trials(a.trials, base, seed0=a.seed0)
    tr.to_csv(out / "coverage_trials.csv", index=False)
    s = coverage_summary(tr)
    s.to_csv(out / "coverage_summary.csv", index=False)
    print(s.round(4).to_string(index=False))
else:
    drug = ArmSpec("ifn", "Drug (RR 0.5)", "moderate", 0.5)
    rows = []
    for name, mnar, dpy in (("MAR", 0.0, 0.15), ("MNAR +1.5 (active leave)", 1.5, 0.15), ("MNAR -1.5 (inactive leave)", -1.5, 0.05)):
        base = TrialConfig(patients_per_arm=100, arms=(PLACEBO, drug), dropout_per_year=dpy, dropout_mnar=mnar, dropout_arm_difference=1.0)
        tr = mnar_trials(a.trials, base, imputations=a.imputations, seed0=a.seed0)
        tr.to_csv(out / f"mnar_{mnar:g}.csv", index=False)
        d, miss = tr["delta_star"], tr["mar_log_rr"] - tr["full_log_rr"]
        dm, dlo, dhi = mean_curve_delta(tr, seed=a.seed0)
        rows.append({"scenario": name, "trials": len(tr), "mar_minus_full_log_rr": float(miss.mean()), "mar_minus_full_se": float(miss.std() / np.sqrt(len(tr))),
                     "full_minus_true_log_rr": float((tr["full_log_rr"] - tr["true_log_rr"]).mean()),
                     "mi0_minus_mar_mean": float((tr["mi_0"] - tr["mar_log_rr"]).mean()), "mi0_minus_mar_sd": float((tr["mi_0"] - tr["mar_log_rr"]).std()),
                     "delta_mean_curve": dm, "delta_mean_curve_ci": [round(dlo, 3), round(dhi, 3)],
                     "monotone_share": float(tr["monotone"].mean()), "delta_star_found": int(d.notna().sum()),
                     "delta_star_mean": float(d.mean()), "delta_star_se": float(d.std() / np.sqrt(d.notna().sum())), "delta_star_median": float(d.median()),
                     "delta_star_positive_share": float((d > 0).mean()) if d.notna().any() else np.nan,
                     "mean_mi_minus_full_at_delta": {c[3:]: round(float((tr[c] - tr["full_log_rr"]).mean()), 4) for c in tr.columns if c.startswith("mi_")}})
    s = pd.DataFrame(rows)
    s.to_csv(out / "mnar_summary.csv", index=False)
    print(s.to_string(index=False))
print(f"{a.what}: {a.trials} trials in {time.perf_counter() - t0:.0f} s")
