"""The planner's memory model (fake tensors, no data) against what the CPU really allocates
(torch.profiler's allocation events), and its FLOP and parameter counts against direct counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from forecast.config import ForecastConfig
from forecast.diffusion import alphas_cumprod, diffusion_loss, to_signed
from forecast.model import NET2Denoiser, arm_weights, count_parameters
from forecast.planner import count_parameters as planned_parameters
from forecast.planner import forward_flops, largest_fitting, plan, sampling_peak, training_peak
from forecast.sampler import _guided

NET = {"channels": (8, 16, 32), "attention_levels": (False, False, True), "num_head_channels": 8, "norm_num_groups": 8,
       "flash_attention": True}
ARMS = ("arm_a", "arm_b", "arm_c", "arm_d")  # the planner's stand-in arms (4 classes + 'no arm')


def _cfg(**kw) -> ForecastConfig:
    return ForecastConfig(name="plan", shape=(32, 32, 32), arms=ARMS, **(NET | kw))


def _measured_peak(run: Callable[[], None], trace: Path) -> int:
    """Peak of the running sum of allocations minus frees that torch.profiler records while `run` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    prof.export_chrome_trace(str(trace))
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    events.sort(key=lambda e: e["ts"])
    live = peak = 0
    for e in events:
        live += int(e["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def _real_training_step(cfg: ForecastConfig, batch: int, bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = NET2Denoiser(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    acp = alphas_cumprod(cfg)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        cond = torch.randn(batch, cfg.in_channels - 1, *cfg.shape)
        target = (torch.rand(batch, 1, *cfg.shape) > 0.9).float()
        labels = arm_weights(cfg, [ARMS[0]] * batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, to_signed(target), cond, labels, cfg, acp, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # optimizer state exists from here on, as in the planner's warm step
    return step


@pytest.mark.parametrize(("checkpointing", "bf16"), [(False, False), (True, False), (False, True)])
def test_training_peak_matches_the_cpu_within_20_percent(tmp_path, checkpointing, bf16):
    cfg = _cfg(activation_checkpointing=checkpointing)
    measured = _measured_peak(_real_training_step(cfg, 2, bf16), tmp_path / "trace.json")
    planned = training_peak(cfg, 2, bf16=bf16, accumulation=1).traced
    assert abs(planned - measured) <= 0.2 * measured, (planned, measured)


def test_checkpointing_lowers_the_planned_training_peak():
    cfg = _cfg()
    assert training_peak(cfg, 2, checkpointing=True).traced < 0.8 * training_peak(cfg, 2, checkpointing=False).traced


def test_sampling_peak_matches_the_cpu_within_20_percent(tmp_path):
    cfg = _cfg()
    torch.manual_seed(0)
    model = NET2Denoiser(cfg).eval()
    members = 3

    def call() -> None:
        with torch.no_grad():
            c = torch.randn(cfg.in_channels - 1, *cfg.shape)
            cond = c.unsqueeze(0).expand(members, *c.shape)
            x = torch.randn(members, 1, *cfg.shape)
            t = torch.full((members,), 500)
            out = _guided(lambda *a: model(*a), x, cond, t, arm_weights(cfg, [ARMS[1]] * members), 2.0).float()
            del out

    measured = _measured_peak(call, tmp_path / "trace.json")
    planned = sampling_peak(cfg, members, bf16=False).traced
    assert abs(planned - measured) <= 0.2 * measured, (planned, measured)


def test_parameters_and_flops_match_direct_counts():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _cfg(flash_attention=False)  # the explicit attention is plain matmuls the counter sees
    model = NET2Denoiser(cfg).eval()
    assert planned_parameters(cfg) == count_parameters(model)
    x = torch.randn(1, 1, *cfg.shape)
    cond = torch.randn(1, cfg.in_channels - 1, *cfg.shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, cond, torch.tensor([3]), arm_weights(cfg, [ARMS[0]]))
    direct = counter.get_total_flops()
    assert forward_flops(cfg) == direct
    assert forward_flops(_cfg()) == pytest.approx(direct, rel=1e-3)  # flash attention counts the same products


def test_largest_fitting_is_the_largest_batch_under_the_budget():
    from forecast.planner import MemoryEstimate

    def est(b: int) -> MemoryEstimate:
        return MemoryEstimate("training", b, "bf16", False, 100, 37 * b + 5 * (b > 6))

    n, e = largest_fitting(est, 100 + 37 * 9 + 5)
    assert n == 9 and e is not None and e.peak <= 100 + 37 * 9 + 5
    assert largest_fitting(est, 100 + 37 * 7)[0] == 6  # the jump at 7 is seen by tracing the guess
    assert largest_fitting(est, 120)[0] == 0


def test_plan_reports_rows_and_the_largest_batches():
    p = plan(_cfg(), batch_size=2, sample_members=2, gpu_gib=0.25)
    frame = p.to_frame()
    assert list(frame["what"]) == ["training", "training", "sampling", "sampling"]
    assert frame["peak_gib"].iloc[3] < frame["peak_gib"].iloc[2]  # 2 rows per call instead of 4
    assert set(p.largest) and all(v >= 1 for v in p.largest.values())
    text = p.summary()
    assert "M parameters" in text and "TFLOP" in text and "largest" in text
