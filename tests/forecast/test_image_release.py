"""`make checkpoint`'s image half (`forecast.image_release`), run small: two trials simulated, the image count model
trained, the validation members rendered once with their probabilities kept, the decoder's threshold chosen by the fair
CRPS of the observed last-visit volume, and `image-render --forecaster` rendering with what was chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GRID = (0.3, 0.5, 0.7)


@pytest.fixture(scope="module")
def built(renderer: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from forecast.image_release import build_image

    work = tmp_path_factory.mktemp("image_release")
    render = build_image(work / "out", work, renderer=renderer, train_per_arm=2, train_seed=11, validation_per_arm=1, validation_seed=12,
                         shape=(20, 20, 20), epochs=2, net={"hidden": 4, "count_hidden": 3, "count_trunk": "gated"},
                         normalization="brain_z", val_fraction=0.5, tune_patients=6, tune_samples=3, grid=GRID, workers=1, threads=1)
    return work, work / "out", render


def test_the_export_holds_the_model_and_the_threshold_chosen_on_validation(built: tuple[Path, Path, dict], renderer: Path) -> None:
    from forecast.checkpoint import load_checkpoint
    from forecast.image_count_checkpoint import load_image_count
    from forecast.image_count_tuning import size_choice
    from forecast.image_release import read_render_settings

    work, out, render = built
    _, _, digest = load_image_count(out)
    assert digest == load_image_count(work / "image_count")[2]  # the trained model, exported unchanged
    doc = read_render_settings(out)
    assert doc == json.loads((out / "render.json").read_text()) and doc["mask_threshold"] == render["mask_threshold"]
    size = {float(t): v for t, v in doc["tuned_on"]["size_ratio"].items()}
    crps = {float(t): v for t, v in doc["tuned_on"]["crps_mm3"].items()}
    assert sorted(size) == sorted(crps) == list(GRID) and doc["mask_threshold"] == size_choice(size)
    assert size[GRID[0]] > size[GRID[-1]]  # the threshold sets the size: a higher one, smaller lesions
    assert doc["renderer"] == load_checkpoint(renderer).id and doc["trajectories_checkpoint"] == digest[:12]
    assert digest[:12] in doc["description"] and doc["renderer"] in doc["description"]
    assert doc["tuned_on"]["patients"] and "seed 12" in doc["tuned_on"]["cohort"] and "seed 11" in doc["trained_on"]


def test_rethresholding_kept_probabilities_equals_rendering_at_that_threshold(built: tuple[Path, Path, dict], renderer: Path,
                                                                              tmp_path: Path) -> None:
    """The criterion reads the members' saved probabilities at each threshold; a render at that threshold writes the same
    masks, so the threshold chosen is the one the forecaster's renders then use."""
    from forecast.image_count_render import render_trajectories
    from forecast.image_count_tuning import rendered_members
    from mseval.io.store import ForecastStore

    work, out, render = built
    tune = next(work.glob("image_tune_*"))
    t = GRID[0]
    render_trajectories(work / "validation", tune, renderer, tmp_path / "r", threshold=t)
    visits = ["w24", "w48", "w96"]
    seen = 0
    for r in rendered_members(next(tune.glob("render_*")), visits, t):
        for k, v in enumerate(visits):
            masks, _ = ForecastStore.open(tmp_path / "r" / v).block(r.patient_id, r.arm).masks()
            assert np.array_equal(masks, r.masks[k])
        seen += 1
    assert seen == 6


def test_a_second_build_reuses_the_work_and_gives_the_same_export(built: tuple[Path, Path, dict], renderer: Path) -> None:
    from forecast.image_release import build_image

    work, out, render = built
    weights = (work / "image_count" / "weights.pt").stat().st_mtime_ns
    again = build_image(out, work, renderer=renderer, train_per_arm=2, train_seed=11, validation_per_arm=1, validation_seed=12,
                        shape=(20, 20, 20), epochs=2, net={"hidden": 4, "count_hidden": 3, "count_trunk": "gated"},
                        normalization="brain_z", val_fraction=0.5, tune_patients=6, tune_samples=3, grid=GRID, workers=1, threads=1)
    assert (work / "image_count" / "weights.pt").stat().st_mtime_ns == weights  # not retrained
    assert {k: v for k, v in again.items() if k != "build_minutes"} == {k: v for k, v in render.items() if k != "build_minutes"}
    assert not out.with_name(out.name + ".partial").exists()


def test_image_render_takes_the_forecasters_threshold_and_refuses_a_mismatch(cli, built: tuple[Path, Path, dict], renderer: Path,
                                                                            visits_cohort: Path, tmp_path: Path) -> None:
    from mseval.io.store import ForecastStore

    work, out, render = built
    val = work / "validation"
    r = cli("forecast", "image-sample", val, out, "--out", tmp_path / "all", "--samples", "2", "--seed", "3")
    assert r.code == 0, r.err
    (tmp_path / "s").mkdir()
    for name in ("counts.csv", "lesions.csv"):  # two patients under one arm: enough to see the settings used
        t = pd.read_csv(tmp_path / "all" / name, dtype={"patient_id": str})
        t[t["patient_id"].isin(sorted(set(t["patient_id"]))[:2]) & (t["arm"] == "placebo")].to_csv(tmp_path / "s" / name, index=False)
    (tmp_path / "s" / "provenance.json").write_text((tmp_path / "all" / "provenance.json").read_text())
    r = cli("forecast", "image-render", val, tmp_path / "s", "--renderer", renderer, "--out", tmp_path / "r", "--forecaster", out)
    assert r.code == 0, r.err
    blocks = list(ForecastStore.open(tmp_path / "r" / "w96").blocks())
    assert blocks and all(b.sampler["threshold"] == render["mask_threshold"] and b.sampler["labels"] == "arm-count" for b in blocks)
    recorded = json.loads((tmp_path / "r" / "w96" / "provenance.json").read_text())["checkpoints"]  # what the threshold was chosen on
    assert recorded[render["trajectories_checkpoint"]]["tuned_on"] == render["tuned_on"] and len(recorded) == 2
    # samples drawn by another checkpoint, or a bare image-train folder: one line, exit 2, nothing written
    counts = pd.read_csv(tmp_path / "s" / "counts.csv")
    counts["checkpoint"] = "0123456789ab"
    (tmp_path / "other").mkdir()
    counts.to_csv(tmp_path / "other" / "counts.csv", index=False)
    (tmp_path / "other" / "lesions.csv").write_text((tmp_path / "s" / "lesions.csv").read_text())
    for args, words in ((("--forecaster", out), "not from the forecaster"), (("--forecaster", work / "image_count"), "render.json")):
        samples = tmp_path / ("other" if words.startswith("not") else "s")
        r = cli("forecast", "image-render", val, samples, "--renderer", renderer, "--out", tmp_path / "bad", *args)
        assert r.code == 2 and words in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not (tmp_path / "bad").exists()


def test_the_size_criterion_takes_the_ratio_nearest_one_in_log_and_the_lower_threshold_on_a_tie() -> None:
    from forecast.image_count_tuning import size_choice

    assert size_choice({0.5: 1.27, 0.6: 1.15, 0.7: 1.02, 0.8: 0.88}) == 0.7
    assert size_choice({0.5: 2.0, 0.6: 0.5}) == 0.5  # log 2 either way
    assert size_choice({0.5: 0.0, 0.9: 0.2}) == 0.9  # nothing rendered is never the closest
