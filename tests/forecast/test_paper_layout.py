"""The `paper` network (its channels, levels, attention layout, flash attention, checkpointing) at a
reduced grid trains and samples on the CPU. The grid is 16^3 (its four levels: 16, 8, 4 and 2 voxels,
attention at the last), not 160 x 192 x 160 (nor 64 x 80 x 64 or 32^3: too slow on the shared 2-core
test machine); everything else is the shipped config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forecast.config import ForecastConfig


def test_paper_layout_trains_and_samples_with_flash_attention_and_checkpointing(cohort16: Path, tmp_path: Path) -> None:
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings
    from forecast.train import train

    paper = ForecastConfig.load("paper")
    assert paper.flash_attention and paper.attention_levels == (False, False, False, True)
    cfg = paper.with_(shape=(16, 16, 16), steps=2, batch_size=2, grad_accumulation=2, activation_checkpointing=True,
                      checkpoint_every=2, augment=False)
    ckpt = train(cohort16, cfg, tmp_path / "ckpt", device="cpu")
    assert ckpt.step == 2 and all(np.isfinite(r["loss"]) for r in ckpt.log)
    assert ckpt.config.channels == (32, 64, 128, 256) and ckpt.config.activation_checkpointing
    assert ckpt.runtime["device"] == "cpu" and ckpt.runtime["grad_accumulation"] == 2
    moved = [k for k, v in ckpt.model.items() if v.is_floating_point() and not v.equal(ckpt.ema[k])]
    assert moved  # the weights changed (EMA lags them)
    store = forecast_cohort(cohort16, tmp_path / "ckpt", tmp_path / "fc", samples=2, arms=[ckpt.config.arms[0]],
                            settings=SamplerSettings("ddim", 1, 2.0), patients=["P001"], batch_size=2, device="cpu")
    masks, _ = store.block("P001", ckpt.config.arms[0]).masks()
    assert masks.shape == (2, 16, 16, 16) and set(np.unique(masks)) <= {0, 1}
