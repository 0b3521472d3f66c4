"""The denoiser: channel concatenation, arm embedding with a 'no arm' class, blends."""

from __future__ import annotations

import torch

from forecast.config import ForecastConfig
from forecast.model import NET2Denoiser, arm_weights, blend_weights

TEST_NET = {"channels": (8, 8, 16), "attention_levels": (False, False, True), "num_head_channels": 8, "norm_num_groups": 8}


def _model(**kw) -> NET2Denoiser:
    torch.manual_seed(0)
    return NET2Denoiser(ForecastConfig(arms=("placebo", "dmf"), shape=(16, 16, 16), **(TEST_NET | kw))).eval()


def test_one_hot_weights_equal_the_embedding_lookup():
    m = _model()
    emb = m.unet.class_embedding
    w = arm_weights(m.cfg, ["placebo", None, "dmf"])
    assert torch.equal(emb(w), emb(torch.tensor([1, 0, 2])))


def test_blend_is_the_mix_of_two_arm_embeddings():
    m = _model()
    emb = m.unet.class_embedding
    w = blend_weights(m.cfg, "placebo", "dmf", 0.25)
    torch.testing.assert_close(emb(w[None])[0], 0.75 * emb.weight[1] + 0.25 * emb.weight[2])


def test_forward_shape_and_arm_changes_output():
    m = _model()
    x = torch.randn(2, 1, 16, 16, 16)
    cond = torch.randn(2, m.cfg.in_channels - 1, 16, 16, 16)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        for p in m.parameters():  # MONAI zero-initializes the output convolution
            p.add_(0.1 * torch.randn_like(p))
        a = m(x, cond, t, arm_weights(m.cfg, ["placebo", "placebo"]))
        b = m(x, cond, t, arm_weights(m.cfg, ["dmf", "dmf"]))
    assert a.shape == (2, 1, 16, 16, 16)
    assert not torch.equal(a, b)


def test_ablation_drops_input_channels():
    m = _model(inputs=("flair", "t2_lesion_mask"))
    assert m.unet.conv_in.conv.in_channels == 3
