"""Shared inputs of the BIDS tests: one tiny simulated trial, its BIDS export and the import of that, made once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mseval.cli import main


@pytest.fixture(scope="session")
def trial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16^3 multi-visit cohort (2 patients per arm, visits w24/w48/w96), a 2-sample oracle store, the
    cohort exported to BIDS by `mseval export bids` and imported back by `mseval import bids`."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("bids")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=2, shape=(20, 24, 20), seed=5))
    simulate_forecasts(root / "cohort", root / "store", ForecasterSpec("oracle", samples=2, seed=0))
    assert main(["export", "bids", str(root / "cohort"), str(root / "bids")]) == 0
    assert main(["import", "bids", str(root / "bids"), "--out", str(root / "imported")]) == 0
    return {"root": root, "cohort": root / "cohort", "store": root / "store", "bids": root / "bids", "imported": root / "imported"}


@pytest.fixture()
def bids_copy(trial: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the exported BIDS dataset, for a test to damage."""
    return Path(shutil.copytree(trial["bids"], tmp_path / "bids"))
