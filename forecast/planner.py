"""Plan a forecast configuration without a GPU: parameters, FLOPs per network call, and the peak
memory of one training step and of one sampling batch, plus the largest batch that fits a card.

The network is built and run on *fake tensors* (`torch._subclasses.FakeTensorMode`: shapes,
dtypes and strides, no data), so a 160 x 192 x 160 model is traced in seconds on a laptop. A
dispatch mode (`LiveBytes`) follows every storage the traced ops allocate and frees it when
Python drops it, so the peak it reports is the peak of live tensors in the real program order
(forward, autograd's saved tensors, backward, gradients, optimizer state). Mixed precision is
traced with the CPU's bf16 autocast, which casts the same op families as CUDA's (convolutions and
matrix products to bf16; GroupNorm, softmax and reductions stay fp32).

What the estimate leaves out (covered by `headroom`): the CUDA context (about 0.5-1 GiB outside
PyTorch's allocator), cuDNN workspaces and the caching allocator's fragmentation. On the CPU the
traced peak agrees with torch.profiler's measured allocations within a few percent
(tests/forecast/test_planner.py).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from forecast.config import ForecastConfig

GiB = 2**30
FP32 = 4


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage allocated by ops run inside the mode that are still alive; `peak` is
    the largest value seen. Storages that existed before entering are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.current -= n

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = int(st.nbytes())
        self._seen[st] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, n)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _fake_mode():  # noqa: ANN202
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=False)


def _with_arms(cfg: ForecastConfig) -> ForecastConfig:
    return cfg if cfg.arms is not None else cfg.with_(arms=("arm_a", "arm_b", "arm_c", "arm_d"))


def _build(cfg: ForecastConfig, *, training: bool) -> torch.nn.Module:
    from forecast.model import NET2Denoiser

    model = NET2Denoiser(cfg)
    return model.train(training)


def _inputs(cfg: ForecastConfig, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(rows, 1, *cfg.shape)
    cond = torch.randn(rows, cfg.in_channels - 1, *cfg.shape)
    t = torch.randint(0, cfg.num_train_timesteps, (rows,))
    labels = torch.zeros(rows, cfg.num_classes)
    labels[:, 1] = 1.0
    return x, cond, t, labels


def count_parameters(cfg: ForecastConfig) -> int:
    """Trainable parameters of the denoiser (built on fake tensors)."""
    with _fake_mode():
        model = _build(_with_arms(cfg), training=False)
        return sum(p.numel() for p in model.parameters())


def forward_flops(cfg: ForecastConfig, rows: int = 1) -> int:
    """FLOPs (multiply-add = 2) of one network call on `rows` members (torch.utils.flop_counter).
    Attention counts its two matrix products whichever kernel runs it."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003 - flop_counter's protocol
        return sdpa_flop_count(q, k, v)

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    cfg = _with_arms(cfg)
    with _fake_mode():
        model = _build(cfg, training=False)
        x, cond, t, labels = _inputs(cfg, rows)
        counter = FlopCounterMode(display=False, custom_mapping=custom)
        with torch.no_grad(), counter:
            model(x, cond, t, labels)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one program: `static` (resident before it starts: weights, EMA, optimizer
    state) plus `traced` (the peak of what the traced ops allocate)."""

    what: str
    batch: int
    precision: str
    checkpointing: bool
    static: int
    traced: int
    max_rows: int | None = None  # sampling: rows per network call (None: all 2 x batch at once)

    @property
    def peak(self) -> int:
        return self.static + self.traced


def _traceable_loss(model: torch.nn.Module, x0: torch.Tensor, cond: torch.Tensor, labels: torch.Tensor,
                    cfg: ForecastConfig) -> torch.Tensor:
    """`forecast.diffusion.diffusion_loss` with the same tensors allocated, minus its one
    data-dependent branch (which rows drop their arm label), so fake tensors can trace it."""
    from forecast.diffusion import noised_loss

    b = x0.shape[0]
    noise = torch.randn(x0.shape)
    labels = labels.clone()
    shape = (b,) + (1,) * (x0.ndim - 1)
    t = torch.randint(0, cfg.num_train_timesteps, (b,))
    a = torch.rand(cfg.num_train_timesteps, dtype=torch.float64).to(torch.float32)[t].view(shape)  # alpha-bar (values irrelevant)
    return noised_loss(model, x0, noise, a, cond, t, labels, cfg)


def training_peak(cfg: ForecastConfig, micro_batch: int, *, bf16: bool = True, checkpointing: bool | None = None,
                  accumulation: int | None = None, ddp: bool = False) -> MemoryEstimate:
    """Peak memory of one optimizer step on one device: `micro_batch` members per network call,
    `accumulation` micro-batches (default: the config's), AdamW (foreach, as on CUDA) and the
    loss of `forecast.diffusion`. Static: weights + EMA copy (fp32), plus one gradient copy for DDP's
    buckets when `ddp`. Traced: a warm step (optimizer state exists), so Adam's moments, gradients,
    saved activations and temporaries are all in the trace."""
    from forecast.diffusion import to_signed

    ck = cfg.activation_checkpointing if checkpointing is None else checkpointing
    acc = cfg.grad_accumulation if accumulation is None else accumulation
    cfg = _with_arms(cfg).with_(activation_checkpointing=ck, batch_size=micro_batch * acc, grad_accumulation=acc)
    with _fake_mode():
        model = _build(cfg, training=True)
        n = sum(p.numel() * p.element_size() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, foreach=True)
        for p in model.parameters():  # optimizer state as after the first step
            opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        tracker = LiveBytes()
        with tracker:
            for _ in range(acc):
                _, cond, _, labels = _inputs(cfg, micro_batch)
                target = torch.rand(micro_batch, 1, *cfg.shape)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = _traceable_loss(model, to_signed(target), cond, labels, cfg)
                (loss / acc).backward()
                del loss, cond, target, labels
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        static = n * (1 + 1 + 2) + (n if ddp else 0)  # weights, EMA, Adam's two moments (made before the trace)
    return MemoryEstimate("training", micro_batch, "bf16" if bf16 else "fp32", ck, static, tracker.peak)


def sampling_peak(cfg: ForecastConfig, members: int, *, guided: bool = True, bf16: bool = True,
                  max_rows: int | None = None) -> MemoryEstimate:
    """Peak memory of one sampling step on `members` ensemble members (2 x members rows when
    guided), as `forecast.ensemble.sample_patient` runs it: the member batch, the guidance pair
    concatenated, the network under autocast on at most `max_rows` rows per call, no gradients.
    Static: the weights (fp32)."""
    from forecast.sampler import _guided, chunked_rows

    cfg = _with_arms(cfg).with_(activation_checkpointing=False)
    with _fake_mode():
        model = _build(cfg, training=False)
        static = sum(p.numel() * p.element_size() for p in model.parameters())
        tracker = LiveBytes()
        with tracker, torch.no_grad():
            c = torch.randn(cfg.in_channels - 1, *cfg.shape)
            cond = c.unsqueeze(0).expand(members, *c.shape)
            x, _, t, labels = _inputs(cfg, members)

            def denoise(xx: torch.Tensor, cc: torch.Tensor, tt: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return model(xx, cc, tt, lab)

            out = _guided(chunked_rows(denoise, max_rows), x, cond, t, labels, 2.0 if guided else 1.0).float()
            x0 = (x - out).clamp(-1, 1)  # the sampler's update holds a few (B, 1, X, Y, Z) fp32 tensors
            del out, x0
    return MemoryEstimate("sampling", members, "bf16" if bf16 else "fp32", False, static, tracker.peak, max_rows)


def memory_budget(gpu_gib: float | None, headroom: float) -> int | None:
    """Bytes a plan may use on a device of `gpu_gib` GiB, keeping the `headroom` share free (None without a device)."""
    return None if gpu_gib is None else int(gpu_gib * GiB * (1 - headroom))


def largest_fitting(estimate: Callable[[int], MemoryEstimate], budget: int, *, upper: int = 256) -> tuple[int, MemoryEstimate | None]:
    """The largest batch b with estimate(b).peak <= budget (0 if none): peaks are affine in b, so
    two traces give the line; the guess is then checked by tracing it (and stepped down if over)."""
    e1 = estimate(1)
    if e1.peak > budget:
        return 0, None
    e2 = estimate(2)
    slope = max(e2.peak - e1.peak, 1)
    guess = min(upper, max(1, int((budget - e1.peak) // slope) + 1))
    if guess <= 2:
        return (2, e2) if e2.peak <= budget else (1, e1)
    while guess > 2:
        e = estimate(guess)
        if e.peak <= budget:
            return guess, e
        guess -= max(1, math.ceil((e.peak - budget) / slope))
    return (2, e2) if e2.peak <= budget else (1, e1)


@dataclass
class Plan:
    """What one configuration costs: parameters, FLOPs per network call, memory rows, the largest
    batches that fit `gpu_gib` (usable = gpu_gib x (1 - headroom))."""

    config: str
    shape: tuple[int, ...]
    parameters: int
    flops_per_member: int
    gpu_gib: float | None
    headroom: float
    rows: list[MemoryEstimate] = field(default_factory=list)
    largest: dict[str, int] = field(default_factory=dict)
    config_batch: dict[str, int] = field(default_factory=dict)

    @property
    def budget(self) -> int | None:
        return memory_budget(self.gpu_gib, self.headroom)

    def to_frame(self) -> pd.DataFrame:
        """One row per estimate: what, batch (members per call), precision, checkpointing, GiB, fits."""
        recs = []
        for r in self.rows:
            recs.append({
                "what": r.what, "batch": r.batch, "rows_per_call": (r.max_rows or 2 * r.batch) if r.what == "sampling" else r.batch,
                "precision": r.precision, "checkpointing": r.checkpointing,
                "static_gib": r.static / GiB, "traced_gib": r.traced / GiB, "peak_gib": r.peak / GiB,
                "fits": None if self.budget is None else r.peak <= self.budget,
            })
        return pd.DataFrame(recs)

    def summary(self) -> str:
        lines = [
            f"config {self.config}: shape {' x '.join(map(str, self.shape))}, {self.parameters / 1e6:.1f} M parameters",
            f"forward FLOPs per member per network call: {self.flops_per_member / 1e12:.2f} TFLOP "
            f"(training step ~3x, ~4x with checkpointing; guided sampling 2 calls per member per step)",
            "peak memory per device (estimated on fake tensors; GiB = 2^30 bytes; excludes the CUDA context and cuDNN workspaces;",
            "  on the CPU these estimates ran 2-19% under the measured peak, bench/RESULTS.md):",
        ]
        budget = self.budget
        for r in self.rows:
            tag = "" if budget is None else ("  fits" if r.peak <= budget else "  DOES NOT FIT")
            rows = f"{r.batch} members x 2 (guidance) rows" if r.what == "sampling" else f"micro-batch {r.batch}"
            if r.max_rows:
                rows = f"{r.batch} members, {r.max_rows} rows/call"
            ck = ", checkpointing" if r.checkpointing else ""
            lines.append(f"  {r.what:9s} {rows:28s} {r.precision}{ck:15s} {r.peak / GiB:8.1f} GiB{tag}")
        if budget is not None:
            lines.append(f"budget: {self.gpu_gib:g} GiB x (1 - {self.headroom:g} headroom) = {budget / GiB:.1f} GiB")
            for k, v in self.largest.items():
                lines.append(f"  largest {k}: {v}")
        for k, v in self.config_batch.items():
            lines.append(f"  config {k}: {v}")
        return "\n".join(lines)


def plan(cfg: ForecastConfig, *, batch_size: int | None = None, sample_members: int = 8, gpu_gib: float | None = None,
         headroom: float = 0.1, bf16: bool = True, search: bool = True) -> Plan:
    """Estimate a config's costs. batch_size: training micro-batch per device (default: the config's
    batch_size / grad_accumulation); sample_members: members per sampling call (each with its
    guidance pair). With `gpu_gib` (and `search`), also the largest micro-batch (with and without
    checkpointing) and the largest sampling member batch that fit."""
    micro = batch_size if batch_size is not None else cfg.batch_size // cfg.grad_accumulation
    p = Plan(cfg.name, tuple(cfg.shape), count_parameters(cfg), forward_flops(cfg, 1), gpu_gib, headroom)
    prec = "bf16" if bf16 else "fp32"
    for ck in (False, True):
        p.rows.append(training_peak(cfg, micro, bf16=bf16, checkpointing=ck, accumulation=1))
    p.rows.append(sampling_peak(cfg, sample_members, bf16=bf16))
    p.rows.append(sampling_peak(cfg, sample_members, bf16=bf16, max_rows=sample_members))
    p.config_batch = {"training": f"global batch {cfg.batch_size} = micro-batch {cfg.batch_size // cfg.grad_accumulation} x "
                                  f"{cfg.grad_accumulation} accumulation on one device (N ranks: micro-batch {cfg.batch_size} / (N x accumulation))",
                      "checkpointing": str(cfg.activation_checkpointing), "flash attention": str(cfg.flash_attention)}
    if gpu_gib is not None and search:
        budget = p.budget or 0
        for ck in (False, True):
            n, _ = largest_fitting(lambda b, ck=ck: training_peak(cfg, b, bf16=bf16, checkpointing=ck, accumulation=1), budget)
            p.largest[f"training micro-batch ({prec}{', checkpointing' if ck else ''})"] = n
        n, _ = largest_fitting(lambda b: sampling_peak(cfg, b, bf16=bf16), budget)
        p.largest[f"sampling members with guidance, one call ({prec})"] = n
    return p


__all__ = ["LiveBytes", "MemoryEstimate", "Plan", "count_parameters", "forward_flops", "largest_fitting", "memory_budget", "plan",
           "sampling_peak", "training_peak"]
