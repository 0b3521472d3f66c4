"""`mseval forecast import --name --trained-on CSV|none`: an imported forecaster's training patients label results
in-sample / held-out as the project's checkpoints do; patients are identified by (cohort, participant)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mseval.cli import main
from mseval.heldout import seen_by_forecaster
from mseval.io.cohort import read_cohort
from mseval.provenance import forecast_provenance


@pytest.fixture(scope="module")
def theirs(trial: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, foreign) -> Path:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("prov") / "theirs"
    foreign(trial["store"], folder)
    return folder


def _import(theirs: Path, out: Path, cohort: Path, *extra: str) -> None:
    assert main(["forecast", "import", str(theirs), "--out", str(out), "--cohort", str(cohort), "--name", "groupX-unet", *extra]) == 0


def test_training_patients_make_the_results_mixed_and_evaluate_and_report_say_so(trial: dict[str, Path], theirs: Path, tmp_path: Path) -> None:
    ids = read_cohort(trial["cohort"]).patient_ids[:2]
    pd.DataFrame({"patient_id": ids}).to_csv(tmp_path / "train.csv", index=False)
    _import(theirs, tmp_path / "store", trial["cohort"], "--trained-on", str(tmp_path / "train.csv"))
    prov = forecast_provenance(trial["cohort"], tmp_path / "store")
    assert prov["status"] == "mixed" and prov["checkpoints"][0]["checkpoint"] == "groupX-unet"
    assert prov["checkpoints"][0]["n_in_sample"] == 2 and prov["checkpoints"][0]["n_held_out"] == len(read_cohort(trial["cohort"]).patient_ids) - 2
    assert set(seen_by_forecaster(read_cohort(trial["cohort"]), tmp_path / "store")) == set(ids)
    assert main(["evaluate", str(trial["cohort"]), str(tmp_path / "store"), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads(next((tmp_path / "ev").rglob("*.json")).read_text())
    assert summary["provenance"]["status"] == "mixed" and "2 were in its training set" in summary["provenance"]["sentence"]
    assert main(["report", str(trial["cohort"]), str(tmp_path / "store"), "--out", str(tmp_path / "rep"), "--evaluation", str(tmp_path / "ev"),
                 "--power-sims", "0", "--figure-formats", "png", "--figure-dpi", "72", "--observed-bootstrap", "199"]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "MIXED: some evaluated patients were seen in training" in html and "groupX-unet" in html


def test_trained_on_none_is_held_out_and_no_declaration_is_unknown(trial: dict[str, Path], theirs: Path, tmp_path: Path) -> None:
    _import(theirs, tmp_path / "none", trial["cohort"], "--trained-on", "none")
    assert forecast_provenance(trial["cohort"], tmp_path / "none")["status"] == "held-out"
    _import(theirs, tmp_path / "unknown", trial["cohort"])
    assert forecast_provenance(trial["cohort"], tmp_path / "unknown")["status"] == "unknown"


def test_the_same_ids_in_another_trial_are_not_this_trials_patients(trial: dict[str, Path], theirs: Path, tmp_path: Path) -> None:
    """The forecaster trained on P001, P002 of ANOTHER simulated trial: those IDs exist here too, but (cohort,
    participant) differ, so every patient here is held out."""
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    simulate_trial(tmp_path / "other", TrialConfig(patients_per_arm=2, shape=(20, 24, 20), seed=99))
    ids = read_cohort(trial["cohort"]).patient_ids[:2]
    assert set(ids) <= set(read_cohort(tmp_path / "other").patient_ids)
    pd.DataFrame({"patient_id": ids, "cohort": ["other", "other"]}).to_csv(tmp_path / "train.csv", index=False)
    _import(theirs, tmp_path / "store", trial["cohort"], "--trained-on", str(tmp_path / "train.csv"))
    prov = forecast_provenance(trial["cohort"], tmp_path / "store")
    assert prov["status"] == "held-out" and prov["checkpoints"][0]["n_trained_on"] == 2


@pytest.mark.parametrize("rows, row, field, words", [
    ({"patient_id": ["P001", "NOPE"]}, 2, "patient_id", "not in the manifest.csv"),
    ({"patient_id": ["P001", "P001"]}, 2, "patient_id", "listed twice"),
    ({"patient_id": ["P001"], "cohort": ["missing_folder"]}, 1, "cohort", "has no manifest.csv"),
    ({"id": ["P001"]}, None, "patient_id", "missing required column"),
], ids=["unknown-patient", "twice", "no-cohort-folder", "no-column"])
def test_a_bad_trained_on_row_is_refused_and_nothing_written(trial: dict[str, Path], theirs: Path, tmp_path: Path, cli, rows, row, field,  # noqa: ANN001
                                                             words) -> None:
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    res = cli("forecast", "import", theirs, "--out", tmp_path / "store", "--cohort", trial["cohort"], "--trained-on", tmp_path / "train.csv")
    assert res.code == 2 and "train.csv" in res.err and f"field '{field}'" in res.err and words in res.err, res.err
    if row is not None:
        assert f"row {row}" in res.err and f"line {row + 1} of the file" in res.err
    assert len(res.err.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def test_training_patients_without_a_cohort_are_refused(theirs: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    pd.DataFrame({"patient_id": ["P001"]}).to_csv(tmp_path / "train.csv", index=False)
    res = cli("forecast", "import", theirs, "--out", tmp_path / "store", "--trained-on", tmp_path / "train.csv")
    assert res.code == 2 and "IDs alone repeat across trials" in res.err and not (tmp_path / "store").exists()
