"""Validity of the calibration metrics: oracle vs deliberately miscalibrated forecasters.

Counts tables from the simulator's truth model (no images): 6,000 patients (1,000 per arm), each
observed count ~ Poisson(expected count) under the allocated arm; 20 forecast samples per patient
from each forecaster's law (`mseval.simulate.forecasters`): oracle Poisson(mu), overdispersed
Poisson(mu G) with G ~ Gamma(1, 1), biased Poisson(2 mu). Run: `.venv/bin/python bench/validity_calibration.py`.

Also: forecast-implied vs observed mass of the same (leave-one-out) intervals, with the Monte Carlo
SE of their difference; and the debiased calibration error of P(active) over 100 data sets of 200
patients (12-member grid): how often its CI contains 0 when the forecasts are calibrated, and how
often it excludes 0 when they are off by +0.1 or +0.2.
"""

from __future__ import annotations

import numpy as np

from mseval.metrics.calibration import binary_calibration, count_calibration
from mseval.simulate.model import TrialConfig, draw_patients, truth_frame


def main(seed: int = 5, per_arm: int = 1000, samples: int = 20) -> None:
    rng = np.random.default_rng(seed)
    cfg = TrialConfig(patients_per_arm=per_arm, seed=seed)
    truth = truth_frame(draw_patients(cfg, rng), cfg)
    al = truth[truth["allocated"]]
    mu = al["expected_count"].to_numpy()
    y = rng.poisson(mu)
    print(f"{len(mu)} patients, {samples} samples, seed {seed}")
    print("forecaster     PIT chi2 p  tail share (p)      PIT var  cov50/80/95 (randomized)   cov50/80/95 (closed LOO; implied)     intercept (95% CI)       slope (95% CI)")
    for kind in ("oracle", "overdispersed", "biased"):
        lam = {"oracle": np.repeat(mu[:, None], samples, 1), "overdispersed": mu[:, None] * rng.gamma(1.0, 1.0, (mu.size, samples)),
               "biased": np.repeat(2 * mu[:, None], samples, 1)}[kind]
        ens = rng.poisson(lam)
        cc = count_calibration(ens, y, seed=1)
        r = binary_calibration((ens >= 1).mean(1), y >= 1, samples=samples, n_boot=0).recalibration
        t = cc.pit_test
        cov = cc.coverage
        rnd = "/".join(f"{v:.3f}" for v in cov["randomized"])
        closed = "/".join(f"{c:.3f} ({i:.3f})" for c, i in zip(cov["coverage_loo"], cov["implied"]))
        print(f"{kind:14s} {t.chi2_p:10.3g}  {t.tail_share:.3f} ({t.tail_p:.2g})  {t.variance:.4f}  {rnd:26s} {closed:38s} "
              f"{r.intercept:+.3f} ({r.intercept_ci[0]:+.3f}, {r.intercept_ci[1]:+.3f})  {r.slope:.3f} ({r.slope_ci[0]:.3f}, {r.slope_ci[1]:.3f})")


def implied_vs_observed(seed: int = 5, per_arm: int = 1000, samples: int = 20) -> None:
    """Oracle forecaster (exchangeable with the observation): implied vs observed, in Monte Carlo SEs."""
    rng = np.random.default_rng(seed + 100)
    cfg = TrialConfig(patients_per_arm=per_arm, seed=seed)
    truth = truth_frame(draw_patients(cfg, rng), cfg)
    mu = truth[truth["allocated"]]["expected_count"].to_numpy()
    z = rng.poisson(mu[:, None] * rng.gamma(1.0, 1.0, (mu.size, samples + 1)))  # NB members and observation, exchangeable
    cov = count_calibration(z[:, :samples], z[:, samples], seed=1).coverage
    print(f"calibrated NB ensemble ({mu.size} patients, {samples} members): level, observed (LOO), implied, (obs - implied) / MC SE, old plug-in implied")
    for r in cov.itertuples():
        print(f"  {r.level:.2f}  {r.coverage_loo:.4f}  {r.implied:.4f}  {(r.coverage_loo - r.implied) / r.implied_diff_se:+.2f}  {r.implied_plugin:.4f}")


def ece_coverage(data_sets: int = 100, n: int = 200, samples: int = 12, seed: int = 11, n_boot: int = 300) -> None:
    rng = np.random.default_rng(seed)
    print(f"debiased calibration error of P(active), {data_sets} data sets x {n} patients, p on a {samples}-member grid, {n_boot} bootstrap resamples")
    for shift in (0.0, 0.1, 0.2):
        contains, ece, ece0, d = 0, [], [], []
        for i in range(data_sets):
            p = rng.binomial(samples, rng.beta(2, 2, n)) / samples
            y = rng.random(n) < np.clip(p + shift, 0, 1)
            b = binary_calibration(p, y, samples=samples, n_boot=n_boot, seed=i)
            contains += b.ce_sq_debiased_ci[0] <= 0 <= b.ce_sq_debiased_ci[1]
            ece.append(b.ece)
            ece0.append(b.ece_expected_if_calibrated)
            d.append(b.ce_sq_debiased)
        print(f"  shift {shift:+.1f}: CI contains 0 in {contains}/{data_sets}; mean ECE {np.mean(ece):.4f} (expected if calibrated {np.mean(ece0):.4f}); "
              f"mean debiased squared error {np.mean(d):+.5f} (MC SE {np.std(d) / np.sqrt(data_sets):.5f})")


if __name__ == "__main__":
    main()
    implied_vs_observed()
    ece_coverage()
