"""A cohort with baseline scans only (no follow-up yet: no net2_mask, no visits beyond baseline) gets a
forecast-only report: the forecast count under each arm and the counterfactual effects, recomputed
here from the counted samples, and a list of what is absent; a cohort with follow-up for some
patients only, or a forecast-only cohort given evaluation folders, is refused in one line (exit 2)
before any lesion is counted (issue 25)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from reports.forecast_only import ABSENT

E_NOTATION = re.compile(r"\d[eE][-+]?\d")


@pytest.fixture(scope="module")
def baseline_only(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's tiny trial (16^3, 2 patients per arm, 2 oracle samples) stripped to its baseline
    scans: follow-up paths emptied, follow-up images, visits.csv and the truth tables removed."""
    cohort = tmp_path_factory.mktemp("forecast_only") / "cohort"
    shutil.copytree(inputs["cohort"], cohort)
    for name in ("visits.csv", "truth.csv", "truth_visits.csv", "truth_lesions.csv", "oracle_inputs.csv"):
        (cohort / name).unlink(missing_ok=True)
    for ses in cohort.glob("images/*/ses-*"):
        shutil.rmtree(ses)
    m = pd.read_csv(cohort / "manifest.csv")
    m["net2_mask"] = ""
    m["t2_lesion_mask_followup"] = ""
    m.to_csv(cohort / "manifest.csv", index=False)
    return {"cohort": cohort, "full": inputs["cohort"], "fc": inputs["store"]}


def test_forecast_only_report_gives_forecasts_and_counterfactuals_and_says_what_is_absent(baseline_only, tmp_path, cli) -> None:
    out = tmp_path / "rep"
    r = cli("validate", baseline_only["cohort"])
    assert r.code == 0, r.err
    r = cli("report", baseline_only["cohort"], baseline_only["fc"], "--out", out)
    assert r.code == 0, r.err
    md = (out / "report.md").read_text()
    assert "FORECAST ONLY" in md.split("## ")[0]
    assert "## Primary endpoint" not in md and "## Calibration" not in md
    for section, why in ABSENT:
        assert f"| {section} | {why} |" in md
    page = re.sub(r"base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())  # the inlined figure is not a number
    assert not E_NOTATION.search(md) and not E_NOTATION.search(page)
    # the counterfactual ratio of means and the per-arm forecast means, recomputed from the counted samples
    counts = pd.read_parquet(out / "results" / "counts" / "counts.parquet")
    mean = counts.groupby(["patient_id", "arm"])["count"].mean().unstack("arm")
    assert mean.shape == (12, 6)
    cf = pd.read_csv(out / "tables" / "counterfactual_average.csv").set_index("arm")
    per_arm = pd.read_csv(out / "tables" / "forecast_per_arm.csv").set_index("arm")
    assert list(cf.index) == [a for a in pd.read_csv(baseline_only["cohort"] / "arms.csv")["arm"] if a != "placebo"]
    for arm in cf.index:
        assert abs(cf.at[arm, "ratio_of_means"] - mean[arm].sum() / mean["placebo"].sum()) < 1e-12
        assert abs(cf.at[arm, "mean_difference"] - (mean[arm] - mean["placebo"]).mean()) < 1e-12
    for arm in per_arm.index:
        assert abs(per_arm.at[arm, "mean_forecast_count"] - mean[arm].mean()) < 1e-12 and per_arm.at[arm, "patients"] == 12
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "forecast-only" and len(summary["absent"]) == len(ABSENT)
    assert "seed" not in r.err  # nothing drawn at random, so no seed is reported


def test_follow_up_for_some_patients_only_is_refused_before_any_counting(baseline_only, tmp_path, cli, monkeypatch) -> None:
    import mseval.lesions.ensemble as ensemble

    def no_counting(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("lesions were counted before the input was refused")

    monkeypatch.setattr(ensemble, "count_store", no_counting)
    mixed = tmp_path / "mixed"
    shutil.copytree(baseline_only["full"], mixed)
    m = pd.read_csv(mixed / "manifest.csv")
    m.loc[2, "net2_mask"] = ""
    m.to_csv(mixed / "manifest.csv", index=False)
    r = cli("report", mixed, baseline_only["fc"], "--out", tmp_path / "rep")
    errors = r.err.strip().splitlines()
    assert r.code == 2 and len(errors) == 1 and errors[0].startswith("mseval: error:"), r.err
    assert f"patient {m.loc[2, 'patient_id']} has no net2_mask" in errors[0] and "row 3" in errors[0]
    assert not (tmp_path / "rep").exists()


def test_a_forecast_only_cohort_with_an_evaluation_folder_is_refused(baseline_only, tmp_path, cli) -> None:
    (tmp_path / "ev").mkdir()
    r = cli("report", baseline_only["cohort"], baseline_only["fc"], "--out", tmp_path / "rep", "--evaluation", tmp_path / "ev")
    assert r.code == 2 and r.err.count("\n") == 1 and "no follow-up" in r.err and "--evaluation" in r.err, r.err
    assert not (tmp_path / "rep").exists()
