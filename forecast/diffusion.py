"""The noise process: the DDPM schedule (MONAI's `alphas_cumprod`) or rectified flow, what the
network predicts, and the training loss.

Masks live in [-1, 1] (x0 = 2 m - 1); a voxel is foreground when the sampled x0 > 0 (soft
probability (x0 + 1) / 2 > 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forecast.config import ForecastConfig


def alphas_cumprod(cfg: ForecastConfig) -> torch.Tensor:
    """(T,) float64 cumulative product of (1 - beta_t) from MONAI's DDPM scheduler."""
    from monai.networks.schedulers import DDPMScheduler

    kw = {} if cfg.beta_schedule == "cosine" else {"beta_start": cfg.beta_start, "beta_end": cfg.beta_end}
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.beta_schedule, **kw)
    return sched.alphas_cumprod.to(torch.float64).clone()


@dataclass(frozen=True)
class Parametrization:
    """Convert a network output at alpha-bar `a` to (x0, eps) for the DDPM objective."""

    prediction: str

    def target(self, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        return a.sqrt() * noise - (1 - a).sqrt() * x0  # v

    def split(self, out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from the network output; `a` broadcastable to x_t."""
        sa, s1 = a.sqrt(), (1 - a).sqrt()
        if self.prediction == "epsilon":
            return (x_t - s1 * out) / sa, out
        if self.prediction == "x0":
            return out, (x_t - sa * out) / s1
        return sa * x_t - s1 * out, s1 * x_t + sa * out  # v


def to_signed(mask: torch.Tensor) -> torch.Tensor:
    """{0, 1} (or soft [0, 1]) mask -> [-1, 1]."""
    return mask * 2.0 - 1.0


def soft_dice_bce(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Dice + BCE between the predicted mask (logit 4 x0_hat) and the target (x0 in [-1, 1])."""
    target = (x0 + 1) / 2
    logits = 4.0 * x0_hat
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dims = tuple(range(1, p.ndim))
    inter = (p * target).sum(dims)
    dice = 1 - (2 * inter + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return bce + dice.mean()


def foreground_weights(x0: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """Per-voxel MSE weights: 1 + fg_weight on voxels whose 3x3x3 neighbourhood holds target
    foreground (soft foreground (x0 + 1) / 2, so blurred targets weigh in proportion), else 1."""
    fg = ((x0.float() + 1) / 2).clamp(0, 1)
    pool = F.max_pool3d if x0.ndim == 5 else F.max_pool2d
    near = pool(fg, kernel_size=3, stride=1, padding=1)
    return 1.0 + fg_weight * near


def weighted_mse(out: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """MSE, or with fg_weight > 0 the foreground-weighted MSE normalized by the mean weight."""
    if fg_weight <= 0:
        return F.mse_loss(out, target)
    w = foreground_weights(x0, fg_weight)
    return (w * (out - target) ** 2).sum() / w.sum()


def diffusion_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    cond: torch.Tensor,
    labels: torch.Tensor,
    cfg: ForecastConfig,
    acp: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """One training loss. x0: (B, 1, X, Y, Z) target in [-1, 1]; cond: (B, C, X, Y, Z); labels: (B, K+1).

    Every random draw (timesteps, noise, dropped labels) comes from `generator` on the CPU, so a
    step is a function of its seed whatever the device. Given one generator per member, member i
    draws its noise, label drop and timestep from generators[i] alone, so its draws do not depend
    on which batch, rank or micro-batch it is in (world-size invariant training).
    """
    b = x0.shape[0]
    dev = x0.device
    if isinstance(generator, torch.Generator):
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        drop = torch.rand(b, generator=generator) < cfg.p_uncond
        u = None
    else:
        if len(generator) != b:
            raise ValueError(f"{len(generator)} generators for a batch of {b}")
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generator]).to(dev)
        drop = torch.cat([torch.rand(1, generator=g) for g in generator]) < cfg.p_uncond
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generator])  # the timestep draw
    labels = labels.clone()
    if drop.any() or not cfg.use_arm:
        null = torch.zeros(labels.shape[1], device=dev)  # class 0; with count columns also 'no count'
        null[0] = 1.0
        rows = torch.ones(b, dtype=torch.bool) if not cfg.use_arm else drop
        labels[rows.to(dev)] = null
    shape = (b,) + (1,) * (x0.ndim - 1)
    if cfg.objective == "rflow":
        t = (torch.rand(b, generator=generator) if u is None else u.float()).to(dev)
        tt = t.view(shape)
        x_t = (1 - tt) * x0 + tt * noise
        out = model(x_t, cond, t * cfg.num_train_timesteps, labels)
        target = noise - x0
        loss = weighted_mse(out.float(), target, x0, cfg.fg_weight)
        if cfg.dice_bce_weight > 0:
            loss = loss + cfg.dice_bce_weight * soft_dice_bce(x_t.float() - tt * out.float(), x0)
        return loss
    if u is None:
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=generator)
    else:
        t = (u * cfg.num_train_timesteps).long().clamp_(max=cfg.num_train_timesteps - 1)
    a = acp[t].to(dev, torch.float32).view(shape)
    return noised_loss(model, x0, noise, a, cond, t.to(dev), labels, cfg)


def noised_loss(model: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, cond: torch.Tensor,
                t: torch.Tensor, labels: torch.Tensor, cfg: ForecastConfig) -> torch.Tensor:
    """The DDPM-objective loss at noise level alpha-bar `a` ((B, 1, 1, 1, 1)): noise x0, run the
    network at timesteps `t` (B,), weighted MSE on the parametrization's target (+ Dice/BCE on x0-hat)."""
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = model(x_t, cond, t, labels)
    par = Parametrization(cfg.prediction)
    loss = weighted_mse(out.float(), par.target(x0, noise, a), x0, cfg.fg_weight)
    if cfg.dice_bce_weight > 0:
        x0_hat, _ = par.split(out.float(), x_t, a)
        loss = loss + cfg.dice_bce_weight * soft_dice_bce(x0_hat, x0)
    return loss
