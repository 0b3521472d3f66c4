"""An NB2 count law and a lesion-centre intensity read from the baseline images (config `image_count`).

The forecast law of the NET2 lesions from baseline to a horizon t under arm a is factorised as

    n ~ NB2(mu(images, features, a, t), alpha(images, features, a, t))     how many
    centres ~ softmax(logits_a(images))  (one after another, kept apart)    where

and both come from one network, `ImageCountNet`, trained end to end by maximum likelihood on the
observed NET2 masks (never the simulator's truth):

- a trunk reads the baseline channels (normalised images, lesion masks) into voxel features h(x) (hidden channels):
  by default (`centre_trunk="multiscale"`, `MultiscaleFeatures`) each channel smoothed inside the brain at fixed
  scales and its neighbourhood maximum, mixed by two 1x1x1 layers (the whole brain in view); or two 3x3x3
  convolutions with a 7-voxel receptive field (`"shallow"`);
- the **centre intensity** is a 1x1x1 convolution of h with one output per arm: logits_a(x) =
  base(x) + shift_a(x), so a treatment can change where lesions appear;
- the **count law** has its own trunk (`count_hidden` channels): two 3x3x3 convolutions and a 1x1x1
  convolution end in sigmoid *detector maps* d_j(x) in [0, 1], each a learned voxel-wise rule over
  the channels and their neighbourhood (e.g. "FLAIR and PD faintly raised in white matter", the
  diffusely abnormal white matter; a faint focal change, a pre-lesional site). Their brain-masked
  means f_j (the share of the brain each rule flags) and log f_j are the patient's image summary; an
  MLP (or, `count_head="linear"`, a linear map) of [that summary, the standardised tabular features (`FEATURES`), the arm (one-hot)] gives one
  log rate per scheduled interval (lesions per year) and one log dispersion alpha; the cumulative mean to visit k is mu_k = sum_{j<=k} rate_j (t_j - t_{j-1})
  (t in years from baseline, the patient's own visit weeks), so each visit's count is NB2(mu_k, alpha)
  and a patient's visits are one coherent trajectory (the counts never decrease). The arm enters
  beside age and the image summary, so the rate ratio can vary between patients and over time.

Training loss per patient (nats): -log of the joint (negative multinomial) law of the increments of
the observed cumulative NET2 counts between observed visits (a missing visit merges two intervals) +
sum over the lesion centres of the last observed cumulative NET2 mask of -log softmax(logits_arm)[centre]
(brain voxels only). The two pathways share no parameter, so each keeps its own epoch: the count
pathway the one with the lowest held-out count NLL, the centre pathway the one with the lowest held-out
centre NLL (observed outcomes of held-out training patients only). A single criterion would be
dominated by the centre NLL (several lesions per patient at ~7 nats each against ~1.3 nats per visit).

Shapes: cond (B, C, X, Y, Z) float32; brain (B, X, Y, Z) bool; tab (B, F) float32 raw features;
arm (B,) int64 index into `arms`; years (B, V) float32 visit times (years from baseline, increasing;
the scheduled time for a missing visit), counts (B, V) float32 cumulative NET2 counts (NaN where a
visit is missing).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FEATURES = ("gd_count", "t2_count", "t2_volume_mm3", "age")
"""Tabular inputs (`mseval.lesions.baseline_features`): Gd+ and T2 lesion counts and T2 volume read
from the baseline masks, age from the manifest. Counts and volume enter as log1p."""


def tabular(features: "np.ndarray | Sequence[Sequence[float]]") -> np.ndarray:
    """(N, 4) raw features in `FEATURES` order -> (N, 4) float32 model inputs (log1p of counts and
    volume, age as is). Raises ValueError on a non-finite value."""
    x = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    if not np.isfinite(x).all():
        bad = int(np.argmax(~np.isfinite(x).all(axis=0)))
        raise ValueError(f"feature {FEATURES[bad]!r} is missing or not finite for some patient")
    return np.c_[np.log1p(x[:, :3]), x[:, 3]].astype(np.float32)


class GatedDetectors(nn.Module):
    """(B, C, X, Y, Z) -> (B, maps, X, Y, Z) detector maps in [0, 1]: d_j(x) = sigmoid(feature_j(x)) * sigmoid(tissue_j(x)),
    two 1x1x1 convolutions, a voxel rule "this sequence is raised" gated by "this voxel is lesion-free white matter"
    (an AND that one sigmoid of a linear map cannot express). Initialised for `forecast.preprocess`'s
    ``n4_whitestripe`` units (0 = the patient's normal white matter, 1 = its SD on that sequence; T1's SD there is ~6
    T1-stripe SDs): even detectors read the sum of the diffuse-abnormality signs, s = (FLAIR + T2 + PD - T1 / 6) / 2
    (each sequence in its white-matter SDs: hyperintense on T2, FLAIR and PD, hypointense on T1), odd ones FLAIR alone,
    above t = 1.5, 2, 2.5, 3 (then again); the gate is T1 (channel 0) above -15 T1-stripe SDs (white matter spans ~5 of
    its SDs, grey matter lies ~35-80 below) and the T2 lesion mask (channel 5) off. The sum's T1 term also lets the even
    detectors fire weakly in the white/grey boundary band (T1 -10 to -20 with the other sequences normal: 0.02-0.09), where
    partial volume mimics a diffuse abnormality. Steepness: 6 per SD for the sequences, 0.6 per T1-stripe SD for the gate
    (sharper than 3 and 0.2, which let that band and the bulk of normal white matter into the shares; DEV, r12). Every weight is learned from there."""

    def __init__(self, channels: int, maps: int) -> None:
        super().__init__()
        self.feature = nn.Conv3d(channels, maps, 1)
        self.tissue = nn.Conv3d(channels, maps, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c_in = self.feature.in_channels
        with torch.no_grad():
            for m in (self.feature, self.tissue):
                m.weight.zero_()
                m.bias.zero_()
            signs = {2: 0.5, 1: 0.5, 3: 0.5, 0: -1.0 / 12.0}  # (FLAIR + T2 + PD - T1 / 6) / 2
            for j in range(self.feature.out_channels):
                t = (1.5, 2.0, 2.5, 3.0)[(j // 2) % 4]
                for c, w in (signs if j % 2 == 0 else {2: 1.0}).items():
                    if c < c_in:
                        self.feature.weight[j, c] = 6.0 * w
                self.feature.bias[j] = -6.0 * t
                self.tissue.weight[j, 0] = 0.6
                self.tissue.bias[j] = 9.0
                if c_in > 5:
                    self.tissue.weight[j, 5] = -30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.feature(x)) * torch.sigmoid(self.tissue(x))


class LinearCountLaw(nn.Module):
    """(B, n_in) -> (B, n_intervals + 1): log rate of interval k = b_k + w . x (one slope vector for every interval, as
    a log-linear NB2 regression with an interval-specific baseline rate) and the log dispersion, the last column: one
    constant, or with `dispersion_index` a log-linear dispersion model a + v . x[:, dispersion_index] (as
    `mseval.stats.nb2_dispersion_model`)."""

    def __init__(self, n_in: int, n_intervals: int, dispersion_index: Sequence[int] | None = None) -> None:
        super().__init__()
        self.slope = nn.Linear(n_in, 1, bias=False)
        self.intercept = nn.Parameter(torch.zeros(n_intervals))
        self.log_alpha = nn.Parameter(torch.zeros(1))
        self.register_buffer("dispersion_index", torch.as_tensor(list(dispersion_index or []), dtype=torch.long), persistent=False)
        self.dispersion = nn.Linear(len(self.dispersion_index), 1, bias=False) if len(self.dispersion_index) else None

    def reset_parameters(self) -> None:
        self.slope.reset_parameters()
        nn.init.zeros_(self.intercept)
        nn.init.zeros_(self.log_alpha)
        if self.dispersion is not None:
            nn.init.zeros_(self.dispersion.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha.expand(x.shape[0], 1)
        if self.dispersion is not None:
            log_alpha = log_alpha + self.dispersion(x[:, self.dispersion_index])
        return torch.cat([self.slope(x) + self.intercept, log_alpha], 1)


SUPPORT_MARGIN = 1.0
"""How far (nats of log rate) beyond the training patients' range an interval's log rate may go
(`ImageCountNet.set_rate_bounds`): at most e = 2.7 times the largest rate of a training patient."""


def _unbounded_if_missing(state: dict, prefix: str, *_args: Any, n_intervals: int) -> None:
    """Load hook: a state dict saved before the count law's rate bounds existed loads unbounded (the same forecasts)."""
    for key, fill in (("rate_lo", -math.inf), ("rate_hi", math.inf)):
        state.setdefault(prefix + key, torch.full((n_intervals,), fill))


SUMMARY_SD_FLOOR = 0.1
"""Smallest scale of an image summary column (shares and log shares) in `ImageCountNet.set_summary_standardisation`."""

COUNT_TRUNKS = ("conv", "gated")
"""The count pathway's detector maps: conv (two 3x3x3 convolutions and a 1x1x1 one, sigmoid) or gated (`GatedDetectors`)."""

CENTRE_TRUNKS = ("shallow", "multiscale")
"""The centre pathway's voxel features: shallow (a 3x3x3 and a dilated 3x3x3 convolution: receptive field 7 voxels) or
multiscale (`MultiscaleFeatures`: every channel smoothed inside the brain at fixed Gaussian scales and its neighbourhood
maximum, then two learned 1x1x1 layers: a few hundred parameters with the whole brain in view, as periventricular
distance, the patient's regional lesion load and its spatial field need). A MONAI residual U-Net (channels 12/24/48,
173k parameters) over-fitted the 540 training patients' centres within 5 epochs and scored below both (DEV, r13).
multiscale is the default: held-out centre NLL 6.93 nats per lesion against shallow's 7.40 (r13)."""

MULTISCALE_SIGMAS = (0.0, 1.0, 2.0, 4.0)
"""Gaussian SDs of the multiscale centre trunk's fixed smoothing, in units of `REFERENCE_VOXEL_MM` (0 is the channel
itself): chosen at 32^3 (r13), where they are 0, 1, 2 and 4 voxels."""

REFERENCE_VOXEL_MM = (182.0 / 32, 218.0 / 32, 182.0 / 32)
"""(x, y, z) mm: the voxel of the 32^3 grid over the MNI field of view (182 x 218 x 182 mm), on which the multiscale
trunk's scales and margin were chosen. Its physical scales are `MULTISCALE_SIGMAS` times this voxel and its margin one
such voxel, on any grid (`multiscale_geometry`)."""


SPACING_DECIMALS = 5
"""Voxel sizes are read to 1e-5 mm before they set a trunk's scales or a sampler's distance (float32 affines)."""


def multiscale_geometry(spacing: Sequence[float]) -> dict[str, list]:
    """The multiscale trunk's smoothing and margin in voxels of a grid with voxel size `spacing` (x, y, z mm), so that
    they mean the same millimetres on every grid: {"sigmas": [[sx, sy, sz] for each scale] Gaussian SDs (voxels, per
    axis) = `MULTISCALE_SIGMAS` x `REFERENCE_VOXEL_MM` / spacing; "margin": [rx, ry, rz] the neighbourhood maximum's
    radius (voxels) = one reference voxel rounded to this grid, at least 1}. On the 32^3 MNI grid: [[0, 0, 0], [1, 1, 1],
    [2, 2, 2], [4, 4, 4]] and [1, 1, 1]; at 1 mm: [[0, 0, 0], [5.69, 6.81, 5.69], ...] and [6, 7, 6]."""
    sp = [round(float(v), SPACING_DECIMALS) for v in spacing]  # NIfTI affines are float32: 5.6875 may read 5.68750048
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be three positive voxel sizes (mm), got {spacing!r}")
    sigmas = [[float(s) * r / v for r, v in zip(REFERENCE_VOXEL_MM, sp)] for s in MULTISCALE_SIGMAS]
    margin = [max(1, int(math.floor(round(r / v, 4) + 0.5))) for r, v in zip(REFERENCE_VOXEL_MM, sp)]  # halves round up
    return {"sigmas": sigmas, "margin": margin}


def _gaussian(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of SD `sigma` (voxels), radius ceil(3 sigma)."""
    r = int(math.ceil(round(3 * sigma, 4)))
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return g / g.sum()


class MultiscaleFeatures(nn.Module):
    """(B, C, X, Y, Z), brain (B, X, Y, Z) -> (B, hidden, X, Y, Z): each channel smoothed inside the brain at each of
    `sigmas` (normalised convolution: blur(x * brain) / blur(brain), so the brain's edge does not darken it; fixed, not
    learned) and its neighbourhood maximum within `margin` voxels (a mask's dilation: the margin where enlarging lesions
    grow), then the C x (len(sigmas) + 1) maps through two learned 1x1x1 layers (SiLU). Features such as "near the
    ventricles" (smoothed CSF darkness on T1), "in the patient's lesion-dense region" (smoothed baseline lesion mask) or
    "in diffusely abnormal white matter" (smoothed FLAIR) are then one learned weight each, with few parameters for a
    few thousand training centres. sigmas: Gaussian SDs in voxels, each a number (all axes) or (sx, sy, sz); margin:
    (rx, ry, rz) voxels. The defaults are the 32^3 grid's; `multiscale_geometry` gives them for any voxel size."""

    def __init__(self, channels: int, hidden: int, sigmas: Sequence[float | Sequence[float]] = MULTISCALE_SIGMAS,
                 margin: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        self.sigmas = tuple(tuple(float(v) for v in (s if isinstance(s, Sequence) else (s, s, s))) for s in sigmas)
        self.margin = tuple(int(r) for r in margin)
        if any(len(s) != 3 or min(s) < 0 for s in self.sigmas) or len(self.margin) != 3 or min(self.margin) < 0:
            raise ValueError(f"sigmas must be numbers or (x, y, z) SDs >= 0 and margin three radii >= 0, got {sigmas!r}, {margin!r}")
        for k, s in enumerate(self.sigmas):
            for axis, v in enumerate(s):
                if v > 0:
                    self.register_buffer(f"kernel{k}_{axis}", _gaussian(v), persistent=False)
        self.mix = nn.Sequential(nn.Conv3d(channels * (len(self.sigmas) + 1), hidden, 1), nn.SiLU(), nn.Conv3d(hidden, hidden, 1), nn.SiLU())

    def _blur(self, x: torch.Tensor, k: int) -> torch.Tensor:
        c = x.shape[1]
        for axis in range(3):
            if self.sigmas[k][axis] <= 0:
                continue
            g = getattr(self, f"kernel{k}_{axis}")
            shape = [1, 1, 1]
            shape[axis] = len(g)
            pad = [0, 0, 0]
            pad[axis] = (len(g) - 1) // 2
            x = nn.functional.conv3d(x, g.view(1, 1, *shape).expand(c, 1, *shape), padding=tuple(pad), groups=c)
        return x

    def forward(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return self.mix(self.maps(x, brain))

    def maps(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """(B, C x (len(sigmas) + 1), X, Y, Z) the fixed maps the learned layers mix: each channel's neighbourhood maximum,
        then the channel smoothed at each scale (channels-last)."""
        m = brain[:, None].float()
        size = tuple(2 * r + 1 for r in self.margin)
        maps = [nn.functional.max_pool3d(x * m, size, stride=1, padding=self.margin) * m]  # the neighbourhood maximum: a lesion's margin
        for k, s in enumerate(self.sigmas):
            if max(s) == 0:
                maps.append(x * m)
            else:
                num, den = self._blur(torch.cat([x * m, m], 1), k).split([x.shape[1], 1], 1)
                maps.append(num / den.clamp_min(1e-3) * m)
        return torch.cat(maps, 1).contiguous(memory_format=torch.channels_last_3d)

COUNT_HEADS = ("mlp", "linear")
"""The count law of the image summary, features and arm: mlp (two hidden layers: interactions, curvature) or linear
(`LinearCountLaw`: an NB2 regression, as `mseval.stats.baseline_nb2` with the image summaries beside the count features
and an arm:age term)."""

QUADRATIC_TERMS = (("gd_count", "gd_count"), ("t2_count", "t2_count"), ("gd_count", "t2_count"), ("gd_count", "age"), ("t2_count", "age"))
"""The flexible count terms: products of standardised `FEATURES` (log1p counts; age)."""

COUNT_TERMS = ("linear", "flexible")
"""The linear count head's count-feature terms: linear (log Gd+, log T2 count, log T2 volume, age, arm, arm x age; one
dispersion) or flexible (also the squares of the standardised log Gd+ and log T2 counts, their product, each of them
times age, and a dispersion model over the arm and the two counts: the terms of
`mseval.stats.baseline_nb2.FLEXIBLE_FORMULA` / `FLEXIBLE_DISPERSION` with a quadratic surface for the spline one)."""


class ImageCountNet(nn.Module):
    """forward(cond, brain, tab, arm, years) -> (log_mu (B, V), log_alpha (B, V), logits (B, K, X, Y, Z)).

    logits are per arm (K = number of arms); `logits_for(logits, arm)` picks each member's arm. mu is
    the expected cumulative NET2 count from baseline to each horizon (lesions), alpha the NB2
    dispersion (variance = mu + alpha mu^2)."""

    def __init__(self, in_channels: int, n_arms: int, n_intervals: int = 3, *, hidden: int = 8, mlp: int = 32,
                 count_hidden: int = 8, count_trunk: str = "conv", count_head: str = "mlp", centre_trunk: str = "multiscale",
                 arm_age: bool | None = None, sigmas: Sequence[float | Sequence[float]] | None = None,
                 margin: Sequence[int] | None = None, count_terms: str = "linear") -> None:
        super().__init__()
        if centre_trunk not in CENTRE_TRUNKS:
            raise ValueError(f"centre_trunk must be one of {', '.join(CENTRE_TRUNKS)}, got {centre_trunk!r}")
        if count_trunk not in COUNT_TRUNKS:
            raise ValueError(f"count_trunk must be one of {', '.join(COUNT_TRUNKS)}, got {count_trunk!r}")
        if count_head not in COUNT_HEADS:
            raise ValueError(f"count_head must be one of {', '.join(COUNT_HEADS)}, got {count_head!r}")
        if count_terms not in COUNT_TERMS:
            raise ValueError(f"count_terms must be one of {', '.join(COUNT_TERMS)}, got {count_terms!r}")
        if count_terms != "linear" and count_head != "linear":
            raise ValueError(f"count_terms {count_terms!r} is the linear head's (an MLP forms its own terms)")
        self.n_arms = n_arms
        self.n_intervals = n_intervals
        self.count_terms = count_terms
        with_arm_age = count_head == "linear" if arm_age is None else bool(arm_age)
        self.arguments = {"in_channels": in_channels, "n_arms": n_arms, "n_intervals": n_intervals, "hidden": hidden, "mlp": mlp,
                          "count_hidden": count_hidden, "count_trunk": count_trunk, "count_head": count_head, "centre_trunk": centre_trunk,
                          "arm_age": with_arm_age}
        if count_terms != "linear":  # absent from older checkpoints' arguments: linear
            self.arguments["count_terms"] = count_terms
        if (sigmas is not None or margin is not None) and centre_trunk != "multiscale":
            raise ValueError(f"sigmas and margin are the multiscale centre trunk's; the {centre_trunk!r} trunk has none")
        """The constructor's arguments: `ImageCountNet(**net.arguments)` rebuilds the architecture."""
        self.centre_trunk = centre_trunk
        if centre_trunk == "multiscale":
            self.trunk = MultiscaleFeatures(in_channels, hidden, MULTISCALE_SIGMAS if sigmas is None else sigmas, margin or (1, 1, 1))
            if sigmas is not None or margin is not None:  # the voxel geometry (`multiscale_geometry`); absent: the 32^3 grid's
                self.arguments |= {"sigmas": [list(g) for g in self.trunk.sigmas], "margin": list(self.trunk.margin)}
        else:
            self.trunk = nn.Sequential(
                nn.Conv3d(in_channels, hidden, 3, padding=1), nn.SiLU(),
                nn.Conv3d(hidden, hidden, 3, padding=2, dilation=2), nn.SiLU(),
            )
        self.base = nn.Conv3d(hidden, 1, 1)
        self.shift = nn.Conv3d(hidden, n_arms, 1)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)
        self.count_trunk = GatedDetectors(in_channels, count_hidden) if count_trunk == "gated" else nn.Sequential(
            nn.Conv3d(in_channels, count_hidden, 3, padding=1), nn.SiLU(),
            nn.Conv3d(count_hidden, count_hidden, 3, padding=1), nn.SiLU(),
            nn.Conv3d(count_hidden, count_hidden, 1), nn.Sigmoid(),
        )
        # a log-linear law needs an arm x age term to let the effect vary by age (default: on for the linear head; an MLP forms its own)
        self.arm_age = with_arm_age
        n_in = 2 * count_hidden + len(FEATURES) + n_arms * (2 if self.arm_age else 1) + (len(QUADRATIC_TERMS) if count_terms == "flexible" else 0)
        disp = None
        if count_terms == "flexible":  # the dispersion model reads the arm (reference arm as baseline) and the two counts
            f0 = 2 * count_hidden
            disp = [f0 + FEATURES.index("gd_count"), f0 + FEATURES.index("t2_count")] + [f0 + len(FEATURES) + k for k in range(1, n_arms)]
        self.count = LinearCountLaw(n_in, n_intervals, disp) if count_head == "linear" else nn.Sequential(
            nn.Linear(n_in, mlp), nn.SiLU(), nn.Linear(mlp, mlp), nn.SiLU(), nn.Linear(mlp, n_intervals + 1))
        self.to(memory_format=torch.channels_last_3d)
        self.register_buffer("tab_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("tab_sd", torch.ones(len(FEATURES)))
        self.register_buffer("summary_mean", torch.zeros(2 * count_hidden))
        self.register_buffer("summary_sd", torch.ones(2 * count_hidden))
        # the count law's support: each interval's log rate is held within the training patients' range under every arm
        # widened by SUPPORT_MARGIN (set by `set_rate_bounds` after fitting; +-inf: no bound, and what a checkpoint
        # saved before the bounds existed loads with)
        self.register_buffer("rate_lo", torch.full((n_intervals,), -math.inf))
        self.register_buffer("rate_hi", torch.full((n_intervals,), math.inf))
        self._register_load_state_dict_pre_hook(functools.partial(_unbounded_if_missing, n_intervals=n_intervals))

    def set_standardisation(self, tab: np.ndarray) -> None:
        """Centre and scale of the tabular inputs (from the training patients' `tabular` rows)."""
        t = torch.as_tensor(np.asarray(tab, dtype=np.float32))
        self.tab_mean.copy_(t.mean(0))
        self.tab_sd.copy_(t.std(0).clamp_min(1e-3))

    def set_summary_standardisation(self, summaries: torch.Tensor) -> None:
        """Centre and scale of the image summary (2 * count_hidden,) from the training patients' summaries (N, 2 * count_hidden)
        under the initial count trunk: the count law sees centred shares (log shares lie near -9), each divided by its SD
        across patients but by no less than `SUMMARY_SD_FLOOR`, so a summary that barely varies at initialisation (a random
        conv trunk's, or a share of a few thousandths) is centred, not amplified a thousandfold as the trunk learns."""
        self.summary_mean.copy_(summaries.mean(0))
        self.summary_sd.copy_(summaries.std(0).clamp_min(SUMMARY_SD_FLOOR))

    def set_rate_bounds(self, summaries: torch.Tensor, tab: torch.Tensor) -> None:
        """Hold each interval's log rate within the range the training patients (summaries (N, 2 * count_hidden) under
        the final count trunk; tab (N, F) their `tabular` rows) have under every arm, widened by `SUPPORT_MARGIN` nats on
        each side: a patient unlike every training patient (another scanner, a failed preprocessing) gets a rate at most
        e^SUPPORT_MARGIN times the largest (or smallest) one the model gives a training patient, instead of an
        exponential extrapolation (a linear head on a far-off log share put 10^4 lesions on one patient). Training
        patients' forecasts, under every arm, are unchanged."""
        with torch.no_grad():
            rates = torch.cat([self.count(self.count_inputs(summaries, tab, torch.full((len(tab),), k)))[:, : self.n_intervals]
                               for k in range(self.n_arms)])
        self.rate_lo.copy_(rates.min(0).values - SUPPORT_MARGIN)
        self.rate_hi.copy_(rates.max(0).values + SUPPORT_MARGIN)

    def centre_parameters(self) -> list[nn.Parameter]:
        """The centre pathway's parameters (trunk, base, shift); the rest belong to the count pathway."""
        return [*self.trunk.parameters(), *self.base.parameters(), *self.shift.parameters()]

    def count_parameters(self) -> list[nn.Parameter]:
        return [*self.count_trunk.parameters(), *self.count.parameters()]

    def image_summary(self, cond: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """(B, 2 * count_hidden): the brain-masked mean f_j of each detector map (in [0, 1]) and log(f_j + 1e-4)."""
        d = self.count_trunk(cond.float().contiguous(memory_format=torch.channels_last_3d))
        m = brain[:, None].float()
        f = (d * m).sum((2, 3, 4)) / m.sum((2, 3, 4)).clamp_min(1.0)
        return torch.cat([f, torch.log(f + 1e-4)], 1)

    def forward(self, cond: torch.Tensor, brain: torch.Tensor, tab: torch.Tensor, arm: torch.Tensor,
                years: torch.Tensor, *, centres: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """centres=False skips the centre pathway (logits None): the count law alone."""
        summary = self.image_summary(cond, brain)
        logits = None
        if centres:
            # channels-last 3D: about 2x faster convolutions on CPU (measured, torch 2.13, 2 threads)
            x = cond.float().contiguous(memory_format=torch.channels_last_3d)
            h = self.trunk(x, brain) if isinstance(self.trunk, MultiscaleFeatures) else self.trunk(x)
            logits = (self.base(h) + self.shift(h)).masked_fill(~brain[:, None].bool(), -1e4)
        log_mu, log_alpha = self.count_law(self.count_inputs(summary, tab, arm), years)
        return log_mu, log_alpha, logits

    def count_inputs(self, summary: torch.Tensor, tab: torch.Tensor, arm: torch.Tensor) -> torch.Tensor:
        """(B, 2 * count_hidden + F + K [+ K] [+ Q]): the standardised image summary, standardised features, one-hot arm, for
        the linear head the one-hot arm times the standardised age (the arm:age effect modification of an NB2 SAP; an MLP
        forms its own interactions) and, with `count_terms="flexible"`, the products `QUADRATIC_TERMS` of the standardised
        features."""
        z = (tab.float() - self.tab_mean) / self.tab_sd
        onehot = nn.functional.one_hot(arm.long(), self.n_arms).float()
        parts = [(summary - self.summary_mean) / self.summary_sd, z, onehot]
        if self.arm_age:
            parts.append(onehot * z[:, FEATURES.index("age"), None])
        if self.count_terms == "flexible":
            parts.append(torch.stack([z[:, FEATURES.index(a)] * z[:, FEATURES.index(b)] for a, b in QUADRATIC_TERMS], 1))
        return torch.cat(parts, 1)

    def count_law(self, inputs: torch.Tensor, years: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_mu (B, V) cumulative means to each visit, log_alpha (B, V)) from the count head on `count_inputs`."""
        return self.law_of(self.count(inputs), years)

    def law_of(self, out: torch.Tensor, years: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`count_law` from the head's output (B, V + 1): log rates per interval (held within `rate_lo`, `rate_hi`) and
        the log dispersion."""
        if years.shape[1] != self.n_intervals:
            raise ValueError(f"the model forecasts {self.n_intervals} visits, asked for {years.shape[1]}")
        out = torch.cat([torch.clamp(out[:, : self.n_intervals], self.rate_lo.to(out.dtype), self.rate_hi.to(out.dtype)), out[:, self.n_intervals:]], 1)
        dt = torch.diff(years.to(out.dtype), dim=1, prepend=torch.zeros_like(years[:, :1], dtype=out.dtype)).clamp_min(1e-4)
        log_mu = torch.logcumsumexp(out[:, : self.n_intervals] + torch.log(dt), dim=1)
        log_alpha = out[:, self.n_intervals].clamp(-8.0, 4.0)
        return log_mu, log_alpha[:, None].expand_as(log_mu)


def describe(arguments: dict) -> str:
    """What a configuration of `ImageCountNet` is, in words (for the checkpoint's metadata and the commands' output)."""
    trunk = {"conv": "convolutional detector maps", "gated": "gated white-matter detector maps"}[arguments["count_trunk"]]
    terms = (", quadratic count terms and a dispersion model" if arguments.get("count_terms", "linear") == "flexible" else "")
    head = ("a log-linear NB2 regression (fitted by maximum likelihood each epoch" + (", with arm x age" if arguments.get("arm_age") else "") + terms + ")"
            if arguments["count_head"] == "linear" else "an MLP")
    place = {"multiscale": "multiscale smoothed image features", "shallow": "a two-layer convolutional trunk"}[arguments["centre_trunk"]]
    return (f"NB2 count law per scheduled visit from {trunk}' brain shares, the baseline lesion counts, age and arm through {head}; "
            f"arm-specific lesion-centre intensity from {place}; no mask renderer")


def logits_for(logits: torch.Tensor, arm: torch.Tensor) -> torch.Tensor:
    """(B, K, X, Y, Z), (B,) -> (B, X, Y, Z): each member's centre logits under its arm."""
    return logits[torch.arange(logits.shape[0], device=logits.device), arm.long()]


def trajectory_logpmf(counts: torch.Tensor, log_mu: torch.Tensor, log_alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint log-likelihood (B,) of each member's observed cumulative counts (B, V; NaN = visit missing) under
    the gamma-mixed Poisson process with cumulative means exp(log_mu) (B, V, nondecreasing) and dispersion
    alpha = exp(log_alpha[:, 0]): the negative multinomial law of the increments between observed visits
    (an NB2 of the total at the last observed visit times a multinomial of its split). Also (B,) the number
    of observed visits."""
    seen = torch.isfinite(counts)
    y = torch.where(seen, counts, torch.zeros_like(counts))
    mu = torch.exp(log_mu)
    # the last observed cumulative value before each visit (0 at baseline), for counts and means
    prev_y = torch.zeros_like(y)
    prev_mu = torch.zeros_like(mu)
    py, pm = torch.zeros_like(y[:, 0]), torch.zeros_like(mu[:, 0])
    for v in range(y.shape[1]):
        prev_y[:, v], prev_mu[:, v] = py, pm
        py = torch.where(seen[:, v], y[:, v], py)
        pm = torch.where(seen[:, v], mu[:, v], pm)
    inc = torch.where(seen, (y - prev_y).clamp_min(0.0), torch.zeros_like(y))
    inc_mu = torch.where(seen, (mu - prev_mu).clamp_min(1e-10), torch.ones_like(mu))
    total, m_tot = inc.sum(1), torch.where(seen, mu - prev_mu, torch.zeros_like(mu)).sum(1).clamp_min(1e-10)
    r = torch.exp(-log_alpha[:, 0])
    lp = (torch.lgamma(r + total) - torch.lgamma(r) - torch.lgamma(inc + 1.0).sum(1)
          + (inc * torch.log(inc_mu)).sum(1) + r * torch.log(r) - (r + total) * torch.log(r + m_tot))
    return torch.where(seen.any(1), lp, torch.zeros_like(lp)), seen.sum(1)


def loss_terms(net: ImageCountNet, batch: dict[str, torch.Tensor], *, centres: bool = True) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(count NLL: joint over each member's observed visits, centre NLL summed over centres, visits, centres);
    centres=False: the count term alone (centre NLL 0 over 0 centres)."""
    log_mu, log_alpha, logits = net(batch["cond"], batch["brain"], batch["tab"], batch["arm"], batch["years"], centres=centres)
    lp, nseen = trajectory_logpmf(batch["counts"], log_mu, log_alpha)
    count_nll = -lp.sum()
    if logits is None:
        return count_nll, count_nll.new_zeros(()), int(nseen.sum()), 0
    lg = logits_for(logits, batch["arm"]).flatten(1)
    logp = torch.log_softmax(lg, 1)
    idx, who = batch["centre_index"], batch["centre_member"]
    centre_nll = -logp[who, idx].sum() if idx.numel() else logp.new_zeros(())
    return count_nll, centre_nll, int(nseen.sum()), int(idx.numel())


@dataclass(frozen=True)
class PatientArrays:
    """One patient: cond (C, X, Y, Z) float32, brain (X, Y, Z) bool, tab (F,) raw features, arm index,
    years (V,) horizons, counts (V,) observed cumulative NET2 counts (NaN = missing visit), centres
    (K, 3) int voxel centres of the last observed cumulative NET2 mask's lesions."""

    cond: np.ndarray
    brain: np.ndarray
    tab: np.ndarray
    arm: int
    years: np.ndarray
    counts: np.ndarray
    centres: np.ndarray


def collate(items: Sequence[PatientArrays], *, zero_channels: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """Stack patients into a batch (zero_channels: cond channels set to 0, the image ablation)."""
    cond = np.stack([p.cond for p in items])
    if len(zero_channels):
        cond[:, list(zero_channels)] = 0.0
    shape = items[0].brain.shape
    idx, who = [], []
    for b, p in enumerate(items):
        if len(p.centres):
            idx.append(np.ravel_multi_index(np.asarray(p.centres).T, shape))
            who.append(np.full(len(p.centres), b))
    return {
        "cond": torch.from_numpy(cond), "brain": torch.from_numpy(np.stack([p.brain for p in items])),
        "tab": torch.from_numpy(tabular(np.stack([p.tab for p in items]))),
        "arm": torch.tensor([p.arm for p in items], dtype=torch.int64),
        "years": torch.from_numpy(np.nan_to_num(np.stack([p.years for p in items]).astype(np.float32), nan=1.0)),  # missing: count masked
        "counts": torch.from_numpy(np.stack([p.counts for p in items]).astype(np.float32)),
        "centre_index": torch.from_numpy(np.concatenate(idx).astype(np.int64)) if idx else torch.zeros(0, dtype=torch.int64),
        "centre_member": torch.from_numpy(np.concatenate(who).astype(np.int64)) if who else torch.zeros(0, dtype=torch.int64),
    }


@dataclass(frozen=True)
class ImageCountFit:
    """What fitting did: patients, epochs, the epoch kept for each pathway (count: lowest held-out count
    NLL; centres: lowest held-out centre NLL) and its held-out losses per observed visit (count, nats)
    and per centre (location, nats); history rows are (total per patient, count per visit, centre per centre)."""

    n_train: int
    n_val: int
    epochs: int
    best_count_epoch: int
    best_centre_epoch: int
    val_count_nll: float
    val_centre_nll: float
    history: tuple[tuple[float, float, float], ...]

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "history"}, "history": [list(h) for h in self.history],
                "criterion": "count pathway: held-out joint NB2 log-likelihood of the observed cumulative NET2 counts; "
                             "centre pathway: held-out multinomial log-likelihood of the observed lesion centres "
                             "(observed masks only); each pathway keeps its own best epoch"}


def evaluate_loss(net: ImageCountNet, patients: Sequence[PatientArrays], *, batch: int = 16,
                  zero_channels: Sequence[int] = (), centres: bool = True) -> tuple[float, float, float]:
    """(total loss per patient, joint count NLL per observed visit, centre NLL per centre (NaN without centres)), nats."""
    c_tot = l_tot = 0.0
    nv = nc = 0
    with torch.no_grad():
        for lo in range(0, len(patients), batch):
            c, loc, v, k = loss_terms(net, collate(patients[lo: lo + batch], zero_channels=zero_channels), centres=centres)
            c_tot, l_tot, nv, nc = c_tot + float(c), l_tot + float(loc), nv + v, nc + k
    return (c_tot + l_tot) / max(len(patients), 1), c_tot / max(nv, 1), (l_tot / nc if nc else math.nan)


def _snapshot(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in params]


def _summaries(net: ImageCountNet, patients: Sequence[PatientArrays], batch: int, zero_channels: Sequence[int]) -> torch.Tensor:
    """(N, 2 * count_hidden) image summaries of `patients` under the count trunk's current weights."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(patients), batch):
            b = collate(patients[lo: lo + batch], zero_channels=zero_channels)
            out.append(net.image_summary(b["cond"], b["brain"]))
    return torch.cat(out)


def _fit_linear_count(net: ImageCountNet, train: Sequence[PatientArrays], summaries: torch.Tensor) -> bool:
    """Maximum-likelihood fit (L-BFGS in float64, deterministic) of a linear count head on fixed image summaries: the joint
    NB2 law of each training patient's observed visits given its summary, features and arm (an NB2 regression). The
    fit runs in double precision (the head has a few dozen parameters): in float32 the line search stalls while the
    gradient is still about 1% of its size half a nat away. False, with the head as it was, when the fit meets a
    non-finite input or likelihood."""
    b = collate([replace(p, cond=p.cond[:0], brain=p.brain[:0], centres=p.centres[:0]) for p in train])  # no images needed
    x = net.count_inputs(summaries, b["tab"], b["arm"]).detach().double()
    years, counts = b["years"].double(), b["counts"].double()
    head = net.count
    params = list(head.parameters())
    before = _snapshot(params)
    if not bool(torch.isfinite(x).all()):
        return False
    fit = copy.deepcopy(head).double()
    with torch.no_grad():
        for t in fit.parameters():
            t.zero_()
    opt = torch.optim.LBFGS(list(fit.parameters()), lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        log_mu, log_alpha = net.law_of(fit(x), years)
        return -trajectory_logpmf(counts, log_mu, log_alpha)[0].mean()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nll()
        loss.backward()
        return loss

    try:
        opt.step(closure)
        with torch.no_grad():
            ok = bool(torch.isfinite(nll())) and all(bool(torch.isfinite(t).all()) for t in fit.parameters())
    except (IndexError, RuntimeError):  # a line search that met a non-finite loss
        ok = False
    with torch.no_grad():
        for t, k in zip(params, list(fit.parameters()) if ok else before):
            t.copy_(k.to(t.dtype))
    return ok


class TrainingStateError(ValueError):
    """A `fit_image_count` state file that cannot be resumed from: `path` and the `reason`, for a one-line error."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def _training_fingerprint(net: ImageCountNet, train: Sequence[PatientArrays], val: Sequence[PatientArrays], **settings: Any) -> str:
    """SHA-256 of what a training run depends on besides its epoch count: the architecture, the settings (seed, batch, lr,
    ablation) and the patients (features, arm, visit times, counts, centres, and each input channel's sum over the central
    sagittal slab: one contiguous read of a memory-mapped patient, which still tells another normalisation apart)."""
    h = hashlib.sha256(json.dumps({"net": net.arguments, **settings}, sort_keys=True, default=str).encode())
    for part, patients in (("train", train), ("val", val)):
        h.update(part.encode())
        for p in patients:
            slab = np.asarray(p.cond[:, p.cond.shape[1] // 2], np.float64).sum(axis=(1, 2))
            for a in (p.tab, np.asarray(p.arm), p.years, p.counts, p.centres, np.asarray(p.cond.shape), slab):
                h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


def fit_image_count(net: ImageCountNet, train: Sequence[PatientArrays], val: Sequence[PatientArrays], *, epochs: int = 10,
                    batch: int = 16, lr: float = 3e-3, seed: int = 0, zero_channels: Sequence[int] = (), centres: bool = True,
                    progress: Callable[[int, int, float], None] | None = None, state_file: str | Path | None = None) -> ImageCountFit:
    """Fit `net` in place by Adam on the summed loss (the pathways share no parameter, so each gets the
    gradient of its own term); each pathway keeps the epoch with its lowest held-out loss. The image summary is
    standardised on the training patients under the initial count trunk; a linear count head (`count_head="linear"`)
    starts from its maximum-likelihood fit on those summaries (an NB2 regression), which is epoch 0, a candidate for
    the count pathway's epoch; Adam then moves the count trunk and, after every epoch, the head is refitted by maximum
    likelihood on the new summaries (the trunk learns against the best NB2 regression on what it reads). centres=False
    trains the count pathway alone (the centre pathway keeps its initial weights; best centre epoch 0). At the end the
    count law's log rates are bounded to the training patients' range (`ImageCountNet.set_rate_bounds`; unbounded while
    fitting, so the held-out losses and the epochs chosen are those of the unbounded law).
    Seeded: the same data, seed and thread count give the same weights on one machine (CPU).

    state_file: after every epoch the whole training state (weights, Adam's moments, the batch order's generator, each
    pathway's best epoch so far and the held-out history) is written there atomically; a run started again with the same
    file continues after its last finished epoch and ends with the same weights, bit for bit, as a run never stopped. A
    file left by another run (other patients, architecture or settings) is refused (`TrainingStateError`)."""
    torch.manual_seed(seed % (2**63))
    for m in net.modules():  # every layer with weights (convolutions, transposed ones, norms, linear maps)
        if m is not net.shift and not isinstance(m, (GatedDetectors, LinearCountLaw)) and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    for m in net.modules():
        if isinstance(m, (GatedDetectors, LinearCountLaw)):  # after their layers' own reset: back to their initialisation
            m.reset_parameters()
    nn.init.zeros_(net.shift.weight)
    nn.init.zeros_(net.shift.bias)
    net.rate_lo.fill_(-math.inf)  # no bound while fitting; set from the training patients at the end
    net.rate_hi.fill_(math.inf)
    net.set_standardisation(tabular(np.stack([p.tab for p in train])))
    summaries = _summaries(net, train, batch, zero_channels)
    net.set_summary_standardisation(summaries)
    count_p, centre_p = net.count_parameters(), net.centre_parameters()
    best_c = best_l = math.inf
    ep_c = ep_l = 0
    linear = isinstance(net.count, LinearCountLaw)
    if linear:  # epoch 0: the NB2 regression on the initial image summaries, by maximum likelihood
        _fit_linear_count(net, train, summaries)
        net.eval()
        v0 = evaluate_loss(net, val, batch=batch, zero_channels=zero_channels, centres=False)[1]
        best_c = v0 if math.isfinite(v0) else math.inf
    rng = np.random.default_rng([seed % (2**63), 21])
    head = {id(t) for t in net.count.parameters()} if linear else set()
    opt = torch.optim.Adam([t for t in net.parameters() if id(t) not in head], lr=lr)
    keep_c, keep_l, hist = _snapshot(count_p), _snapshot(centre_p), []
    start = 1
    fingerprint = None
    if state_file is not None:
        fingerprint = _training_fingerprint(net, train, val, seed=seed, batch=batch, lr=lr, zero_channels=list(zero_channels), centres=centres)
        if Path(state_file).is_file():
            try:
                st = torch.load(state_file, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
                raise TrainingStateError(state_file, f"not a readable training state ({type(exc).__name__}); remove it to start afresh") from None
            if not isinstance(st, dict) or st.get("fingerprint") != fingerprint:
                raise TrainingStateError(state_file, "the state of another training run (other patients, network or settings); remove it to start afresh")
            net.load_state_dict(st["net"])
            opt.load_state_dict(st["opt"])
            rng.bit_generator.state = st["rng"]
            torch.set_rng_state(st["torch_rng"])
            best_c, best_l, ep_c, ep_l, keep_c, keep_l, hist = (st[k] for k in ("best_c", "best_l", "ep_c", "ep_l", "keep_c", "keep_l", "hist"))
            hist = [tuple(v) for v in hist]
            start = int(st["epoch"]) + 1
            if start > epochs + 1:
                raise TrainingStateError(state_file, f"a run already past epoch {epochs} ({st['epoch']} finished); resume with at least "
                                                     f"--epochs {st['epoch']}, or remove it to start afresh")
    for e in range(start, epochs + 1):
        net.train()
        order = rng.permutation(len(train))
        for lo in range(0, len(order), batch):
            b = collate([train[int(i)] for i in order[lo: lo + batch]], zero_channels=zero_channels)
            c, loc, _, _ = loss_terms(net, b, centres=centres)
            opt.zero_grad(set_to_none=True)
            ((c + loc) / len(b["arm"])).backward()
            opt.step()
        net.eval()
        if linear:  # the head follows the trunk: the maximum-likelihood NB2 regression on the new summaries
            _fit_linear_count(net, train, _summaries(net, train, batch, zero_channels))
        v = evaluate_loss(net, val, batch=batch, zero_channels=zero_channels, centres=centres)
        hist.append(v)
        if v[1] < best_c:
            best_c, ep_c, keep_c = v[1], e, _snapshot(count_p)
        if v[2] < best_l:
            best_l, ep_l, keep_l = v[2], e, _snapshot(centre_p)
        if state_file is not None:
            from mseval.io.atomic import atomic_path

            with atomic_path(Path(state_file)) as tmp:
                torch.save({"fingerprint": fingerprint, "epoch": e, "net": net.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(), "best_c": best_c, "best_l": best_l, "ep_c": ep_c, "ep_l": ep_l, "keep_c": keep_c,
                            "keep_l": keep_l, "hist": [list(v) for v in hist]}, tmp)
        if progress:
            progress(e, epochs, v[0])
    with torch.no_grad():
        for t, k in zip([*count_p, *centre_p], [*keep_c, *keep_l]):
            t.copy_(k)
    net.eval()
    net.set_rate_bounds(_summaries(net, train, batch, zero_channels), torch.from_numpy(tabular(np.stack([p.tab for p in train]))))
    return ImageCountFit(len(train), len(val), epochs, ep_c, ep_l, best_c if math.isfinite(best_c) else math.nan,
                         hist[ep_l - 1][2] if ep_l else math.nan, tuple(hist))


def count_pmf(log_mu: np.ndarray, log_alpha: np.ndarray) -> np.ndarray:
    """(n, K) NB2 pmf rows for log means and log dispersions (n,) (`mseval.stats.baseline_nb2.nb2_law_pmf`:
    tail beyond K about 1e-12; NaN rows for a law beyond its KMAX lesions)."""
    from mseval.stats.baseline_nb2 import nb2_law_pmf

    return nb2_law_pmf(np.exp(np.asarray(log_mu, float)), np.exp(np.asarray(log_alpha, float)))


__all__ = ["CENTRE_TRUNKS", "COUNT_HEADS", "COUNT_TERMS", "COUNT_TRUNKS", "QUADRATIC_TERMS", "FEATURES", "MULTISCALE_SIGMAS", "REFERENCE_VOXEL_MM", "multiscale_geometry", "GatedDetectors", "ImageCountFit", "ImageCountNet", "LinearCountLaw", "MultiscaleFeatures", "PatientArrays", "TrainingStateError", "collate", "count_pmf", "describe", "evaluate_loss",
           "fit_image_count", "logits_for", "loss_terms", "tabular", "trajectory_logpmf"]
