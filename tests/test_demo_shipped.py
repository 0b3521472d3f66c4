"""`mseval demo` with the shipped checkpoint (the default diffusion demo): it samples a trial it never
saw. Its own module (the costliest demo: 144 network samples of the shipped model) so that
`--dist loadscope` can run it beside the other demo tests."""

from __future__ import annotations

import json

import pytest

from mseval.demo import run_demo
from mseval.errors import InputError
from mseval.io.store import ForecastStore


SAMPLE_STEPS = 1
"""DDIM steps of the test's samples (the shipped config's 6 cost 144 x 6 network calls, most of the test's time; multi-step
sampling of the shipped weights is tested in tests/forecast/test_shipped_checkpoint.py and test_sampler.py)."""


def test_demo_samples_the_shipped_checkpoint_on_a_trial_it_never_saw(tmp_path, monkeypatch):
    """The default diffusion demo: no training; the shipped checkpoint (trained on the seed-2030 pool,
    guidance chosen on the seed-2028 validation trial) samples a new trial; the report says held-out
    and names the checkpoint. The demo runs unchanged except that its sampling takes SAMPLE_STEPS DDIM
    steps instead of the checkpoint's own (every other sampler setting is the checkpoint's): the
    shipped weights, count head and centre map still make every one of the 144 samples."""
    import pandas as pd

    import forecast.ensemble
    from forecast.checkpoint import load_checkpoint
    from forecast.release import SHIPPED_CHECKPOINT
    from forecast.sampler import SamplerSettings

    from reports.builder import ReportSettings

    fast = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    cfg, sample = ckpt.config, forecast.ensemble.forecast_cohort

    def fewer_steps(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        assert kw.get("settings") is None  # the demo samples at the checkpoint's settings
        return sample(*args, **kw, settings=SamplerSettings(cfg.sampler, SAMPLE_STEPS, cfg.guidance, cfg.clip_x0, cfg.count_tries))

    monkeypatch.setattr(forecast.ensemble, "forecast_cohort", fewer_steps)
    info = run_demo(tmp_path / "demo", "diffusion", patients_per_arm=2, samples=2, seed=1, workers=1, report_settings=fast)
    assert info["training"]["budget"] == "shipped" and info["training"]["checkpoint_id"] == ckpt.id
    assert not (tmp_path / "demo" / "train_cohort").exists() and not (tmp_path / "demo" / "checkpoint").exists()
    summary = json.loads((tmp_path / "demo" / "report" / "summary.json").read_text())
    assert summary["provenance"]["status"] == "held-out"
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert ckpt.id in md and "never saw" in md
    index = pd.read_parquet(tmp_path / "demo" / "forecasts" / "index.parquet")
    assert len(index) == 12 * 6 and (index["checkpoint"] == ckpt.id).all()
    block = ForecastStore.open(tmp_path / "demo" / "forecasts").block("P001", cfg.arms[0])
    assert block.sampler["steps"] == SAMPLE_STEPS and block.sampler["threshold"] == cfg.mask_threshold


def test_demo_refuses_a_checkpoint_with_training(tmp_path):
    with pytest.raises(InputError, match="--checkpoint"):
        run_demo(tmp_path / "d", "diffusion", patients_per_arm=2, samples=2, train=True, checkpoint=tmp_path / "x")
