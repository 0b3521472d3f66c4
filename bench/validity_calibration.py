"""Validity of the calibration metrics: oracle vs deliberately miscalibrated forecasters.

Counts tables from the simulator's truth model (no images): 6,000 patients (1,000 per arm), each
observed count ~ Poisson(expected count) under the allocated arm; 20 forecast samples per patient
from each forecaster's law (`mseval.simulate.forecasters`): oracle Poisson(mu), overdispersed
Poisson(mu G) with G ~ Gamma(1, 1), biased Poisson(2 mu). Run: `.venv/bin/python bench/validity_calibration.py`.
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
    print("forecaster     PIT chi2 p  tail share (p)      PIT var  cov50/80/95 (randomized)   cov50/80/95 (closed; implied)          intercept (95% CI)       slope (95% CI)")
    for kind in ("oracle", "overdispersed", "biased"):
        lam = {"oracle": np.repeat(mu[:, None], samples, 1), "overdispersed": mu[:, None] * rng.gamma(1.0, 1.0, (mu.size, samples)),
               "biased": np.repeat(2 * mu[:, None], samples, 1)}[kind]
        ens = rng.poisson(lam)
        cc = count_calibration(ens, y, seed=1)
        r = binary_calibration((ens >= 1).mean(1), y >= 1, samples=samples, n_boot=0).recalibration
        t = cc.pit_test
        cov = cc.coverage
        rnd = "/".join(f"{v:.3f}" for v in cov["randomized"])
        closed = "/".join(f"{c:.3f} ({i:.3f})" for c, i in zip(cov["coverage"], cov["implied"]))
        print(f"{kind:14s} {t.chi2_p:10.3g}  {t.tail_share:.3f} ({t.tail_p:.2g})  {t.variance:.4f}  {rnd:26s} {closed:38s} "
              f"{r.intercept:+.3f} ({r.intercept_ci[0]:+.3f}, {r.intercept_ci[1]:+.3f})  {r.slope:.3f} ({r.slope_ci[0]:.3f}, {r.slope_ci[1]:.3f})")


if __name__ == "__main__":
    main()
