"""The image count model's plan (`forecast.image_count_planner`): traced peaks against what torch.profiler measures on
the CPU for the real training step (`loss_terms`, backward, Adam) and the real forecast call, and the plan's search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forecast.image_count import ImageCountNet, loss_terms
from forecast.image_count_planner import DEFAULT_NET, _batch, forecast_peak, plan_image_count, training_peak
from forecast.planner import GiB
from tests.forecast.test_planner import _measured_peak

SHAPE = (24, 24, 24)


@pytest.fixture(autouse=True)
def two_threads():  # noqa: ANN201
    """With one thread, PyTorch's CPU kernel for the grouped (blur) convolutions takes an im2col path whose column buffer
    (aten::resize_ inside the kernel, about 5 MB a call here) no traced op returns -- a kernel workspace, which the plan
    excludes as it excludes cuDNN's; with two (this machine's cores) the kernel needs none."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _real(batch: int) -> tuple[ImageCountNet, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = ImageCountNet(7, 6, 3, **DEFAULT_NET)
    b = _batch(SHAPE, batch, 7, 6, 3, 10)
    b["counts"] = torch.cumsum(torch.randint(0, 3, (batch, 3)).float(), 1)
    return net, b


def test_training_peak_matches_the_cpu_within_20_percent(tmp_path: Path) -> None:
    net, b = _real(4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)

    def step() -> None:
        c, loc, _, _ = loss_terms(net, b)
        ((c + loc) / 4).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm: Adam's state exists, as in the trace
    measured = _measured_peak(step, tmp_path / "t.json")
    planned = training_peak(SHAPE, 4).traced
    assert abs(planned - measured) <= 0.2 * measured, (planned, measured)


def test_forecast_peak_matches_the_cpu_within_20_percent(tmp_path: Path) -> None:
    net, b = _real(1)
    net.eval()

    def call() -> None:
        with torch.no_grad():
            net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"])

    measured = _measured_peak(call, tmp_path / "f.json")
    planned = forecast_peak(SHAPE).traced
    assert abs(planned - measured) <= 0.2 * measured, (planned, measured)


def test_the_plan_finds_the_largest_batch_under_the_budget_and_counts_the_host_memory() -> None:
    p = plan_image_count(SHAPE, batch=2, gpu_gib=0.25, headroom=0.0, train_patients=100)
    assert p.parameters == sum(t.numel() for t in ImageCountNet(7, 6, 3, **DEFAULT_NET).parameters())
    n = p.largest_batch
    assert n >= 1 and training_peak(SHAPE, n).peak <= 0.25 * GiB < training_peak(SHAPE, n + 1).peak
    assert p.host_per_patient == 24**3 * (7 * 4 + 1)
    text = p.summary()
    assert "largest training batch" in text and "fits" in text and "cache" in text
    assert list(p.to_frame()["what"]) == ["training", "forecast"]


def test_the_plan_command_prints_the_image_count_plan(cli) -> None:  # noqa: ANN001 - the CLI runner fixture
    r = cli("forecast", "plan", "--config", "tiny", "--model", "image-count", "--batch-size", "2", "--gpu-memory", "1")
    assert r.code == 0, r.err
    assert "image count model" in r.out and "largest training batch" in r.out and "fits" in r.out
