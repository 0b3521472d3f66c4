"""Is the DAWM share legible in the rendered 32^3 FLAIR, at the world's DAWM contrast and at k times it? (issue-21
diagnostic, DEV seed only; never the TEST trial.)

One 240-patient trial (default world, 32^3, seed SEED) simulated with the world knob `dawm_contrast` = K (every
sequence's DAWM intensity change, `mseval.simulate.mri.DAWM_DELTA`, times K) -- same seed, so the same patients, latent
activity and DAWM masks; only the rendering changes. Per patient the FLAIR tail share (`bench.readable_oracle.tail_share`: the log share of
lesion-free white-matter voxels more than 2 MAD above the patient's white-matter median). Printed: its correlation with
the true log DAWM share, and the R^2 of the true log DAWM share and of the true log latent activity u from the lesion
counts (log1p Gd+, log1p T2 count) without and with it (in-sample OLS, 3-4 parameters on 240 patients), and the R^2
of log u from the counts and the true log DAWM share (what the observable oracle reads: the ceiling of this channel).
The tail statistic is crude: with large K the T1 darkening moves DAWM voxels out of its T1-percentile white-matter mask.

    PYTHONPATH=. .venv/bin/python bench/dawm_legibility.py K [SEED] [WORK] [--normalization brain_z|n4_whitestripe] [--no-bias]

--normalization: how the images are read (`forecast.preprocess`: the brain z-score, or N4 bias correction + WhiteStripe).
--no-bias: a counterfactual rendering without the scanner's bias field (the simulator's `_BIAS_AMPLITUDE` set to 0 for
this run only): the ceiling a perfect bias correction could reach. Its trial has its own folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.readable_oracle import DEFAULT_INPUTS, tail_share
from forecast.image_count_data import load_arrays
from mseval.io.cohort import read_cohort
from mseval.lesions.baseline_features import baseline_features
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial


def r2(X: np.ndarray, y: np.ndarray) -> float:
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(1 - np.var(y - X @ b) / np.var(y))


def main(k: float, seed: int, work: Path, normalization: str = "brain_z", no_bias: bool = False) -> None:
    root = work / (f"dawm_x{k:g}_seed{seed}" + ("_nobias" if no_bias else ""))
    t0 = time.time()
    if not (root / "manifest.csv").is_file():
        from mseval.simulate import mri

        keep = mri._BIAS_AMPLITUDE
        mri._BIAS_AMPLITUDE = 0.0 if no_bias else keep
        try:
            simulate_trial(root, TrialConfig(patients_per_arm=40, shape=(32, 32, 32), seed=seed, dawm_contrast=k))
        finally:
            mri._BIAS_AMPLITUDE = keep
    c = read_cohort(root)
    ids = c.patient_ids
    arrays = load_arrays(c, ids, list(c.arms["arm"]), inputs=DEFAULT_INPUTS, with_targets=False, normalization=normalization)
    tail = np.array([tail_share(p, 2, 1.0) for p in arrays])
    log_dawm = np.log(pd.read_csv(root / "oracle_inputs.csv").set_index("patient_id").loc[ids, "dawm_fraction"].to_numpy())
    latent = json.loads((root / "simulation.json").read_text())["latent"]
    log_u = np.log([latent[p]["latent_activity"] for p in ids])
    f = baseline_features(c, ids, outcome=False).set_index("patient_id").loc[ids]
    X0 = np.c_[np.ones(len(f)), np.log1p(f["gd_count"]), np.log1p(f["t2_count"])]
    X1 = np.c_[X0, tail]
    print(f"K={k:g} seed={seed} n={len(ids)} {normalization}{' no-bias' if no_bias else ''}: corr(tail, log DAWM share) {np.corrcoef(tail, log_dawm)[0, 1]:.3f}; "
          f"R^2 log DAWM share: counts {r2(X0, log_dawm):.3f} -> +tail {r2(X1, log_dawm):.3f}; "
          f"R^2 log u: counts {r2(X0, log_u):.3f} -> +tail {r2(X1, log_u):.3f} (+ the true log DAWM share, the oracle's reading: "
          f"{r2(np.c_[X0, log_dawm], log_u):.3f})  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("k", type=float)
    ap.add_argument("seed", type=int, nargs="?", default=7160)
    ap.add_argument("work", type=Path, nargs="?", default=Path("build/dawm_legibility"))
    ap.add_argument("--normalization", default="brain_z", choices=("brain_z", "n4_whitestripe"))
    ap.add_argument("--no-bias", action="store_true")
    a = ap.parse_args()
    main(a.k, a.seed, a.work, a.normalization, a.no_bias)
