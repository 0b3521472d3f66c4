"""What the image count model (`forecast.image_count.ImageCountNet`) costs on a grid, without a GPU: device memory of
one training step and of one patient's forecast, traced on fake tensors as `forecast.planner` traces the diffusion
network (`mseval forecast plan --model image-count`), and the host memory and disk its data path needs.

Training (`fit_image_count`) runs in fp32: a batch of patients through both pathways, the count NLL and the centre
NLL (a log-softmax over every voxel of the patient's arm's logit map), backward, an Adam step. Forecasting
(`forecast_laws`, `forecast_trajectories`) runs one patient at a time, all arms, without gradients. Host memory: with
`load_arrays(cache=DIR)` the training set lives on disk, memory-mapped, and only the batch being collated is copied
(cond and brain of `batch` patients); without a cache the whole training set is in memory (`host_uncached`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from forecast.planner import GiB, LiveBytes, MemoryEstimate, _fake_mode, largest_fitting, memory_budget

DEFAULT_NET: dict[str, Any] = {"hidden": 12, "count_hidden": 8, "count_trunk": "gated", "count_head": "linear", "centre_trunk": "multiscale"}
"""`make checkpoint`'s recipe (`forecast.image_release.RECIPE`)."""


def _net(channels: int, arms: int, visits: int, net: dict[str, Any]):  # noqa: ANN202 - an ImageCountNet
    from forecast.image_count import ImageCountNet

    return ImageCountNet(channels, arms, visits, **net)


def _faked(model: torch.nn.Module, mode) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:  # noqa: ANN001 - a FakeTensorMode
    """The model's parameters and buffers as fake tensors of `mode` (the real module is tiny; it is built outside the
    mode because its channels-last conversion cannot swap fake parameters), and the fake parameters."""
    state = {k: mode.from_tensor(v.detach()).requires_grad_(v.requires_grad) for k, v in model.named_parameters()}
    params = list(state.values())
    state |= {k: mode.from_tensor(v) for k, v in model.named_buffers()}
    return state, params


def _batch(shape: Sequence[int], batch: int, channels: int, arms: int, visits: int, centres: int) -> dict[str, torch.Tensor]:
    from forecast.image_count import FEATURES

    n = batch * centres
    vox = math.prod(int(s) for s in shape)
    return {"cond": torch.randn(batch, channels, *shape), "brain": torch.ones(batch, *shape, dtype=torch.bool),
            "tab": torch.randn(batch, len(FEATURES)), "arm": torch.randint(0, arms, (batch,)), "years": torch.rand(batch, visits),
            "counts": torch.rand(batch, visits), "centre_index": torch.randint(0, vox, (n,)), "centre_member": torch.randint(0, batch, (n,))}


def training_peak(shape: Sequence[int], batch: int, *, net: dict[str, Any] = DEFAULT_NET, channels: int = 7, arms: int = 6, visits: int = 3,
                  centres: int = 10) -> MemoryEstimate:
    """Peak device memory of one warm training step on `batch` patients (`centres` lesion centres each), fp32."""
    from forecast.image_count import logits_for

    model, mode = _net(channels, arms, visits, net).train(), _fake_mode()
    state, params = _faked(model, mode)
    with mode:
        n = sum(p.numel() * p.element_size() for p in params)
        opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
        for p in params:
            opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        tracker = LiveBytes()
        with tracker:
            b = _batch(shape, batch, channels, arms, visits, centres)
            log_mu, log_alpha, logits = torch.func.functional_call(model, state, (b["cond"], b["brain"], b["tab"], b["arm"], b["years"]))
            count = (log_mu.exp() - b["counts"] * log_mu).sum() + log_alpha.sum()  # the NB2 terms' size, not their values
            logp = torch.log_softmax(logits_for(logits, b["arm"]).flatten(1), 1)
            loss = count - logp[b["centre_member"], b["centre_index"]].sum()
            loss.backward()
            del loss, logp, logits, log_mu, log_alpha, count, b
            opt.step()
            opt.zero_grad(set_to_none=True)
        static = n * 4  # weights, gradients (freed by zero_grad, counted as resident), Adam's two moments
    return MemoryEstimate("training", batch, "fp32", False, static, tracker.peak)


def forecast_peak(shape: Sequence[int], *, net: dict[str, Any] = DEFAULT_NET, channels: int = 7, arms: int = 6, visits: int = 3) -> MemoryEstimate:
    """Peak device memory of forecasting one patient under one arm (the pipeline's loop body), no gradients, fp32."""
    model, mode = _net(channels, arms, visits, net).eval(), _fake_mode()
    state, params = _faked(model, mode)
    with mode:
        static = sum(p.numel() * p.element_size() for p in params)
        tracker = LiveBytes()
        with tracker, torch.no_grad():
            b = _batch(shape, 1, channels, arms, visits, 0)
            out = torch.func.functional_call(model, state, (b["cond"], b["brain"], b["tab"], b["arm"], b["years"]))
            del out, b
    return MemoryEstimate("forecast", 1, "fp32", False, static, tracker.peak)


@dataclass
class ImageCountPlan:
    """The image count model's costs on one grid (module docstring). host_per_patient: bytes of one patient's cond and
    brain arrays (what the cache stores and a batch copies)."""

    shape: tuple[int, ...]
    net: dict[str, Any]
    spacing: tuple[float, ...]
    parameters: int
    host_per_patient: int
    gpu_gib: float | None
    headroom: float
    rows: list[MemoryEstimate] = field(default_factory=list)
    largest_batch: int | None = None
    train_patients: int = 540

    @property
    def budget(self) -> int | None:
        return memory_budget(self.gpu_gib, self.headroom)

    def to_frame(self) -> pd.DataFrame:
        """One row per estimate: what, batch (patients), GiB, fits."""
        return pd.DataFrame([{"what": r.what, "batch": r.batch, "precision": r.precision, "static_gib": r.static / GiB,
                              "traced_gib": r.traced / GiB, "peak_gib": r.peak / GiB,
                              "fits": None if self.budget is None else r.peak <= self.budget} for r in self.rows])

    def summary(self) -> str:
        budget = self.budget
        shown = {k: v for k, v in self.net.items() if k not in ("sigmas", "margin")}
        lines = [f"image count model ({', '.join(f'{k}={v}' for k, v in shown.items())}): grid {' x '.join(map(str, self.shape))} "
                 f"of {' x '.join(f'{v:.3g}' for v in self.spacing)} mm voxels, {self.parameters / 1e3:.1f} k parameters"]
        if "sigmas" in self.net:
            largest = self.net["sigmas"][-1]
            lines.append(f"multiscale trunk in mm (multiscale_geometry): largest smoothing SD {' x '.join(f'{v:.3g}' for v in largest)} voxels, "
                         f"margin {' x '.join(map(str, self.net['margin']))} voxels")
        lines += [
                  "peak device memory (fake tensors; GiB = 2^30 bytes; excludes the CUDA context):"]
        for r in self.rows:
            tag = "" if budget is None else ("  fits" if r.peak <= budget else "  DOES NOT FIT")
            what = f"batch of {r.batch} patients" if r.what == "training" else "one patient, one arm"
            lines.append(f"  {r.what:9s} {what:24s} {r.precision} {r.peak / GiB:8.2f} GiB{tag}")
        if budget is not None:
            lines.append(f"budget: {self.gpu_gib:g} GiB x (1 - {self.headroom:g} headroom) = {budget / GiB:.1f} GiB; "
                         f"largest training batch: {self.largest_batch}")
        per = self.host_per_patient
        batch = self.rows[0].batch if self.rows else 0
        lines += [f"host memory: {per / GiB:.3f} GiB per patient (cond + brain); with load_arrays(cache=DIR) a training batch copies "
                  f"{batch * per / GiB:.2f} GiB and the cache holds {self.train_patients * per / GiB:.1f} GiB on disk for {self.train_patients} "
                  f"patients; without a cache all {self.train_patients} are in memory ({self.train_patients * per / GiB:.1f} GiB)"]
        return "\n".join(lines)


def plan_image_count(shape: Sequence[int], *, batch: int = 16, net: dict[str, Any] | None = None, channels: int = 7, arms: int = 6,
                     visits: int = 3, gpu_gib: float | None = None, headroom: float = 0.1, train_patients: int = 540,
                     search: bool = True, spacing: Sequence[float] | None = None) -> ImageCountPlan:
    """The plan for `batch` patients per training step (fit_image_count's default 16) on `shape`; with `gpu_gib` (and
    `search`) the largest training batch that fits. spacing: the voxel size (x, y, z mm; default the MNI field of view
    over `shape`, as the simulator renders it), from which the multiscale trunk's smoothing and margin are set in mm as
    `train_image_count` sets them (`forecast.image_count.multiscale_geometry`)."""
    from forecast.image_count import multiscale_geometry
    from mseval.simulate.anatomy import default_spacing

    spacing = tuple(float(v) for v in (default_spacing(tuple(int(s) for s in shape)) if spacing is None else spacing))
    net = dict(DEFAULT_NET if net is None else net)
    if net.get("centre_trunk", "multiscale") == "multiscale":
        net = multiscale_geometry(spacing) | net
    params = sum(p.numel() for p in _net(channels, arms, visits, net).parameters())
    vox = 1
    for s in shape:
        vox *= int(s)
    p = ImageCountPlan(tuple(int(s) for s in shape), net, spacing, params, vox * (channels * 4 + 1), gpu_gib, headroom, train_patients=train_patients)
    p.rows.append(training_peak(shape, batch, net=net, channels=channels, arms=arms, visits=visits))
    p.rows.append(forecast_peak(shape, net=net, channels=channels, arms=arms, visits=visits))
    if gpu_gib is not None and search:
        p.largest_batch, _ = largest_fitting(lambda b: training_peak(shape, b, net=net, channels=channels, arms=arms, visits=visits), p.budget or 0)
    return p


__all__ = ["DEFAULT_NET", "ImageCountPlan", "forecast_peak", "plan_image_count", "training_peak"]
