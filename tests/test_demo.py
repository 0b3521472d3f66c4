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

    fast = ReportSettings(n_boot=20, power_sims=2, figure_dpi=40, html_dpi=40, figure_formats=("png",))
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


def _micro_diffusion(tmp_path):
    """(path of a micro diffusion config that trains in seconds, fast report settings)."""
    from forecast.config import ForecastConfig
    from reports.builder import ReportSettings

    micro = ForecastConfig.load("tiny").with_(name="micro", channels=(8, 8, 16), attention_levels=(False, False, False), num_head_channels=8,
                                              batch_size=2, checkpoint_every=1000)
    micro.save(tmp_path / "micro.json")
    return tmp_path / "micro.json", ReportSettings(n_boot=20, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))


@pytest.fixture(scope="module")
def steps_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One diffusion demo with training (a micro network, 3 steps, seed 3) shared by the held-out and
    the reproducibility tests: (its folder, what run_demo returned)."""
    root = tmp_path_factory.mktemp("steps_demo")
    micro, fast = _micro_diffusion(root)
    info = run_demo(root / "a", "diffusion", patients_per_arm=2, samples=2, seed=3, workers=1, train_steps=3,
                    config=str(micro), sample_steps=2, report_settings=fast)
    return root / "a", info


def test_diffusion_demo_trains_on_one_trial_and_reports_held_out_forecasts_of_another(steps_demo: tuple[Path, dict]) -> None:
    """The diffusion path: training (a micro network, 3 steps) on one simulated trial, sampling every
    patient of a second trial under every arm, and a report that says the forecasts are held-out,
    even when the barely trained model forecasts no lesion (the forecast-based estimates are then
    flagged as not estimable, not an error)."""
    import pandas as pd

    demo, info = steps_demo
    assert info["report_html"].is_file() and info["training"]["steps"] == 3 and info["training"]["budget"] == "steps"
    assert info["evaluation_seed"] == 4 and (demo / "train_cohort" / "manifest.csv").is_file()
    summary = json.loads((demo / "report" / "summary.json").read_text())
    assert summary["provenance"]["status"] == "held-out"
    md = (demo / "report" / "report.md").read_text()
    assert "HELD-OUT" in md.split("## Primary endpoint")[0] and "train_cohort" in md
    ev = json.loads((demo / "report" / "results" / "evaluation" / "summary.json").read_text())
    eff = json.loads((demo / "report" / "results" / "effects" / "effects.json").read_text())
    assert ev["provenance"]["status"] == eff["provenance"]["status"] == "held-out"
    # issue 22: the projections sit beside the training trial's observed intervals, found through the provenance
    assert eff["training_trial"]["available"] and eff["training_trial"]["cohort"] == "train_cohort"
    assert "Training trial: observed NB2" in md.split("## Model-based projections")[1]
    store_index = pd.read_parquet(demo / "forecasts" / "index.parquet")
    assert len(store_index) == 12 * 6 and store_index["checkpoint"].str.startswith("micro@").all()
    assert (demo / "checkpoint" / "config.json").is_file()


def test_diffusion_demo_with_train_steps_is_reproducible(steps_demo: tuple[Path, dict], tmp_path: Path) -> None:
    """--train-steps replaces the time budget: a second run with the same seed trains the same steps
    and writes the same forecast masks as the shared run."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    micro, fast = _micro_diffusion(tmp_path)
    info = run_demo(tmp_path / "b", "diffusion", patients_per_arm=2, samples=2, seed=3, workers=1, train_steps=3,
                    config=str(micro), sample_steps=2, report_settings=fast)
    assert info["training"]["steps"] == 3
    runs = []
    for folder in (steps_demo[0], tmp_path / "b"):
        index = pd.read_parquet(folder / "forecasts" / "index.parquet").sort_values(["patient_id", "arm"])
        runs.append([np.asarray(nib.load(folder / "forecasts" / p).dataobj) for p in index["path"]])
    assert len(runs[0]) == 12 * 6
    assert all(np.array_equal(x, y) for x, y in zip(*runs))


def test_diffusion_training_stops_at_its_wall_clock_budget(tiny_cohort: Path, tmp_path: Path) -> None:
    """--minutes without --train-steps: training stops when the budget is spent (at least one step),
    checkpoints, and every patient is still sampled under every arm; the summary says 'minutes'."""
    import pandas as pd

    from mseval.demo import _diffusion_forecasts

    micro, _ = _micro_diffusion(tmp_path)
    training = _diffusion_forecasts(tiny_cohort, tiny_cohort, tmp_path / "fc", 2, 1, 0.05, checkpoint=tmp_path / "ckpt", config=str(micro),
                                    sample_steps=2, threads=1)
    assert training["budget"] == "minutes" and training["steps"] >= 1 and training["minutes"] >= 0.05
    assert len(pd.read_parquet(tmp_path / "fc" / "index.parquet")) == 12 * 6


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a demo"):
        run_demo(tmp_path, "oracle", patients_per_arm=2, shape=(32, 38, 32), samples=2)
    assert (tmp_path / "precious.txt").exists()


def test_demo_samples_the_shipped_checkpoint_on_a_trial_it_never_saw(tmp_path):
    """The default diffusion demo: no training; the shipped checkpoint (trained on the seed-2030 pool,
    guidance chosen on the seed-2028 validation trial) samples a new trial; the report says held-out
    and names the checkpoint."""
    import pandas as pd

    from forecast.checkpoint import load_checkpoint
    from forecast.release import SHIPPED_CHECKPOINT

    _, fast = _micro_diffusion(tmp_path)
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
