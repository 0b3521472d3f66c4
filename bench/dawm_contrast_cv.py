"""Issue-21 diagnostic (DEV trials only): how much of the exact DAWM share's information fixed image readers recover at
each `dawm_contrast` rendering of the same patients (the trials of `bench/dawm_legibility.py K SEED`).

Per contrast K: N4 + WhiteStripe arrays (cached as WORK/dawm_xK_seedSEED.n4ws.pkl; ~7 min for 240 patients on two
cores), then 10-fold cross-validated R^2 (within the trial) of the true log u by OLS on [1, z, z^2] of the tabular
features, + the exact log DAWM share (the ceiling), + the FLAIR tail share, + the untrained `GatedDetectors`' 8 log
shares, + the sum-of-signs reader at t = 2.5 (`bench/fixed_reader_scan.py`); and each reader's share of the exact
share's gain.

    PYTHONPATH=. .venv/bin/python bench/dawm_contrast_cv.py [SEED] [WORK] [K ...]
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import numpy as np

from bench.fixed_reader_scan import READERS, reader_values
from bench.image_signal_probe import ols_design, targets
from bench.readable_oracle import load_parallel, tail_share
from bench.tail_reader_oos import detector_shares
from forecast.image_count import tabular
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS
from mseval.io.cohort import read_cohort


def cv_r2(A: np.ndarray, y: np.ndarray, folds: int = 10) -> float:
    fold = np.arange(len(y)) % folds
    pred = np.empty_like(y)
    for j in range(folds):
        tr, te = fold != j, fold == j
        pred[te] = A[te] @ np.linalg.lstsq(A[tr], y[tr], rcond=None)[0]
    return float(1 - np.mean((pred - y) ** 2) / np.var(y))


def main(seed: int, work: Path, contrasts: list[int]) -> None:
    for k in contrasts:
        root = work / f"dawm_x{k}_seed{seed}"
        c = read_cohort(root)
        ck = work / f"dawm_x{k}_seed{seed}.n4ws.pkl"
        if ck.is_file():
            ps = pickle.loads(ck.read_bytes())
        else:
            t0 = time.time()
            ps = load_parallel(c, c.patient_ids, list(c.arms["arm"]), IMAGE_CHANNELS + MASK_CHANNELS, normalization="n4_whitestripe", workers=2)
            ck.write_bytes(pickle.dumps(ps))
            print(f"contrast {k}: arrays in {time.time() - t0:.0f}s", flush=True)
        y, f = targets(root, list(c.patient_ids), "latent"), targets(root, list(c.patient_ids), "dawm")
        T = tabular(np.stack([p.tab for p in ps]))
        X = ols_design((T - T.mean(0)) / T.std(0))
        r2 = {"tab": cv_r2(X, y), "exact_dawm": cv_r2(np.c_[X, f], y), "tail": cv_r2(np.c_[X, [tail_share(p) for p in ps]], y),
              "detectors": cv_r2(np.c_[X, detector_shares(ps)], y),
              "signs_t2.5": cv_r2(np.c_[X, reader_values(ps, READERS["signs4"], 0.0, None)[:, 3]], y)}
        gain = r2["exact_dawm"] - r2["tab"]
        print(f"contrast {k}: " + " ".join(f"{n} {v:.3f}" for n, v in r2.items()) + " | share of the exact gain: "
              + " ".join(f"{n} {(r2[n] - r2['tab']) / gain:.2f}" for n in ("tail", "detectors", "signs_t2.5")), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 7160, Path(args[1]) if len(args) > 1 else Path("build/dawm_legibility"),
         [int(x) for x in args[2:]] or [1, 2, 3])
