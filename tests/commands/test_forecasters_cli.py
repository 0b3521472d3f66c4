"""`mseval simulate-forecasts --kind nb2-bootstrap` and `mseval effects` with K forecasters: the
two-level variance end to end, and its bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mseval.cli import main


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("family")
    simulate_trial(root / "train_cohort", TrialConfig(patients_per_arm=12, shape=(16, 16, 16), seed=21, followup_weeks=48))
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=3, shape=(16, 16, 16), seed=22, followup_weeks=48))
    assert main(["simulate-forecasts", str(root / "cohort"), "--out", str(root / "store"), "--samples", "2", "--kind", "nb2-bootstrap",
                 "--forecasters", "3", "--train-cohort", str(root / "train_cohort"), "--seed", "4"]) == 0
    assert main(["simulate-forecasts", str(root / "cohort"), "--out", str(root / "one"), "--samples", "2", "--kind", "nb2-bootstrap",
                 "--train-cohort", str(root / "train_cohort"), "--seed", "4"]) == 0
    return {"root": root, "cohort": root / "cohort", "store": root / "store", "one": root / "one", "train": root / "train_cohort"}


def test_nb2_bootstrap_store_records_each_forecaster(family: dict[str, Path]) -> None:
    from mseval.io.store import ForecastStore, store_forecasters

    store = ForecastStore.open(family["store"])
    assert store.index()["forecaster"].iloc[0] == [0, 0, 1, 1, 2, 2] and store.index()["samples"].iloc[0] == 6
    sf = store_forecasters(family["store"])
    assert sf.ids == [0, 1, 2] and all(p["resample"] == "bootstrap within arms" for p in sf.provenance.values())
    assert "train_cohort" in sf.provenance[0]["trained_on"]
    assert store_forecasters(family["one"]).provenance[0]["resample"].startswith("none")


def test_effects_use_the_two_level_variance_with_k_forecasters(family: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eff"
    assert main(["effects", str(family["cohort"]), str(family["store"]), "--out", str(out), "--power-sims", "0", "--observed-bootstrap", "199"]) == 0
    fc = pd.read_csv(out / "rate_ratios_forecast.csv")
    assert set(fc["forecasters"]) == {3} and fc["estimand"].str.contains("predicted by this training procedure").all()
    est = pd.read_csv(out / "estimands.csv")
    assert est.loc[est["quantity"] == "counterfactual_ratio_of_means", "conditional_on"].str.contains("training procedure").all()
    proj = pd.read_csv(out / "projections.csv")
    assert proj.loc[proj["quantity"] == "forecast_rate_ratio", "label"].str.contains("3 forecasters, training error carried").all()
    doc = json.loads((out / "effects.json").read_text())
    assert doc["forecast_model"]["variance"] == "two-level" and set(doc["forecast_model"]["forecaster_provenance"]) == {"0", "1", "2"}
    assert (out / "forecasters.csv").is_file() and (out / "rate_ratios_forecast_conditional.csv").is_file()
    cond = tmp_path / "cond"
    assert main(["effects", str(family["cohort"]), str(family["store"]), "--out", str(cond), "--power-sims", "0",
                 "--forecaster-variance", "conditional"]) == 0
    assert not (cond / "forecasters.csv").exists()


def test_two_level_with_one_forecaster_is_refused(family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eff"
    assert main(["effects", str(family["cohort"]), str(family["one"]), "--out", str(out), "--forecaster-variance", "two-level"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 2 forecasters" in err[0] and not out.exists()


def test_store_mixing_forecasters_without_provenance_is_refused(family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(family["store"], bad)
    meta = json.loads((bad / "store.json").read_text())
    meta.pop("forecasters")
    (bad / "store.json").write_text(json.dumps(meta))
    out = tmp_path / "eff"
    assert main(["effects", str(family["cohort"]), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no provenance for forecaster" in err[0] and not out.exists()


def test_forecasters_option_needs_the_nb2_kind(family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate-forecasts", str(family["cohort"]), "--out", str(tmp_path / "s"), "--forecasters", "3"]) == 2
    assert main(["simulate-forecasts", str(family["cohort"]), "--out", str(tmp_path / "t"), "--kind", "nb2-bootstrap"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--train-cohort" in err[1] and not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
