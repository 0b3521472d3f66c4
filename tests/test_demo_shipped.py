"""`mseval demo` with the shipped checkpoint (the default diffusion demo): it samples a trial it never
saw. Its own module (the costliest demo: 144 network samples of the shipped model) so that
`--dist loadscope` can run it beside the other demo tests."""

from __future__ import annotations

import json

import pytest

from mseval.demo import run_demo
from mseval.errors import InputError


def test_demo_samples_the_shipped_checkpoint_on_a_trial_it_never_saw(tmp_path):
    """The default diffusion demo: no training; the shipped checkpoint (trained on the seed-2030 pool,
    guidance chosen on the seed-2028 validation trial) samples a new trial; the report says held-out
    and names the checkpoint."""
    import pandas as pd

    from forecast.checkpoint import load_checkpoint
    from forecast.release import SHIPPED_CHECKPOINT

    from reports.builder import ReportSettings

    fast = ReportSettings(n_boot=20, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    info = run_demo(tmp_path / "demo", "diffusion", patients_per_arm=2, samples=2, seed=1, workers=1, report_settings=fast)
    assert info["training"]["budget"] == "shipped" and info["training"]["checkpoint_id"] == ckpt.id
    assert not (tmp_path / "demo" / "train_cohort").exists() and not (tmp_path / "demo" / "checkpoint").exists()
    summary = json.loads((tmp_path / "demo" / "report" / "summary.json").read_text())
    assert summary["provenance"]["status"] == "held-out"
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert ckpt.id in md and "never saw" in md
    index = pd.read_parquet(tmp_path / "demo" / "forecasts" / "index.parquet")
    assert len(index) == 12 * 6 and (index["checkpoint"] == ckpt.id).all()


def test_demo_refuses_a_checkpoint_with_training(tmp_path):
    with pytest.raises(InputError, match="--checkpoint"):
        run_demo(tmp_path / "d", "diffusion", patients_per_arm=2, samples=2, train=True, checkpoint=tmp_path / "x")
