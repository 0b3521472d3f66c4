"""Sampling loops written on the schedule itself (not MONAI's scheduler `step`, whose DDPM step
always goes to t-1 and whose DDIM step size disagrees with its own timestep list in MONAI 1.6).

- DDIM (eta = 0): descending timesteps t_1 > t_2 > ... > t_N = 0, each step goes to the *next*
  timestep of the list (the last to alpha-bar = 1, i.e. x0).
- DDPM: ancestral sampling with the posterior q(x_prev | x_t, x0) between consecutive timesteps
  of the same list (exact for any number of steps; 1000 steps = the classic sampler).
- rflow: Euler steps of the rectified flow x_t = (1 - t) x0 + t noise, t from 1 to 0.

Classifier-free guidance: out = uncond + w (cond - uncond); w = 1 is the conditional model,
w = 0 the unconditional one (a single network call each); otherwise both halves go through the
network in one batch. Every batch member draws its noise from its own generator, so a member's
result does not depend on which batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from forecast.diffusion import Parametrization

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (B,1,X,Y,Z), cond (B,C,X,Y,Z), t (B,), labels (B,K+1)) -> network output (B,1,X,Y,Z)."""

SAMPLERS = ("ddim", "ddpm", "rflow")


@dataclass(frozen=True)
class SamplerSettings:
    """sampler: ddim | ddpm | rflow; steps: network evaluations per sample (x2 when guided)."""

    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 1.0
    clip_x0: bool = True
    count_tries: int = 1
    """Count-conditioned models: draws per member until its mask holds the requested number of lesions
    (rejection sampling; after `count_tries` draws the closest one is kept). 1 = no rejection."""
    threshold: float | None = None
    """A voxel is lesion where the sampled probability (x0 + 1) / 2 exceeds this; None: the checkpoint
    config's `mask_threshold` (chosen on validation data by `make checkpoint`; 0.5 by default)."""

    def __post_init__(self) -> None:
        if self.count_tries < 1:
            raise ValueError("count_tries must be at least 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")

    def to_dict(self) -> dict:
        return asdict(self)


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending, evenly spaced, unique timesteps from T-1 down to 0 (at most T of them). The first
    network call is always at t = T-1 (pure noise); one step is the single call at T-1 that jumps to x0."""
    steps = min(steps, num_train_timesteps)
    if steps <= 1:
        return [num_train_timesteps - 1]
    ts = np.unique(np.linspace(0, num_train_timesteps - 1, steps).round().astype(int))[::-1]
    return [int(t) for t in ts]


def chunked_rows(denoise: Denoise, max_rows: int | None) -> Denoise:
    """`denoise` evaluated on at most `max_rows` rows per network call (None: all rows at once).
    Rows are independent, so the output is the same; the peak memory is that of `max_rows` rows."""
    if not max_rows:
        return denoise

    def run(x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= max_rows:
            return denoise(x, cond, t, labels)
        outs = [denoise(x[lo: lo + max_rows], cond[lo: lo + max_rows], t[lo: lo + max_rows], labels[lo: lo + max_rows])
                for lo in range(0, x.shape[0], max_rows)]
        return torch.cat(outs)

    return run


def _guided(denoise: Denoise, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: float) -> torch.Tensor:
    null = torch.zeros_like(labels)
    null[:, 0] = 1.0
    if w == 1.0:
        return denoise(x, cond, t, labels)
    if w == 0.0:
        return denoise(x, cond, t, null)
    b = x.shape[0]
    out = denoise(torch.cat([x, x]), torch.cat([cond, cond]), torch.cat([t, t]), torch.cat([labels, null]))
    c, u = out[:b], out[b:]
    return u + w * (c - u)


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal, member i from generators[i] (on the CPU, so any device agrees)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.no_grad()
def sample(
    denoise: Denoise,
    cond: torch.Tensor,
    labels: torch.Tensor,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings,
    *,
    alphas_cumprod: torch.Tensor | None = None,
    prediction: str = "x0",
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Draw one NET2 mask per batch member; returns x0 (B, 1, X, Y, Z) in [-1, 1] (float32).

    cond: (B, C, X, Y, Z); labels: (B, K+1) arm weights; generators: one per member. For ddim and
    ddpm, `alphas_cumprod` (T,) and the network's `prediction` are needed.
    """
    dev = cond.device
    b = cond.shape[0]
    if len(generators) != b or labels.shape[0] != b:
        raise ValueError("one generator and one label row per batch member")
    shape = (1, *cond.shape[2:])
    x = initial_noise(generators, shape).to(dev)
    w = float(settings.guidance)
    if settings.sampler == "rflow":
        grid = torch.linspace(1.0, 0.0, settings.steps + 1, dtype=torch.float64)
        for i in range(settings.steps):
            t, t_next = float(grid[i]), float(grid[i + 1])
            tt = torch.full((b,), t * num_train_timesteps, device=dev, dtype=torch.float32)
            v = _guided(denoise, x, cond, tt, labels, w).float()
            x = x + (t_next - t) * v
        return x
    if alphas_cumprod is None:
        raise ValueError("ddim and ddpm need alphas_cumprod")
    acp = alphas_cumprod.to(torch.float64)
    par = Parametrization(prediction)
    ts = ddim_timesteps(len(acp), settings.steps)
    for i, t in enumerate(ts):
        a = float(acp[t])
        a_prev = float(acp[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        tt = torch.full((b,), t, device=dev, dtype=torch.long)
        out = _guided(denoise, x, cond, tt, labels, w).float()
        at = torch.tensor(a, dtype=torch.float32, device=dev)
        x0, eps = par.split(out, x, at)
        if settings.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            if settings.sampler == "ddim":
                eps = (x - at.sqrt() * x0) / (1 - at).sqrt()
        if settings.sampler == "ddim":
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        else:  # ddpm ancestral step between consecutive list timesteps
            beta = 1.0 - a / a_prev
            mean = (a_prev**0.5 * beta / (1 - a)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * x
            if i + 1 < len(ts):
                var = (1 - a_prev) / (1 - a) * beta
                z = initial_noise(generators, shape).to(dev)
                x = mean + var**0.5 * z
            else:
                x = mean
    return x


def binarize(x0: torch.Tensor, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, X, Y, Z) sampled x0 -> (B, X, Y, Z) uint8 mask (probability > threshold) and float32 soft
    probability (x0 + 1) / 2 clamped to [0, 1]."""
    prob = ((x0[:, 0].float() + 1) / 2).clamp(0, 1).cpu().numpy().astype(np.float32)
    return (prob > threshold).astype(np.uint8), prob
