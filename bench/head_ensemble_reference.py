"""Issue 13: what a PERFECT renderer of the count head would score with an S-member ensemble.

The goals compare a model scored from S sampled masks per patient with references scored from
their exact laws. P(active) from S samples is k/S, a noisy estimate: its AUC and its logistic
calibration slope are attenuated (regression dilution) even when every sample is an exact draw
from the right law. Here the shipped checkpoint's count head (its exact NB2 law per TEST patient
under the allocated arm) is sampled S times per patient, `--replicates` times, and scored with
`forecast.evaluate.score_ensemble` exactly as the model's masks are: the spread is the Monte Carlo
range of the figures at the ceiling of this model's count law. Needs no network pass; about a minute.

    .venv/bin/python bench/head_ensemble_reference.py --samples 12
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "forecast/checkpoints/tiny_centre")
    ap.add_argument("--test", type=Path, default=Path("/tmp/quality/coh-heldout-2027"), help="the TEST trial (simulated: seed 2027, 40 per arm, 32^3)")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--replicates", type=int, default=200)
    a = ap.parse_args()

    import torch

    from forecast.checkpoint import build_model, load_checkpoint
    from forecast.count_head import feature_matrix, nb2_params
    from forecast.evaluate import score_ensemble
    from forecast.model import arm_weights
    from mseval.io.cohort import read_cohort
    from mseval.lesions.baseline_features import baseline_features
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    torch.set_num_threads(1)
    if not (a.test / "manifest.csv").is_file():
        simulate_trial(a.test, TrialConfig(patients_per_arm=40, shape=(32, 32, 32), seed=2027), workers=2)
    ck = load_checkpoint(a.checkpoint)
    f = baseline_features(read_cohort(a.test))
    mean, alpha = nb2_params(build_model(ck).count_head, feature_matrix(f), arm_weights(ck.config, list(f["arm"])).numpy())
    y = f["net2"].to_numpy(np.int64)
    r = 1.0 / alpha
    p = r / (r + mean)
    rows = []
    for rep in range(a.replicates):
        ens = np.random.default_rng([rep, a.samples]).negative_binomial(r[:, None], p[:, None], size=(len(y), a.samples))
        s = score_ensemble(ens, y, seed=rep, n_boot=10)
        rows.append((s["auc_p_active"], s["crps_count"], s["calibration_slope"], s["pit_chi2_p"]))
    x = np.array(rows)
    print(f"{ck.id}: its count head's exact law drawn as {a.samples}-member ensembles, {a.replicates} replicates, {len(y)} TEST patients")
    for k, name in enumerate(["P(active) AUC", "fair count CRPS", "calibration slope", "PIT chi2 p"]):
        print(f"  {name}: median {np.median(x[:, k]):.3f}, 95% of replicates {np.quantile(x[:, k], 0.025):.3f} - {np.quantile(x[:, k], 0.975):.3f}")
    print(f"  replicates with AUC < 0.85: {(x[:, 0] < 0.85).mean():.0%}; slope < 0.8: {(x[:, 2] < 0.8).mean():.0%}; PIT p < 0.01: {(x[:, 3] < 0.01).mean():.0%}")


if __name__ == "__main__":
    main()
