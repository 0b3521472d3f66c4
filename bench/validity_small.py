"""A small slice of bench/validity.py (20 overdispersed forecast trials, 40 heterogeneity trials, 4 null
prognostic trials, 1 simulated-power design), per-trial tables written to <prefix>_*.csv, to compare two
trees (e.g. a fitter change) trial by trial: `PYTHONPATH=<tree> python bench/validity_small.py <prefix>`."""
import sys, time, warnings
warnings.simplefilter("ignore")
from mseval.validity.forecast import forecast_trials, heterogeneity_trials, null_prognostic_trials
out = sys.argv[1]
t0 = time.perf_counter()
forecast_trials(20, kind="overdispersed", patients_per_arm=100, samples=10, seed0=400_000, heldout_per_arm=100).to_csv(f"{out}_fc.csv", index=False)
t1 = time.perf_counter()
heterogeneity_trials(40, modifier=0.3, seed0=310_000).to_csv(f"{out}_het.csv", index=False)
t2 = time.perf_counter()
null_prognostic_trials(4, seed0=600_000, n_boot=30).to_csv(f"{out}_prog.csv", index=False)
t3 = time.perf_counter()
null_prognostic_trials(1, seed0=610_000, n_boot=0, power_sims=60).to_csv(f"{out}_pow.csv", index=False)
t4 = time.perf_counter()
print(f"{out}: forecast {t1-t0:.1f}s het {t2-t1:.1f}s prog {t3-t2:.1f}s power {t4-t3:.1f}s")
