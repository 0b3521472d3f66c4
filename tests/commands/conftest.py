"""Shared inputs of the command tests: one tiny simulated trial, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mseval.cli import main


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16^3 cohort (2 patients per arm), a 2-sample oracle store made by the CLI (so it records its
    settings), its counts, a patient table (CSV and Parquet) and one mask file."""
    from mseval.lesions.ensemble import count_store
    from mseval.lesions.observed import analysis_table
    from mseval.io.cohort import read_cohort
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("battery")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=2, shape=(16, 16, 16), seed=5, followup_weeks=48))
    assert main(["simulate-forecasts", str(root / "cohort"), "--out", str(root / "store"), "--samples", "2", "--seed", "1"]) == 0
    count_store(root / "store", root / "counted")
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts

    simulate_forecasts(root / "cohort", root / "partial", ForecasterSpec("oracle", samples=2, seed=1), arms=["placebo", "dmf"])
    table = analysis_table(read_cohort(root / "cohort"))
    table.to_csv(root / "table.csv", index=False)
    table.to_parquet(root / "table.parquet")
    (root / "fake.parquet").write_text(table.to_csv(index=False))
    (root / "afile").write_text("not a folder\n")
    first = sorted((root / "cohort" / "images").iterdir())[0]
    shutil.copy(first / "ses-w48" / "net2_mask.nii.gz", root / "mask.nii.gz")
    return {
        "root": root, "cohort": root / "cohort", "store": root / "store", "counts": root / "counted" / "counts.parquet",
        "csv": root / "table.csv", "parquet": root / "table.parquet", "fake": root / "fake.parquet", "afile": root / "afile",
        "mask": root / "mask.nii.gz", "partial": root / "partial",
    }
