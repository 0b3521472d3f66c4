"""The count pathway of a count-conditioned forecaster (config `count_head`).

The forecast law is factorised as

    p(NET2 mask | inputs, arm) = sum_n  P(n | features, arm)  p(mask | inputs, arm, n)

- `CountHead` (this module): P(n | features, arm), a negative binomial (NB2) whose log mean and log
  dispersion are a small MLP of the patient's baseline features and the arm weights, with the offset
  log(follow-up years). Features are what the inputs show (`mseval.lesions.baseline_features`):
  Gd+ lesion count and T2 lesion count and volume read from the input masks, age and follow-up from
  the manifest. It is fitted by maximum likelihood (the log score, a proper scoring rule) on the
  training patients' observed NET2 counts, with early stopping on the validation patients' observed
  counts (never the simulator's truth).
- the diffusion network (`forecast.model`): p(mask | inputs, arm, n), the number n of NET2 lesions
  entering with the arm through the class embedding (`ConditionEmbedding`). During training n is
  the lesion count of the observed NET2 mask; at sampling it is drawn from the head, per member,
  from the member's own seed.

So the count distribution of the forecasts is the head's law as far as the network draws the
number of lesions it is asked for (the "count fidelity", measured in bench/RESULTS_forecast.md), and
the arm acts through both. Units: counts are lesions; follow-up in years; volume in mm^3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = ("gd_count", "t2_count", "t2_volume_mm3", "age", "followup_years")
"""Columns of the feature table the head reads (`mseval.lesions.baseline_features`)."""

MAX_ONEHOT = 16
"""The count embedding holds a one-hot of min(n, MAX_ONEHOT) and log(1 + n)."""


def feature_matrix(features: pd.DataFrame) -> np.ndarray:
    """(N, 5) float32 raw head inputs: log1p Gd+ count, log1p T2 count, log1p T2 volume (mm^3),
    age (years), follow-up (years). Raises ValueError naming a missing or non-finite column."""
    missing = [c for c in FEATURES if c not in features.columns]
    if missing:
        raise ValueError(f"feature table lacks {missing[0]!r}")
    x = np.c_[np.log1p(features["gd_count"].to_numpy(float)), np.log1p(features["t2_count"].to_numpy(float)),
              np.log1p(features["t2_volume_mm3"].to_numpy(float)), features["age"].to_numpy(float),
              features["followup_years"].to_numpy(float)]
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        raise ValueError(f"feature {FEATURES[int(np.argmax(bad))]!r} is missing or not finite for some patient")
    return x.astype(np.float32)


class CountHead(nn.Module):
    """NB2 law of the NET2 count. forward(x (B, 5) raw features, w (B, K+1) arm weights) ->
    (log mean (B,), log alpha (B,)); mean in lesions over the follow-up (offset log years), alpha the
    NB2 dispersion (variance = mean + alpha mean^2)."""

    def __init__(self, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("x_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("x_sd", torch.ones(len(FEATURES)))
        self.net = nn.Sequential(nn.Linear(len(FEATURES) + num_classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x - self.x_mean) / self.x_sd
        o = self.net(torch.cat([z, w[:, : self.num_classes].to(z.dtype)], dim=1))
        years = x[:, FEATURES.index("followup_years")].clamp_min(1e-6)
        return o[:, 0] + torch.log(years), o[:, 1].clamp(-12.0, 5.0)


def nb2_nll(log_mu: torch.Tensor, log_alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of counts y under NB2(mean exp(log_mu), alpha exp(log_alpha))."""
    r = torch.exp(-log_alpha)
    log_r_mu = torch.logaddexp(-log_alpha, log_mu)  # log(r + mu)
    ll = (torch.lgamma(y + r) - torch.lgamma(r) - torch.lgamma(y + 1) + r * (-log_alpha - log_r_mu) + y * (log_mu - log_r_mu))
    return -ll.mean()


@dataclass(frozen=True)
class HeadFit:
    """What fitting the head did: patients, epochs run, the epoch kept (lowest validation NLL), the
    training and validation NLL (nats per patient) there."""

    n_train: int
    n_val: int
    epochs: int
    best_epoch: int
    train_nll: float
    val_nll: float

    def to_dict(self) -> dict:
        return {"n_train": self.n_train, "n_val": self.n_val, "epochs": self.epochs, "best_epoch": self.best_epoch,
                "train_nll": self.train_nll, "val_nll": self.val_nll,
                "criterion": "NB2 log-likelihood of the observed NET2 counts; epoch chosen on the validation patients"}


def fit_count_head(head: CountHead, x: np.ndarray, w: np.ndarray, y: np.ndarray, x_val: np.ndarray, w_val: np.ndarray,
                   y_val: np.ndarray, *, epochs: int = 3000, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                   every: int = 25) -> HeadFit:
    """Fit `head` in place by full-batch Adam on the NB2 log-likelihood of the training counts; keep
    the weights of the checked epoch (every `every`) with the lowest validation NLL (with no
    validation patients: the last epoch). x: (N, 5) raw features; w: (N, K+1) arm weights; y: (N,) counts."""
    for prm in head.parameters():
        prm.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in head.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    xt, wt, yt = (torch.as_tensor(a, dtype=torch.float32) for a in (x, w, y))
    head.x_mean.copy_(xt.mean(0))
    head.x_sd.copy_(xt.std(0).clamp_min(1e-3) if len(xt) > 1 else torch.ones(xt.shape[1]))
    xv, wv, yv = (torch.as_tensor(a, dtype=torch.float32) for a in (x_val, w_val, y_val))
    opt = torch.optim.Adam(head.net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_epoch, state = float("inf"), 0, None
    head.train()
    for e in range(1, epochs + 1):
        opt.zero_grad(set_to_none=True)
        loss = nb2_nll(*head(xt, wt), yt)
        loss.backward()
        opt.step()
        if e % every == 0 or e == epochs:
            with torch.no_grad():
                v = float(nb2_nll(*head(xv, wv), yv)) if len(yv) else -float(e)
            if v < best:
                best, best_epoch, state = v, e, {k: t.detach().clone() for k, t in head.state_dict().items()}
    if state is not None:
        head.load_state_dict(state)
    head.eval()
    for prm in head.parameters():  # fitted once; the diffusion training leaves it alone (and DDP sees no unused parameter)
        prm.requires_grad_(False)
    with torch.no_grad():
        tr = float(nb2_nll(*head(xt, wt), yt))
    return HeadFit(len(y), len(y_val), epochs, best_epoch, tr, best if len(yv) else float("nan"))


def fit_head_on_cohort(model: nn.Module, cohort, train_ids: Sequence[str], val_ids: Sequence[str], *,  # noqa: ANN001 - a Cohort
                       fit: bool = True) -> tuple[torch.Tensor, HeadFit | None]:
    """Read the features and observed NET2 counts of the training (and, with `fit`, validation) patients of a
    cohort (`mseval.lesions.baseline_features`: 26-connected lesions of at least 3 mm^3); with `fit`,
    fit `model.count_head` on the training patients, choosing the epoch on the validation patients.
    Returns the training patients' observed NET2 counts (len(train_ids),), in order, and the fit."""
    from forecast.model import arm_weights
    from mseval.errors import InputError
    from mseval.lesions.baseline_features import baseline_features
    from mseval.seeding import derive_seed

    cfg = model.cfg
    ids = list(train_ids) + (list(val_ids) if fit else [])  # resuming needs only the training patients' counts
    f = baseline_features(cohort, ids)
    if "net2" not in f.columns:
        raise InputError(cohort.root / "manifest.csv", "a count-conditioned model trains on the observed NET2 counts; some patient has no net2_mask",
                         field="net2_mask")
    tr, va = f.iloc[: len(train_ids)], f.iloc[len(train_ids):]
    counts = torch.tensor(tr["net2"].to_numpy(float), dtype=torch.float32)
    if not fit:
        return counts, None
    res = fit_count_head(model.count_head, feature_matrix(tr), arm_weights(cfg, list(tr["arm"])).numpy(), tr["net2"].to_numpy(float),
                         feature_matrix(va), arm_weights(cfg, list(va["arm"])).numpy(), va["net2"].to_numpy(float),
                         epochs=cfg.count_head_epochs, seed=derive_seed(cfg.seed, "count_head") % (2**63))
    return counts, res


def nb2_params(head: CountHead, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (N,), alpha (N,)) float64 of the head's law for raw features x (N, 5) and arm weights w (N, K+1)."""
    dev = head.x_mean.device
    with torch.no_grad():
        lm, la = head(torch.as_tensor(x, dtype=torch.float32, device=dev), torch.as_tensor(w, dtype=torch.float32, device=dev))
    return lm.double().exp().cpu().numpy(), la.double().exp().cpu().numpy()


def nb2_pmf(mean: np.ndarray, alpha: np.ndarray, kmax: int | None = None) -> np.ndarray:
    """(N, K) pmf of NB2(mean, alpha) on 0..K-1 (K covers all but about 1e-10 of every row's mass)."""
    from scipy import stats

    r = 1.0 / np.asarray(alpha, float)
    p = r / (r + np.asarray(mean, float))
    if kmax is None:
        kmax = int(stats.nbinom.ppf(1 - 1e-10, r, p).max()) + 2
    k = np.arange(kmax)
    return stats.nbinom.pmf(k[None], r[:, None], p[:, None])


def draw_counts(mean: float, alpha: float, seeds: Sequence[int]) -> list[int]:
    """One NB2(mean, alpha) draw per seed (numpy's generator seeded by the member's seed), so a
    member's count depends on its seed alone."""
    r = 1.0 / alpha
    p = r / (r + mean)
    return [int(np.random.default_rng([int(s) % (2**63), 1013]).negative_binomial(r, p)) for s in seeds]


__all__ = ["CountHead", "FEATURES", "HeadFit", "MAX_ONEHOT", "draw_counts", "feature_matrix", "fit_count_head", "fit_head_on_cohort", "nb2_nll",
           "nb2_params", "nb2_pmf"]
