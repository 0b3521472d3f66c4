"""`mseval demo` with the shipped image forecaster (the default demo): the image count model samples lesion trajectories
of a trial it never saw and the shipped decoder renders them at the threshold chosen for them on validation. Its own
module so that `--dist loadscope` can run it beside the other demo tests."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mseval.demo import run_demo
from mseval.errors import InputError
from mseval.io.store import ForecastStore

RENDER_STEPS = 1
"""DDIM steps of the test's renders (the decoder's own 6 cost most of the test's time; multi-step rendering of the
shipped weights is tested in tests/commands/test_forecast_image_cli.py and tests/forecast/test_image_release.py)."""


def test_the_default_demo_forecasts_with_the_shipped_image_forecaster(tmp_path, monkeypatch):
    """No training: the shipped image forecaster draws every patient's trajectories under every arm (coherent over
    W24/W48/W96), the shipped decoder renders them with the forecaster's tuned threshold and labels (one store per
    visit), and the report evaluates the last visit's store, held-out, naming both models and what they were tuned on.
    The demo runs unchanged except that rendering takes RENDER_STEPS DDIM steps."""
    import forecast.image_count_render
    from forecast.checkpoint import load_checkpoint
    from forecast.image_count_checkpoint import load_image_count
    from forecast.image_release import SHIPPED_IMAGE_CHECKPOINT, read_render_settings
    from forecast.release import SHIPPED_CHECKPOINT
    from reports.builder import ReportSettings

    fast = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    render = forecast.image_count_render.render_trajectories

    def fewer_steps(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        assert kw.get("steps") is None and kw.get("threshold") is None and kw.get("tuned") is not None  # the tuned settings
        return render(*args, **kw, steps=RENDER_STEPS)

    monkeypatch.setattr(forecast.image_count_render, "render_trajectories", fewer_steps)
    info = run_demo(tmp_path / "demo", patients_per_arm=2, samples=2, seed=1, workers=1, report_settings=fast)
    _, meta, digest = load_image_count(SHIPPED_IMAGE_CHECKPOINT)
    tuned, decoder = read_render_settings(SHIPPED_IMAGE_CHECKPOINT), load_checkpoint(SHIPPED_CHECKPOINT)
    assert info["forecaster"] == "image" and info["forecasts"] == f"forecasts/{meta.visits[-1]}"
    assert info["training"]["checkpoint_id"] == digest[:12] and info["training"]["renderer"] == decoder.id
    counts = pd.read_csv(tmp_path / "demo" / "trajectories" / "counts.csv")
    assert len(counts) == 12 * 6 * 2 * len(meta.visits)
    assert (counts.sort_values("scheduled_weeks").groupby(["patient_id", "arm", "member"])["net2"].diff().dropna() >= 0).all()
    for visit in meta.visits:
        index = pd.read_parquet(tmp_path / "demo" / "forecasts" / visit / "index.parquet")
        assert len(index) == 12 * 6
    block = ForecastStore.open(tmp_path / "demo" / "forecasts" / meta.visits[-1]).block("P001", meta.arms[0])
    assert block.sampler["threshold"] == tuned["mask_threshold"] and block.sampler["steps"] == RENDER_STEPS
    summary = json.loads((tmp_path / "demo" / "report" / "summary.json").read_text())
    assert summary["provenance"]["status"] == "held-out"
    md = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert digest[:12] in md and decoder.id in md and "neither model saw" in md and "seed 2028" in md


def test_the_image_demo_refuses_training_options_and_a_folder_that_is_not_a_forecaster(tmp_path):
    with pytest.raises(InputError, match="--forecaster diffusion"):
        run_demo(tmp_path / "d", "image", patients_per_arm=2, samples=2, train_steps=3)
    with pytest.raises(InputError, match="not found"):
        run_demo(tmp_path / "d", "image", patients_per_arm=2, samples=2, checkpoint=tmp_path / "x")
    import shutil

    from forecast.image_release import SHIPPED_IMAGE_CHECKPOINT

    bare = tmp_path / "bare"  # an image-train folder without the render settings `make checkpoint` adds
    shutil.copytree(SHIPPED_IMAGE_CHECKPOINT, bare)
    (bare / "render.json").unlink()
    with pytest.raises(InputError, match="render.json"):
        run_demo(tmp_path / "d", "image", patients_per_arm=2, samples=2, checkpoint=bare)
    assert not (tmp_path / "d").exists()  # refused before anything was simulated
