"""`mseval demo` end to end on a tiny trial: every stage runs and the report is where it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mseval.errors import InputError
from mseval.demo import run_demo


def test_small_demo_writes_a_report(tmp_path):
    said: list[str] = []
    from reports.builder import ReportSettings

    fast = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=2, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    info = run_demo(tmp_path / "demo", "oracle", patients_per_arm=2, shape=(32, 38, 32), samples=2, seed=1, workers=1, report_settings=fast, say=said.append)
    html = info["report_html"]
    assert html.is_file() and html.read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "demo" / "cohort" / "manifest.csv").is_file() and (tmp_path / "demo" / "forecasts" / "store.json").is_file()
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert demo["forecaster"] == "oracle" and demo["timings_s"]["total_s"] > 0
    assert any("1/3" in m for m in said) and any("3/3" in m for m in said)
    # issue 22: observed effects only in the primary table; the oracle learned from no trial, and the projections say so
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    primary_head = md.split("## Primary endpoint: NET2 lesion rate ratios")[1].split("\n\n")[1].splitlines()[0]
    assert "Forecast" not in primary_head and "Counterfactual" not in primary_head
    assert "## Model-based projections" in md and "simulated forecaster, which learned from no trial" in md


def _micro_diffusion(tmp_path, shape=(32, 32, 32)):
    """(path of a micro diffusion config at `shape` that trains in seconds, fast report settings)."""
    from forecast.config import ForecastConfig
    from reports.builder import ReportSettings

    micro = ForecastConfig.load("tiny").with_(name="micro", shape=tuple(shape), channels=(8, 8, 16), attention_levels=(False, False, False),
                                              num_head_channels=8, batch_size=2, checkpoint_every=1000)
    micro.save(tmp_path / "micro.json")
    return tmp_path / "micro.json", ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))


def test_diffusion_training_stops_at_its_wall_clock_budget(tiny_cohort: Path, tmp_path: Path) -> None:
    """--minutes without --train-steps: training stops when the budget is spent (at least one step),
    checkpoints, and every patient is still sampled under every arm; the summary says 'minutes'."""
    import pandas as pd

    from mseval.demo import _diffusion_forecasts

    micro, _ = _micro_diffusion(tmp_path)
    training = _diffusion_forecasts(tiny_cohort, tiny_cohort, tmp_path / "fc", 2, 1, 0.05, checkpoint=tmp_path / "ckpt", config=str(micro),
                                    sample_steps=1, threads=1)  # one DDIM step: the budget is what is tested
    assert training["budget"] == "minutes" and training["steps"] >= 1 and training["minutes"] >= 0.05
    assert len(pd.read_parquet(tmp_path / "fc" / "index.parquet")) == 12 * 6


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a demo"):
        run_demo(tmp_path, "oracle", patients_per_arm=2, shape=(32, 38, 32), samples=2)
    assert (tmp_path / "precious.txt").exists()
