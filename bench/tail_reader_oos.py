"""Out-of-sample check of a simple image reader (issue-21 diagnostic, DEV trials only; never the TEST trial).

OLS of the true log latent activity u (simulation.json; allowed: a reference, not a model) on [1, z, z^2] of the
standardised tabular features (`bench.image_signal_probe.ols_design`), with and without the FLAIR tail share of
`bench.readable_oracle.tail_share`, fitted on TRAIN (fitted + held-out patients of the arrays cache), R^2 on DEV with a
paired bootstrap SE; and the same with the 8 log shares of the untrained `forecast.image_count.GatedDetectors` (their
initialisation) in place of the tail share. No site centring: DEV's scanners are new. One line per arrays cache (`--normalization` of
`bench/image_signal_probe.py`: the tail share is unchanged by any per-sequence affine map, so only N4 changes it).

    PYTHONPATH=. .venv/bin/python bench/tail_reader_oos.py TRAIN DEV CACHE [CACHE ...]
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from bench.image_signal_probe import ols_design, targets
from bench.readable_oracle import tail_share
from forecast.data import split_patients
from forecast.image_count import GatedDetectors, tabular
from mseval.io.cohort import read_cohort


def detector_shares(ps: list, maps: int = 8) -> np.ndarray:
    """(n, maps) log brain shares of the untrained gated detectors."""
    det, out = GatedDetectors(ps[0].cond.shape[0], maps), []
    with torch.no_grad():
        for lo in range(0, len(ps), 32):
            c = torch.from_numpy(np.stack([p.cond for p in ps[lo: lo + 32]]))
            b = torch.from_numpy(np.stack([p.brain for p in ps[lo: lo + 32]]))[:, None].float()
            out.append(((det(c) * b).sum((2, 3, 4)) / b.sum((2, 3, 4))).numpy())
    return np.log(np.concatenate(out) + 1e-4)


def train_dev_targets(train: Path, dev: Path, kind: str = "latent") -> tuple[np.ndarray, np.ndarray]:
    """`bench.image_signal_probe.targets` of TRAIN (fitted then held-out patients: an arrays cache's order) and DEV."""
    tr, dv = read_cohort(train), read_cohort(dev)
    ids = list(tr.patient_ids)
    arm_of = tr.manifest.set_index("patient_id")["arm"]
    fit_ids, val_ids = split_patients(ids, [arm_of[i] for i in ids], 0.1, 0)
    return np.r_[targets(train, list(fit_ids), kind), targets(train, list(val_ids), kind)], targets(dev, list(dv.patient_ids), kind)


def tabular_designs(trp: list, dp: list) -> tuple[np.ndarray, np.ndarray]:
    """OLS designs [1, z, z^2] of TRAIN and DEV arrays, z standardised on TRAIN."""
    T, D = tabular(np.stack([p.tab for p in trp])), tabular(np.stack([p.tab for p in dp]))
    mu, sd = T.mean(0), T.std(0)
    return ols_design((T - mu) / sd), ols_design((D - mu) / sd)


def main(train: Path, dev: Path, caches: list[Path]) -> None:
    y_tr, y_dv = train_dev_targets(train, dev)
    for cache in caches:
        tp, vp, dp = pickle.loads(cache.read_bytes())
        trp = tp + vp
        Xt, Xd = tabular_designs(trp, dp)
        tt, td = np.array([tail_share(p) for p in trp]), np.array([tail_share(p) for p in dp])
        pred = {}
        readers = {"tab": (Xt, Xd), "tail": (np.c_[Xt, tt], np.c_[Xd, td]),
                   "detectors": (np.c_[Xt, detector_shares(trp)], np.c_[Xd, detector_shares(dp)])}
        for name, (A, B) in readers.items():
            pred[name] = B @ np.linalg.lstsq(A, y_tr, rcond=None)[0]
        r2 = {k: 1 - np.mean((v - y_dv) ** 2) / np.var(y_dv) for k, v in pred.items()}
        rng = np.random.default_rng(0)
        gain = []
        for _ in range(2000):
            i = rng.integers(0, len(y_dv), len(y_dv))
            v = np.var(y_dv[i])
            gain.append([(np.mean((pred["tab"][i] - y_dv[i]) ** 2) - np.mean((pred[k][i] - y_dv[i]) ** 2)) / v for k in ("tail", "detectors")])
        se = np.std(gain, axis=0, ddof=1)
        print(f"{cache.name}: DEV R^2 of log u: tabular OLS {r2['tab']:.3f}, + FLAIR tail share {r2['tail']:.3f} "
              f"(gain {r2['tail'] - r2['tab']:+.3f}, SE {se[0]:.3f}), + untrained gated detectors {r2['detectors']:.3f} "
              f"(gain {r2['detectors'] - r2['tab']:+.3f}, SE {se[1]:.3f}); corr(tail, log u) TRAIN "
              f"{np.corrcoef(tt, y_tr)[0, 1]:.3f}, DEV {np.corrcoef(td, y_dv)[0, 1]:.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(x) for x in sys.argv[3:]])
