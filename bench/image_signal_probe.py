"""Is the latent activity in the rendered images at all? A supervised probe on the issue-21 DEV trials (never TEST).

The count model of issue 21 must find, without being told, what the baseline images say about a patient's latent
activity u beyond the lesion counts. This diagnostic gives a network the answer during training: a small 3D CNN (the
count trunk's shape: two 3x3x3 convolutions and a 1x1x1 convolution to `--maps` sigmoid detector maps, their
brain-masked shares and log shares) plus the tabular count features regresses log u of the TRAIN patients
(the simulator's truth, simulation.json `latent`) beyond the reference, an OLS of log u on [1, z, z^2] of the
standardised tabular features: the network learns the residual from a zero last layer, and its held-out epoch
may be epoch 0 (the reference itself), so an image network that learns nothing scores the reference exactly (a
first version trained the tabular reference as a small MLP too; its DEV R^2 moved from 0.21 to 0.49 with the
initial weights alone, too unstable to compare against). The same residual MLP without images is reported too. On DEV the R^2 of log u of both is compared (paired bootstrap SE over patients): if the supervised
network cannot beat the tabular one, no unsupervised forecaster can get the count from these images either.

    PYTHONPATH=. .venv/bin/python bench/image_signal_probe.py --train TRAIN --dev DEV --cache ARRAYS.pkl [--target latent|dawm]

(ARRAYS.pkl: the arrays `bench/readable_oracle.py` caches for the same TRAIN/DEV, made here when absent; `--mtr` adds the
cohort's MTR map as a channel -- give such a run its own cache file.)
`--normalization n4_whitestripe` reads the images after N4 bias correction and WhiteStripe (`forecast.preprocess`).
`--target dawm` regresses the log DAWM share (oracle_inputs.csv) instead: the image channel's own quantity.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.readable_oracle import DEFAULT_INPUTS, load_or_cache
from forecast.data import split_patients
from forecast.image_count import GatedDetectors, tabular
from mseval.io.cohort import read_cohort


class Probe(nn.Module):
    def __init__(self, channels: int, n_tab: int, maps: int, images: bool, trunk: str = "conv") -> None:
        super().__init__()
        self.images = images
        if trunk == "gated":
            self.trunk = GatedDetectors(channels, maps)
        else:
            self.trunk = nn.Sequential(nn.Conv3d(channels, maps, 3, padding=1), nn.SiLU(), nn.Conv3d(maps, maps, 3, padding=1), nn.SiLU(),
                                       nn.Conv3d(maps, maps, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.Linear(n_tab + (2 * maps if images else 0), 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, cond: torch.Tensor, brain: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        if not self.images:
            return self.head(tab)[:, 0]
        d = self.trunk(cond)
        b = brain[:, None].float()
        share = (d * b).sum((2, 3, 4)) / b.sum((2, 3, 4))
        return self.head(torch.cat([tab, share, torch.log(share + 1e-4)], 1))[:, 0]


def targets(root: Path, ids: list[str], kind: str) -> np.ndarray:
    if kind == "latent":
        lat = json.loads((root / "simulation.json").read_text())["latent"]
        return np.log(np.array([lat[p]["latent_activity"] for p in ids]))
    f = pd.read_csv(root / "oracle_inputs.csv").set_index("patient_id").loc[ids, "dawm_fraction"].to_numpy(dtype=float)
    return np.log(np.maximum(f, 1e-4))


def ols_design(z: np.ndarray) -> np.ndarray:
    """[1, z, z^2] of the standardised tabular features: the reference's design (curvature in the counts)."""
    return np.c_[np.ones(len(z)), z, z ** 2]


def fit(model: Probe, X: tuple, y: np.ndarray, off: np.ndarray, Xv: tuple, yv: np.ndarray, offv: np.ndarray, epochs: int,
        seed: int, lr: float = 3e-3) -> tuple[Probe, int]:
    """Fit the residual y - off by Adam (MSE); keep the epoch with the lowest held-out MSE, epoch 0 (the untrained net,
    whose last layer is zero: the reference itself) included. Returns (model, kept epoch)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    r, rv = torch.from_numpy(y - off), torch.from_numpy(yv - offv)

    def val() -> float:
        model.eval()
        with torch.no_grad():
            return float(((model(*Xv) - rv) ** 2).mean())

    best, keep, state = val(), 0, {k: t.clone() for k, t in model.state_dict().items()}
    for e in range(1, epochs + 1):
        model.train()
        for idx in np.array_split(rng.permutation(len(y)), max(len(y) // 16, 1)):
            opt.zero_grad()
            loss = ((model(X[0][idx], X[1][idx], X[2][idx]) - r[idx]) ** 2).mean()
            loss.backward()
            opt.step()
        v = val()
        if v < best:
            best, keep, state = v, e, {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(state)
    return model, keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--target", default="latent", choices=("latent", "dawm"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--trunk", default="conv", choices=("conv", "gated"),
                    help="conv: the count trunk's shape; gated: 1x1x1 raised-sequence detectors gated by lesion-free white matter")
    ap.add_argument("--normalization", default="brain_z", choices=("brain_z", "n4_whitestripe"),
                    help="how the images are read (forecast.preprocess); give each its own --cache")
    ap.add_argument("--workers", type=int, default=1, help="processes that read the arrays (the N4 preprocessing is slow)")
    ap.add_argument("--mtr", action="store_true", help="add the cohort's MTR map as an input channel (a cohort simulated with --mtr)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    tr, dv = read_cohort(a.train), read_cohort(a.dev)
    ids = list(tr.patient_ids)
    arm_of = tr.manifest.set_index("patient_id")["arm"]
    fit_ids, val_ids = split_patients(ids, [arm_of[i] for i in ids], 0.1, 0)
    dev_ids = list(dv.patient_ids)
    inputs = DEFAULT_INPUTS + (("mtr",) if a.mtr else ())
    tp, vp, dp = load_or_cache(tr, dv, Path(a.cache), fit_ids, val_ids, list(tr.arms["arm"]), inputs, normalization=a.normalization,
                               workers=a.workers)

    def arrays(ps: list) -> tuple:
        return (torch.from_numpy(np.stack([p.cond for p in ps])), torch.from_numpy(np.stack([p.brain for p in ps])),
                torch.from_numpy(tabular(np.stack([p.tab for p in ps]))))

    Xt, Xv, Xd = arrays(tp), arrays(vp), arrays(dp)
    mu, sd = Xt[2].mean(0), Xt[2].std(0) + 1e-6
    Xt, Xv, Xd = [(x[0], x[1], (x[2] - mu) / sd) for x in (Xt, Xv, Xd)]
    yt, yv, yd = (targets(Path(a.train), list(fit_ids), a.target).astype(np.float32), targets(Path(a.train), list(val_ids), a.target).astype(np.float32),
                  targets(Path(a.dev), dev_ids, a.target).astype(np.float32))
    # the reference: OLS of the target on [1, z, z^2] of the tabular features (fitted on TRAIN's fitted patients);
    # each network learns the residual, starting from exactly the reference (zero last layer, epoch 0 a candidate)
    z = [x[2].numpy().astype(np.float64) for x in (Xt, Xv, Xd)]
    beta = np.linalg.lstsq(ols_design(z[0]), yt, rcond=None)[0]
    off_t, off_v, off_d = (ols_design(zz) @ beta for zz in z)
    preds = {"tabular": off_d}
    for name, images in (("tabular MLP", False), ("images", True)):
        t0 = time.time()
        torch.manual_seed(a.seed)  # the initial weights: the same for a given --seed whatever ran before
        probe = Probe(Xt[0].shape[1], Xt[2].shape[1], a.maps, images, a.trunk)
        nn.init.zeros_(probe.head[-1].weight)
        nn.init.zeros_(probe.head[-1].bias)
        m, kept = fit(probe, Xt, yt, off_t.astype(np.float32), Xv, yv, off_v.astype(np.float32), a.epochs, a.seed, a.lr)
        with torch.no_grad():
            preds[name] = off_d + m(*Xd).numpy()
        print(f"  {name}: {time.time() - t0:.0f} s, epoch kept {kept}", flush=True)
    rng = np.random.default_rng(a.seed)
    names = list(preds)
    r2 = {k: 1.0 - np.mean((p - yd) ** 2) / np.var(yd) for k, p in preds.items()}
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(yd), len(yd))
        v = np.var(yd[i])
        boot.append([1.0 - np.mean((preds[k][i] - yd[i]) ** 2) / v for k in names])
    boot = np.array(boot)
    gain = {k: (r2[k] - r2["tabular"], (boot[:, j] - boot[:, 0]).std(ddof=1)) for j, k in enumerate(names) if j}
    print(f"DEV R^2 of log {a.target} ({a.normalization}, {a.trunk} trunk, seed {a.seed}, {a.epochs} epochs, lr {a.lr:g}): tabular OLS {r2['tabular']:.3f}; "
          + "; ".join(f"+ {k} {r2[k]:.3f} (gain {g:+.3f}, bootstrap SE {se:.3f})" for k, (g, se) in gain.items()) + f"; n = {len(yd)}")


if __name__ == "__main__":
    main()
