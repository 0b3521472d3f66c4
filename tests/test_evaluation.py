"""`mseval evaluate` end to end on the tiny simulated cohort, and its bad-input behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import data_schemas
from mseval.errors import InputError
from mseval.evaluation import EvaluationSettings, compute_metrics, evaluate
from mseval.io.cohort import read_cohort

FAST = EvaluationSettings(n_boot=0, voxel=False, detection=False, by_arm=False)


@pytest.fixture(scope="module")
def oracle_store(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Oracle forecasts of the tiny cohort: every patient x arm, 6 samples."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts

    out = tmp_path_factory.mktemp("forecasts") / "oracle"
    simulate_forecasts(tiny_cohort, out, ForecasterSpec(kind="oracle", samples=6, seed=4))
    return out


@pytest.fixture(scope="module")
def full_run(tiny_cohort: Path, oracle_store: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval") / "evaluation"
    return evaluate(tiny_cohort, oracle_store, out, EvaluationSettings(n_boot=100)), out


def test_writes_every_table_and_a_valid_summary(full_run):
    """All tables are written, summary.json validates against its schema and records the settings."""
    res, out = full_run
    for name in ("patients.csv", "patients.parquet", "metrics.csv", "confusion.csv", "reliability.csv", "pit_histogram.csv",
                 "coverage.csv", "voxel_reliability.csv", "voxel_values.csv", "detection.csv", "forecast_counts.parquet", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    jsonschema.validate(summary, data_schemas.load("evaluation_summary"))
    assert summary["settings"]["connectivity"] == 26 and summary["counting"]["connectivity"] == 26
    assert summary["observed"]["from_net2_mask"] == 12 and summary["n_patients"] == 12 and summary["samples"] == 6
    assert {"all", "voxels", "detection"} <= set(summary["metrics"])
    assert "auc" in summary["metrics"]["all"] and "crps_fair" in summary["metrics"]["all"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["group", "metric", "value", "ci_low", "ci_high", "threshold", "n", "note", "estimable"]
    # the shared estimability rule: a row without a finite value (or with a half-defined interval) is flagged with a reason
    bad = metrics[~metrics["value"].apply(np.isfinite)]
    assert not bad["estimable"].any() and bad["note"].str.len().gt(0).all()
    assert metrics.loc[metrics["metric"] == "calibration_error_debiased", "estimable"].all()
    det = pd.read_csv(out / "detection.csv")
    assert len(det) == 12 * 6 and {"patient_id", "arm", "sample", "tp_ref", "fp", "fn", "dice"} <= set(det.columns)
    assert "Activity" in res.summary()


def test_observed_counts_from_net2_masks_equal_the_drawn_counts(full_run, tiny_cohort):
    """The simulator guarantees that a NET2 mask has as many components as lesions drawn, so the
    observed counts read from the masks equal truth.csv's realized_count, and forecasts are taken
    under the allocated arm."""
    res, _ = full_run
    truth = read_cohort(tiny_cohort).truth
    real = truth[truth["allocated"]].set_index("patient_id")
    pats = res.patients.set_index("patient_id")
    assert (pats["observed_count"] == real.loc[pats.index, "realized_count"].astype(int)).all()
    assert (pats["arm"] == real.loc[pats.index, "arm"]).all()
    assert (pats["observed_source"] == "net2_mask").all()


def test_counts_table_path_gives_the_same_metrics(full_run, tiny_cohort, oracle_store, tmp_path):
    """Passing the counts.parquet written by the first run (with its settings metadata) reproduces
    the patient table; asking for other counting settings than the file records is an error."""
    res, out = full_run
    again = evaluate(tiny_cohort, oracle_store, tmp_path / "e2", EvaluationSettings(n_boot=100), counts=out / "forecast_counts.parquet")
    pd.testing.assert_frame_equal(again.patients, res.patients)
    with pytest.raises(InputError, match="connectivity"):
        evaluate(tiny_cohort, oracle_store, tmp_path / "e3", EvaluationSettings(connectivity=6), counts=out / "forecast_counts.parquet")
    assert not (tmp_path / "e3").exists()


def _bad(full_run, tmp_path, mutate):
    _, out = full_run
    counts = pd.read_parquet(out / "forecast_counts.parquet")
    path = tmp_path / "bad.parquet"
    mutate(counts).to_parquet(path)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.drop(index=c.index[3]), "missing samples"),
    (lambda c: c.assign(arm=np.where(c["arm"] == "placebo", "natalizumab", c["arm"])), "not in the arms table"),
    (lambda c: c[c["arm"] == "placebo"], "holds only arm 'placebo'"),
])
def test_bad_counts_tables_are_one_line_errors_and_leave_nothing(full_run, tiny_cohort, oracle_store, tmp_path, mutate, message):
    """Missing samples, an unknown arm, a single-arm table: InputError naming the file, no output."""
    path = _bad(full_run, tmp_path, mutate)
    with pytest.raises(InputError, match=message) as err:
        evaluate(tiny_cohort, oracle_store, tmp_path / "out", FAST, counts=path)
    assert "bad.parquet" in err.value.message and "\n" not in err.value.message
    assert not (tmp_path / "out").exists()


def test_all_zero_counts_are_flagged(full_run, tiny_cohort, oracle_store, tmp_path):
    """All-zero forecasts are scored, but the result and summary.json say so (never a silent NaN)."""
    path = _bad(full_run, tmp_path, lambda c: c.assign(count=0))
    res = evaluate(tiny_cohort, oracle_store, tmp_path / "out", FAST, counts=path)
    assert any("zero lesions" in f for f in res.flags)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("zero lesions" in f for f in summary["flags"]) and any("slope" in f for f in summary["flags"])
    assert summary["metrics"]["all"]["calibration_slope"]["value"] is None


def test_missing_net2_masks_fall_back_to_truth_and_say_so(full_run, cohort_copy, oracle_store, tmp_path):
    """Without net2_mask files the realized counts of truth.csv are used, and a flag says so."""
    _, out = full_run
    man = pd.read_csv(cohort_copy / "manifest.csv").drop(columns=["net2_mask"])
    man.to_csv(cohort_copy / "manifest.csv", index=False)
    res = evaluate(cohort_copy, oracle_store, tmp_path / "out", FAST, counts=out / "forecast_counts.parquet")
    assert (res.patients["observed_source"] == "truth_realized_count").all()
    assert any("truth.csv realized_count" in f for f in res.flags)


def test_compute_metrics_recovers_the_oracle_on_a_truth_model_table():
    """A paper-like counts table built from the simulator's truth model (no images): 300 patients per
    arm x 6 arms x 20 samples, observed ~ Poisson(mu) on the allocated arm. The oracle's AUC CI lies
    above 0.5 and the randomized 80% coverage is within 3 points of nominal (SE 0.9 points at n = 1,800)."""
    from mseval.simulate.model import TrialConfig, draw_patients, truth_frame

    rng = np.random.default_rng(8)
    cfg = TrialConfig(patients_per_arm=300, seed=8)
    truth = truth_frame(draw_patients(cfg, rng), cfg)
    S = 20
    counts = pd.DataFrame({"patient_id": np.repeat(truth["patient_id"].to_numpy(), S), "arm": np.repeat(truth["arm"].to_numpy(), S),
                           "sample": np.tile(np.arange(S), len(truth)), "count": rng.poisson(np.repeat(truth["expected_count"].to_numpy(), S))})
    al = truth[truth["allocated"]]
    observed = pd.DataFrame({"patient_id": al["patient_id"], "arm": al["arm"], "observed_count": rng.poisson(al["expected_count"]),
                             "observed_source": "simulated"})
    res = compute_metrics(counts, observed, [a.arm for a in cfg.arms], EvaluationSettings(n_boot=0), truth=truth)
    g = res.group()
    assert g.activity.auc_ci_low > 0.5
    cov = g.counts.coverage.set_index("level")
    assert abs(cov.loc[0.8, "randomized"] - 0.8) < 0.03
    assert len(res.groups) == 7 and res.info["vs_truth"]["mae_mean_vs_true_expected"] < 0.5


def test_cli_command(tiny_cohort, oracle_store, full_run, tmp_path):
    """The Typer command runs the evaluation and prints the summary; bad options are InputErrors."""
    from mseval.commands.evaluate import evaluate as command

    app = typer.Typer()
    app.command()(command)
    _, out = full_run
    r = CliRunner().invoke(app, [str(tiny_cohort), str(oracle_store), "--out", str(tmp_path / "cli"), "--counts", str(out / "forecast_counts.parquet"),
                                 "--n-boot", "0", "--no-voxel", "--no-detection", "--operating-point", "0.3"])
    assert r.exit_code == 0, r.output
    assert "AUC" in r.output and (tmp_path / "cli" / "summary.json").is_file()
    r = CliRunner().invoke(app, [str(tiny_cohort), str(oracle_store), "--out", str(tmp_path / "cli2"), "--k", "0"])
    assert isinstance(r.exception, InputError) and not (tmp_path / "cli2").exists()
