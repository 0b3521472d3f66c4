"""`mseval effects` statistics at paper scale, and 2,000 bootstrap replicates of the rate ratios.

A paper-scale counts table (2,131 patients x 6 arms x 20 samples = 255,720 rows) from the
simulator's count model (no images, `mseval.simulate.counts_only`); the observed NB2 model and its reported interval
(the studentized bootstrap, 999 refits: timed apart too), the
forecast model (20 per-sample fits, patient-level sandwich), counterfactual effects, responder strata, Qini, prognostic
adjustment and analytic power (simulated power left out: it is a Monte Carlo of its own, sized
by --power-sims). Goals (2 cores): evaluate + effects < 30 s; 2,000 bootstrap replicates < 60 s.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import bootstrap_rate_ratios, fit_count_model, fit_lesion_free
from mseval.stats.counterfactual import counterfactual_effects
from mseval.stats.ensemble_counts import check_counts, forecast_means
from mseval.stats.heterogeneity import heterogeneity
from mseval.stats.observed_ci import observed_intervals
from mseval.stats.power import power_table
from mseval.stats.prognostic import prognostic_adjustment
from mseval.stats.qini import qini_table
from mseval.stats.synthetic import fit_forecast_rate_ratios


def run() -> dict[str, float]:
    warnings.simplefilter("ignore")
    cfg = TrialConfig(patients_per_arm=355, seed=7)  # 2,130 patients (the paper has 2,131)
    tr = simulate_count_trial(cfg, samples=20)
    arms = [a.arm for a in cfg.arms]
    t0 = time.perf_counter()
    check_counts(tr.counts, list(tr.table["patient_id"]), arms)
    observed = fit_count_model(tr.table, "net2 ~ arm + gd_count", reference="placebo")
    t1 = time.perf_counter()
    observed_intervals(tr.table, observed, method="bootstrap_t")  # the default below 1,000 per arm (999 refits)
    interval_s = time.perf_counter() - t1
    fit_lesion_free(tr.table, reference="placebo")
    means = forecast_means(tr.counts)
    fit_forecast_rate_ratios(tr.table, tr.counts, "net2 ~ arm + gd_count", reference="placebo")
    cf = counterfactual_effects(means, "placebo")
    heterogeneity(tr.table, means, "placebo", observed.table, truth=tr.truth)
    p = cf.patients
    qini_table(tr.table, {a: p[p["arm"] == a].set_index("patient_id").eval("expected_reference - expected") for a in arms[1:]}, "placebo", truth=tr.truth)
    prognostic_adjustment(tr.table, means, "placebo", "net2 ~ arm + gd_count")
    power_table(tr.table, means, "placebo", sims=0)
    effects_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    boot = bootstrap_rate_ratios(tr.table, "net2 ~ arm", reference="placebo", n_resamples=2000, workers=2)
    boot_s = time.perf_counter() - t0
    return {"rows": float(len(tr.counts)), "effects_s": effects_s, "observed_bootstrap_t_999_s": interval_s,
            "observed_bootstrap_t_share_of_effects": interval_s / effects_s, "bootstrap_2000_s_2_workers": boot_s,
            "bootstrap_failed_fits": float(boot.failed)}


def compare_bootstrap(baseline_rev: str, n_resamples: int = 2000, workers: int = 2) -> dict[str, float]:
    """Paper-scale bootstrap (2,130 patients, 6 arms) with this tree's fitter and with the fitter of git
    revision `baseline_rev`, timed in the same run (the ratio is what to read on a shared machine)."""
    warnings.simplefilter("ignore")
    from baseline_module import module_at

    with module_at(baseline_rev, "mseval/stats/count_model.py", "_baseline_count_model") as old:
        tr = simulate_count_trial(TrialConfig(patients_per_arm=355, seed=7), samples=2)
        out = {}
        for name, fn in (("new", bootstrap_rate_ratios), ("baseline", old.bootstrap_rate_ratios)):
            t0 = time.perf_counter()
            b = fn(tr.table, "net2 ~ arm", reference="placebo", n_resamples=n_resamples, workers=workers)
            out[f"{name}_s"] = time.perf_counter() - t0
            out[f"{name}_failed"] = float(b.failed)
        out["ratio_new_over_baseline"] = out["new_s"] / out["baseline_s"]
        return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline-rev", help="also time the bootstrap of this git revision's fitter, in the same run")
    ap.add_argument("--bootstrap-only", action="store_true")
    a = ap.parse_args()
    if a.baseline_rev:
        if str(Path(__file__).resolve().parent) not in sys.path:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
        for k, v in compare_bootstrap(a.baseline_rev).items():
            print(f"{k:36s} {v:12.3f}")
    if not a.bootstrap_only:
        for k, v in run().items():
            print(f"{k:36s} {v:12.2f}")
