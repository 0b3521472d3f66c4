"""`mseval demo --train-steps`: the diffusion demo trains a micro network on one trial and reports
held-out forecasts of another, reproducibly. Its own module (two full demos) so that
`--dist loadscope` can run it beside the other demo tests. The micro network works at 24^3, so the
demo simulates both trials at 24^3 (a sample costs under half of one at 32^3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mseval.demo import run_demo
from test_demo import _micro_diffusion

SHAPE = (24, 24, 24)


@pytest.fixture(scope="module")
def steps_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One diffusion demo with training (a micro network at 24^3, 3 steps, seed 3) shared by the held-out and
    the reproducibility tests: (its folder, what run_demo returned)."""
    root = tmp_path_factory.mktemp("steps_demo")
    micro, fast = _micro_diffusion(root, SHAPE)
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
    assert info["evaluation_seed"] == 4 and (demo / "train_cohort" / "manifest.csv").is_file() and info["shape"] == list(SHAPE)
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

    micro, fast = _micro_diffusion(tmp_path, SHAPE)
    info = run_demo(tmp_path / "b", "diffusion", patients_per_arm=2, samples=2, seed=3, workers=1, train_steps=3,
                    config=str(micro), sample_steps=2, report_settings=fast)
    assert info["training"]["steps"] == 3
    runs = []
    for folder in (steps_demo[0], tmp_path / "b"):
        index = pd.read_parquet(folder / "forecasts" / "index.parquet").sort_values(["patient_id", "arm"])
        runs.append([np.asarray(nib.load(folder / "forecasts" / p).dataobj) for p in index["path"]])
    assert len(runs[0]) == 12 * 6
    assert all(np.array_equal(x, y) for x, y in zip(*runs))
