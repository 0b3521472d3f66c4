"""Tuning of the flexible count-feature baseline's formula (`mseval.stats.baseline_nb2`) in the world with every
image knob at 0, where the observable oracle is the exact Bayes law given the lesion counts: the gap of a
baseline to it is the baseline's misspecification (plus estimation noise). TUNING seeds only (never reported as
a result): training trials seed0 + k (6 x `--train-per-arm` patients), test trials seed0 + 50 + k (6 x
`--test-per-arm`), k < reps.

    PYTHONPATH=. nice .venv/bin/python bench/flexible_baseline_tuning.py --seed0 3700 --reps 3

prints, per candidate, the pooled relative CRPS gap to the oracle (all windows) with its paired SE, and per window.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from mseval.metrics.calibration import crps_pmf
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.simulate.observable_oracle import ModelParams, observable_pmf
from mseval.stats.baseline_nb2 import FLEXIBLE_DISPERSION, SPLINE_FORMULA, fit_flexible_baseline

OFF = dict(prelesion_fraction=0.0, dawm_strength=0.0)
_S = "cr(np.log1p(gd_count), df={d}, constraints='center') + cr(np.log(t2_count), df={d}, constraints='center')"
_X = " + np.log1p(gd_count):np.log(t2_count) + np.log1p(gd_count):age + np.log(t2_count):age + np.log(t2_volume_mm3)"
CANDIDATES = {
    "current": (SPLINE_FORMULA, FLEXIBLE_DISPERSION),  # the default before rule R14 ("tensor_novol" since)
    "age2": ("net2 ~ arm * (age + I((age - 37) ** 2)) + " + _S.format(d=3) + _X, FLEXIBLE_DISPERSION),
    "age2_df4": ("net2 ~ arm * (age + I((age - 37) ** 2)) + " + _S.format(d=4) + _X, FLEXIBLE_DISPERSION),
    "age2_disp_age": ("net2 ~ arm * (age + I((age - 37) ** 2)) + " + _S.format(d=3) + _X, FLEXIBLE_DISPERSION + " + arm:age"),
    "tensor": ("net2 ~ arm * age + te(cr(np.log1p(gd_count), df=3), cr(np.log(t2_count), df=3), constraints='center')"
               " + np.log1p(gd_count):age + np.log(t2_count):age + np.log(t2_volume_mm3)", FLEXIBLE_DISPERSION),
    "tensor_novol": ("net2 ~ arm * age + te(cr(np.log1p(gd_count), df=3), cr(np.log(t2_count), df=3), constraints='center')"
                     " + np.log1p(gd_count):age + np.log(t2_count):age", FLEXIBLE_DISPERSION),
    "novol": (SPLINE_FORMULA.replace(" + np.log(t2_volume_mm3)", ""), FLEXIBLE_DISPERSION),
    "lowcells": (SPLINE_FORMULA + " + I(gd_count == 0):I(t2_count <= 2) + I(gd_count == 1):I(t2_count <= 2)", FLEXIBLE_DISPERSION),
}


def main() -> None:
    from bench.world_realism import window  # the benches' window table (cumulative NET2 to each visit)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed0", type=int, default=3700)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-per-arm", type=int, default=1000)
    ap.add_argument("--test-per-arm", type=int, default=400)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    a = ap.parse_args()
    cfg = replace(TrialConfig(), **OFF)
    params = ModelParams.from_config(cfg)
    rows = []
    t0 = time.perf_counter()
    for k in range(a.reps):
        train = simulate_count_trial(replace(cfg, patients_per_arm=a.train_per_arm, seed=a.seed0 + k), samples=1)
        test = simulate_count_trial(replace(cfg, patients_per_arm=a.test_per_arm, seed=a.seed0 + 50 + k), samples=1)
        for visit, label in enumerate(cfg.visit_labels, start=1):
            tr, te = window(train, visit), window(test, visit)
            y = te["net2"].to_numpy()
            co = crps_pmf(observable_pmf(te, params), y)
            for name in a.candidates.split(","):
                f, disp = CANDIDATES[name]
                fit = fit_flexible_baseline(tr, formula=f, dispersion=disp, reference="placebo")
                cf = crps_pmf(fit.pmf(te), y)
                rows.append({"cand": name, "rep": k, "visit": label, "n": len(y), "oracle": co.mean(), "cand_crps": cf.mean(),
                             "diff": (cf - co).mean(), "diff_sd": (cf - co).std(ddof=1), "converged": bool(fit.fit.converged)})
        print(f"rep {k} done, {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    print("| candidate | gap to the Bayes law (pooled) | paired SE | W24 | W48 | W96 | converged |\n|---|---|---|---|---|---|---|")
    for name, g in df.groupby("cand", sort=False):
        gap = g["diff"].sum() / g["oracle"].sum()
        se = np.sqrt((g["diff_sd"] ** 2 / g["n"]).sum()) / len(g) / g["oracle"].mean()
        per = {v: float(h["diff"].sum() / h["oracle"].sum()) for v, h in g.groupby("visit", sort=False)}
        print(f"| {name} | {100 * gap:.2f}% | {100 * se:.2f} | " + " | ".join(f"{100 * x:.2f}%" for x in per.values()) + f" | {g['converged'].all()} |")


if __name__ == "__main__":
    main()
