"""Issue-21 diagnostic (DEV trials only): fixed readers of the DAWM share from N4 + WhiteStripe arrays.

Each reader: a voxel score (a weighted sum of the sequences, in the patient's white-matter median/MAD units), optionally
smoothed inside the white matter (Gaussian, sigma in voxels), and the log share of white-matter voxels above t. Printed
per reader: the gain in DEV R^2 of the true log u over the tabular OLS ([1, z, z^2]) when the reader's value is added
(fitted on TRAIN), and its DEV correlation with the true log DAWM share. `--wm-gate x`: white matter = T1 above x
(WhiteStripe units) instead of the brain's 60th T1 percentile.

    PYTHONPATH=. .venv/bin/python bench/fixed_reader_scan.py TRAIN DEV ARRAYS_CACHE [--wm-gate -15]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.readable_oracle import tail_share
from bench.tail_reader_oos import tabular_designs, train_dev_targets

READERS = {"flair": {2: 1.0}, "signs4": {2: 1.0, 1: 1.0, 3: 1.0, 0: -1 / 6}, "flair_t1": {2: 1.0, 0: 0.072}, "flair_t2": {2: 1.0, 1: 0.5}}
"""Channel weights (T1 0, T2 1, FLAIR 2, PD 3; WhiteStripe units, T1's white-matter SD ~6 of them)."""
THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0)


def white_matter(p, gate: float | None) -> np.ndarray:  # noqa: ANN001  (forecast.image_count_data arrays)
    b = p.brain & (p.cond[5] == 0)
    t1 = p.cond[0]
    return b & (t1 > (gate if gate is not None else np.quantile(t1[b], 0.6)))


def robust_z(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref)
    return (x - med) / (np.median(np.abs(ref - med)) * 1.4826)


def reader_values(ps: list, weights: dict, sigma: float, gate: float | None) -> np.ndarray:
    """(n, len(THRESHOLDS)) log shares of white matter whose (smoothed) score exceeds each threshold."""
    out = []
    for p in ps:
        wm = white_matter(p, gate)
        s = sum(w * p.cond[c] for c, w in weights.items())
        z = robust_z(s, s[wm])
        if sigma > 0:  # normalised convolution inside the white matter
            den = ndimage.gaussian_filter(wm.astype(float), sigma)
            z = np.where(den > 0.2, ndimage.gaussian_filter(np.where(wm, z, 0.0), sigma) / np.maximum(den, 1e-6), 0.0)
            z = robust_z(z, z[wm])
        out.append([np.log(np.mean(z[wm] > t) + 1e-3) for t in THRESHOLDS])
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", type=Path)
    ap.add_argument("dev", type=Path)
    ap.add_argument("cache", type=Path, help="arrays pickle of bench/image_signal_probe.py (--normalization n4_whitestripe)")
    ap.add_argument("--wm-gate", type=float, default=None)
    a = ap.parse_args()
    tp, vp, dp = pickle.loads(a.cache.read_bytes())
    trp = tp + vp
    y_tr, y_dv = train_dev_targets(a.train, a.dev, "latent")
    f_tr, f_dv = train_dev_targets(a.train, a.dev, "dawm")
    Xt, Xd = tabular_designs(trp, dp)

    def r2(A: np.ndarray, B: np.ndarray) -> float:
        pred = B @ np.linalg.lstsq(A, y_tr, rcond=None)[0]
        return float(1 - np.mean((pred - y_dv) ** 2) / np.var(y_dv))

    base = r2(Xt, Xd)
    tt, td = np.array([tail_share(p) for p in trp]), np.array([tail_share(p) for p in dp])
    print(f"tabular {base:.3f}; + exact log DAWM share {r2(np.c_[Xt, f_tr], np.c_[Xd, f_dv]) - base:+.3f}; "
          f"+ FLAIR tail share {r2(np.c_[Xt, tt], np.c_[Xd, td]) - base:+.3f}", flush=True)
    for name, w in READERS.items():
        for sigma in (0.0, 0.7, 1.0):
            Ft, Fd = reader_values(trp, w, sigma, a.wm_gate), reader_values(dp, w, sigma, a.wm_gate)
            cells = [f"t{t}:{r2(np.c_[Xt, Ft[:, j]], np.c_[Xd, Fd[:, j]]) - base:+.3f}/c{np.corrcoef(Fd[:, j], f_dv)[0, 1]:.2f}"
                     for j, t in enumerate(THRESHOLDS)]
            print(f"{name} sigma {sigma}: {' '.join(cells)} | all {r2(np.c_[Xt, Ft], np.c_[Xd, Fd]) - base:+.3f}", flush=True)


if __name__ == "__main__":
    main()
