"""The location pathway of a centre-conditioned forecaster (config `centre_map`).

The forecast law is factorised one step further than `forecast.count_head`:

    p(NET2 mask | inputs, arm) = sum_n P(n | features, arm)  p(centres | inputs, n)  p(mask | inputs, arm, centres)

- `LocationNet` (this module): a learned intensity of NET2 lesion centres over the voxel grid, a small
  convolutional network of the baseline channels giving one logit per voxel. n centres are drawn from
  softmax(logits) one after another, each excluding the voxels within `min_distance - 1` (Chebyshev)
  of those already drawn, so distinct lesions do not touch. It is fitted by maximum likelihood
  (the multinomial log score of the observed lesion centres given their number) on the training
  patients' observed NET2 masks, the epoch chosen on held-out patients' observed masks.
- the diffusion network renders a mask around the centres: it sees a centre map (1 at each centre
  voxel, 0 elsewhere) as one more input channel. During training the centres are those of the
  (augmented) observed NET2 mask; at sampling, the drawn ones. The rendering is then local, and a
  forecast holds the number of lesions the count head drew unless their renderings touch.

A lesion's centre is the voxel of its 26-connected component closest to the component's centroid
(always inside the lesion). Shapes: masks and logits (X, Y, Z); centres (K, 3) int voxel indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def lesion_centres(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(K, 3) int64 centre voxels of the 26-connected components of `mask > threshold` (X, Y, Z),
    in label order (K = 0 for an empty mask)."""
    import cc3d
    from scipy import ndimage

    labels = cc3d.connected_components(np.ascontiguousarray(np.asarray(mask) > threshold, dtype=np.uint8), connectivity=26)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        pts = np.argwhere(labels[sl] == k) + np.array([s.start for s in sl])
        c = pts.mean(axis=0)
        out.append(pts[int(np.argmin(((pts - c) ** 2).sum(axis=1)))])
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def centre_map(centres: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(X, Y, Z) float32: 1 at each centre voxel, 0 elsewhere."""
    m = np.zeros(tuple(shape), dtype=np.float32)
    if len(centres):
        c = np.asarray(centres, dtype=np.int64)
        m[c[:, 0], c[:, 1], c[:, 2]] = 1.0
    return m


def centre_batch(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre maps of a batch of targets. target: (B, 1, X, Y, Z) soft mask in [0, 1] ->
    (maps (B, 1, X, Y, Z) float32 on target's device, counts (B,) float32: lesions per member)."""
    t = target.detach().float().cpu().numpy()
    cs = [lesion_centres(t[i, 0]) for i in range(t.shape[0])]
    maps = np.stack([centre_map(c, t.shape[2:]) for c in cs])[:, None]
    return torch.from_numpy(maps).to(target.device), torch.tensor([float(len(c)) for c in cs])


class LocationNet(nn.Module):
    """Logits of the NET2 lesion-centre intensity. forward(cond (B, C, X, Y, Z) baseline channels) ->
    (B, X, Y, Z) logits; the probability that a given lesion is centred at a voxel is their softmax over
    the grid. Receptive field 11 voxels (3x3x3 convolutions, dilations 1, 2, 2)."""

    def __init__(self, in_channels: int, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv3d(hidden, 1, 1),
        )

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond.float())[:, 0]


def centre_nll(logits: torch.Tensor, centres: Sequence[np.ndarray]) -> tuple[torch.Tensor, int]:
    """(sum over members and centres of -log softmax(logits)[centre] (nats), number of centres).
    logits: (B, X, Y, Z); centres[b]: (K_b, 3)."""
    logp = torch.log_softmax(logits.flatten(1), dim=1)
    shape = logits.shape[1:]
    total, k = logits.new_zeros(()), 0
    for b, c in enumerate(centres):
        if len(c):
            flat = torch.as_tensor(np.ravel_multi_index(np.asarray(c).T, shape), device=logits.device)
            total = total - logp[b, flat].sum()
            k += len(c)
    return total, k


@dataclass(frozen=True)
class LocationFit:
    """What fitting the location network did: patients with at least one lesion (training,
    validation), centres, epochs, the epoch kept and its NLL per centre (nats; uniform over the brain
    would be about log(brain voxels))."""

    n_train: int
    n_val: int
    centres_train: int
    centres_val: int
    epochs: int
    best_epoch: int
    train_nll: float
    val_nll: float

    def to_dict(self) -> dict:
        return {**self.__dict__, "criterion": "multinomial log-likelihood of the observed NET2 lesion centres given their number; "
                                               "epoch chosen on the held-out patients"}


def fit_location(net: LocationNet, item: Callable[[int], tuple[torch.Tensor, np.ndarray]], n_train: int,
                 val: Sequence[tuple[torch.Tensor, np.ndarray]], *, epochs: int = 6, batch: int = 16, lr: float = 3e-3,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None) -> LocationFit:
    """Fit `net` in place by Adam on the centre NLL; keep the epoch with the lowest validation NLL per
    centre. item(i) -> (cond (C, X, Y, Z), centres (K, 3)) for training patient i < n_train (patients
    without lesions carry no information about where lesions go and are skipped); val: the same pairs."""
    for prm in net.parameters():
        prm.requires_grad_(True)
    rng = np.random.default_rng([seed % (2**63), 31])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % (2**63))
        for m in net.net:
            if isinstance(m, nn.Conv3d):
                m.reset_parameters()
    train = [(c, k) for c, k in (item(i) for i in range(n_train)) if len(k)]
    val = [(c, k) for c, k in val if len(k)]
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def evaluate(pairs: Sequence[tuple[torch.Tensor, np.ndarray]]) -> float:
        tot, k = 0.0, 0
        with torch.no_grad():
            for lo in range(0, len(pairs), batch):
                part = pairs[lo: lo + batch]
                s, n = centre_nll(net(torch.stack([c for c, _ in part])), [k for _, k in part])
                tot, k = tot + float(s), k + n
        return tot / max(k, 1)

    best, best_epoch, state = float("inf"), 0, None
    for e in range(1, epochs + 1):
        net.train()
        order = rng.permutation(len(train))
        for lo in range(0, len(order), batch):
            part = [train[int(i)] for i in order[lo: lo + batch]]
            s, n = centre_nll(net(torch.stack([c for c, _ in part])), [k for _, k in part])
            opt.zero_grad(set_to_none=True)
            (s / max(n, 1)).backward()
            opt.step()
        net.eval()
        v = evaluate(val) if val else -float(e)
        if v < best:
            best, best_epoch, state = v, e, {k: t.detach().clone() for k, t in net.state_dict().items()}
        if progress:
            progress(e, epochs)
    if state is not None:
        net.load_state_dict(state)
    net.eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return LocationFit(len(train), len(val), int(sum(len(k) for _, k in train)), int(sum(len(k) for _, k in val)), epochs, best_epoch,
                       evaluate(train), best if val else float("nan"))


def draw_centres(logits: np.ndarray, n: int, seed: int, *, min_distance: int | Sequence[int] = 4) -> np.ndarray:
    """(m, 3) int64 centres, m <= n: n draws from softmax(logits) (X, Y, Z) in turn, each excluding the
    voxels closer than `min_distance` (Chebyshev; voxels, one number or one per axis) to those drawn before
    (m < n only when no voxel is left). A function of (logits, n, seed, min_distance) alone."""
    rng = np.random.default_rng([int(seed) % (2**63), 2029])
    lg = np.asarray(logits, dtype=np.float64)
    q = np.exp(lg - lg.max())  # the weights still available: zeroed around each centre drawn (the same numbers as p * avail)
    r = np.maximum(np.broadcast_to(np.asarray(min_distance, dtype=np.int64), (3,)) - 1, 0)
    flat = q.reshape(-1)
    w = np.empty_like(flat)
    out = []
    for _ in range(int(n)):
        np.cumsum(flat, out=w)
        if w[-1] <= 0:
            break
        k = min(int(np.searchsorted(w, rng.random() * w[-1], side="right")), w.size - 1)
        c = np.array(np.unravel_index(k, lg.shape))
        out.append(c)
        lo, hi = np.maximum(c - r, 0), c + r + 1
        q[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 0.0
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


__all__ = ["LocationFit", "LocationNet", "centre_batch", "centre_map", "centre_nll", "draw_centres", "fit_location", "lesion_centres"]
