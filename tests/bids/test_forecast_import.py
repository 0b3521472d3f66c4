"""Forecasts written by someone else's script (nibabel only) give the same statistics as the project's store."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mseval.cli import main


@pytest.mark.parametrize("per_sample", [True, False], ids=["3d-per-sample", "4d-per-block"])
def test_imported_forecasts_give_the_same_count_evaluate_effects(trial: dict[str, Path], tmp_path: Path, per_sample: bool, foreign) -> None:  # noqa: ANN001
    foreign(trial["store"], tmp_path / "theirs", per_sample=per_sample)
    pattern = "{patient}_{arm}_{sample}.nii.gz" if per_sample else "{patient}-{arm}.nii.gz"
    assert main(["forecast", "import", str(tmp_path / "theirs"), "--pattern", pattern, "--out", str(tmp_path / "store"),
                 "--cohort", str(trial["cohort"])]) == 0
    for name, store in (("out_ours", trial["store"]), ("out_theirs", tmp_path / "store")):
        (tmp_path / name).mkdir()
        assert main(["count", str(store), "--out", str(tmp_path / name / "count")]) == 0
        assert main(["evaluate", str(trial["cohort"]), str(store), "--out", str(tmp_path / name / "evaluate")]) == 0
        assert main(["effects", str(trial["cohort"]), str(store), "--out", str(tmp_path / name / "effects"), "--power-sims", "0", "--observed-bootstrap", "199"]) == 0
    for sub in ("count", "evaluate", "effects"):
        ours = sorted(p.relative_to(tmp_path / "out_ours") for p in (tmp_path / "out_ours" / sub).rglob("*") if p.suffix in (".csv", ".parquet"))
        theirs = sorted(p.relative_to(tmp_path / "out_theirs") for p in (tmp_path / "out_theirs" / sub).rglob("*") if p.suffix in (".csv", ".parquet"))
        assert ours == theirs and ours
        for rel in ours:
            read = pd.read_csv if rel.suffix == ".csv" else pd.read_parquet
            a, b = read(tmp_path / "out_ours" / rel), read(tmp_path / "out_theirs" / rel)
            # the forecaster's name and the provenance notes say where the forecasts came from: they differ by design
            # (a simulated oracle is "not trained"; an imported model without --trained-on is "unknown")
            drop = [c for c in a.columns if c in ("checkpoint", "forecaster_independence") or c.endswith("note")]
            pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), check_exact=False, rtol=0, atol=1e-12, obj=str(rel))


def test_a_non_binary_forecast_is_refused_and_nothing_written(trial: dict[str, Path], tmp_path: Path, cli, foreign) -> None:  # noqa: ANN001
    foreign(trial["store"], tmp_path / "theirs", per_sample=True)
    bad = sorted((tmp_path / "theirs").glob("*.nii.gz"))[3]
    nib.save(nib.Nifti1Image(np.full(nib.load(str(bad)).shape, 0.5, dtype=np.float32), nib.load(str(bad)).affine), str(bad))
    res = cli("forecast", "import", tmp_path / "theirs", "--out", tmp_path / "store")
    assert res.code == 2 and bad.name in res.err and "not binary" in res.err and "--probability" in res.err and "\n" not in res.err.strip()
    assert not (tmp_path / "store").exists()
