"""The foreground-weighted MSE (`fg_weight`): weights, the plain-MSE default, and that it counts
errors on the sparse foreground more than the same errors on the background."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forecast.config import ForecastConfig
from forecast.diffusion import diffusion_loss, foreground_weights, weighted_mse


def _target() -> torch.Tensor:
    x0 = -torch.ones(1, 1, 8, 8, 8)
    x0[0, 0, 4, 4, 4] = 1.0  # one foreground voxel
    return x0


def test_weights_cover_the_foreground_and_its_26_neighbourhood():
    w = foreground_weights(_target(), 9.0)
    assert w[0, 0, 4, 4, 4] == 10.0 and w[0, 0, 3, 5, 3] == 10.0
    assert w[0, 0, 2, 4, 4] == 1.0
    assert int((w == 10.0).sum()) == 27


def test_zero_weight_is_the_plain_mse():
    x0, out = _target(), torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(weighted_mse(out, x0, x0, 0.0), F.mse_loss(out, x0))


def test_foreground_errors_weigh_more():
    x0 = _target()
    miss_fg = x0.clone()
    miss_fg[0, 0, 4, 4, 4] = -1.0  # predicts background on the lesion
    miss_bg = x0.clone()
    miss_bg[0, 0, 0, 0, 0] = 1.0  # same size error far from it
    assert F.mse_loss(miss_fg, x0) == F.mse_loss(miss_bg, x0)
    assert weighted_mse(miss_fg, x0, x0, 20.0) > 10 * weighted_mse(miss_bg, x0, x0, 20.0)


def test_diffusion_loss_with_fg_weight_is_finite_and_differs():
    cfg = ForecastConfig(arms=("a",), shape=(8, 8, 8), channels=(8, 8, 16), attention_levels=(False, False, False))

    def net(x, c, t, lab):  # predicts background (x0 = -1) everywhere
        return -torch.ones_like(x)

    x0 = _target()
    cond = torch.zeros(1, cfg.in_channels - 1, 8, 8, 8)
    lab = torch.tensor([[0.0, 1.0]])
    acp = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    plain = diffusion_loss(net, x0, cond, lab, cfg, acp, torch.Generator().manual_seed(0))
    weighted = diffusion_loss(net, x0, cond, lab, cfg.with_(fg_weight=30.0), acp, torch.Generator().manual_seed(0))
    assert torch.isfinite(weighted) and weighted > plain
