"""simulate -> BIDS -> import gives back the same cohort, and the same statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.cli import main


def test_export_names_pass_the_bids_filename_validator(trial: dict[str, Path]) -> None:
    from bids import BIDSLayout
    from bids_validator import BIDSValidator

    bids = trial["bids"]
    raw = [p for p in bids.rglob("*") if p.is_file() and "derivatives" not in p.parts and p.name not in ("arms.tsv", ".bidsignore")]
    bad = [p for p in raw if not BIDSValidator().is_bids("/" + p.relative_to(bids).as_posix())]
    assert raw and bad == []
    assert {p.name for p in bids.glob("sub-P001/ses-baseline/anat/*")} == {
        f"sub-P001_ses-baseline_{s}.nii.gz" for s in ("T1w", "T2w", "FLAIR", "PDw", "ce-gadolinium_T1w")}
    deriv = BIDSLayout(bids / "derivatives" / "mseval", validate=False, is_derivative=True)
    masks = deriv.get(subject="P001", session="w24", suffix="mask", label="lesion", extension=".nii.gz")
    assert sorted(f.entities["desc"] for f in masks) == ["T2", "gd", "net2", "net2cumulative"]
    assert json.loads((bids / "derivatives/mseval/dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert json.loads((bids / "dataset_description.json").read_text())["DatasetType"] == "raw"
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert {"participant_id", "age", "sex", "site", "arm"} <= set(participants.columns)
    sessions = pd.read_csv(bids / "sub-P001/sub-P001_sessions.tsv", sep="\t")
    assert list(sessions["session_id"]) == ["ses-baseline", "ses-w24", "ses-w48", "ses-w96"]


def test_simulate_bids_option_writes_the_same_dataset_as_export(tmp_path: Path) -> None:
    args = ["--patients-per-arm", "1", "--shape", "16", "16", "16", "--seed", "2"]
    assert main(["simulate", str(tmp_path / "c"), *args, "--bids", str(tmp_path / "b1")]) == 0
    assert main(["export", "bids", str(tmp_path / "c"), str(tmp_path / "b2")]) == 0
    files = sorted(p.relative_to(tmp_path / "b1") for p in (tmp_path / "b1").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b2") for p in (tmp_path / "b2").rglob("*") if p.is_file())
    assert all((tmp_path / "b1" / f).read_bytes() == (tmp_path / "b2" / f).read_bytes() for f in files)


def test_import_gives_back_the_cohort_byte_for_byte(trial: dict[str, Path]) -> None:
    cohort, imported = trial["cohort"], trial["imported"]
    for table in ("manifest.csv", "visits.csv", "arms.csv"):
        assert (cohort / table).read_bytes() == (imported / table).read_bytes(), table
    visits = pd.read_csv(cohort / "visits.csv")
    named = [p for col in visits.columns[7:] for p in visits[col].dropna()]
    assert len(named) > 100 and all((cohort / p).read_bytes() == (imported / p).read_bytes() for p in named)
    assert not (imported / "truth.csv").exists()
    report = pd.read_csv(imported / "import_report.csv")
    assert set(report["status"]) == {"found", "missing"}  # T2w and PDw are not acquired at follow-up


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}


def test_effects_on_the_imported_cohort_equal_those_on_the_simulated_one(trial: dict[str, Path], tmp_path: Path) -> None:
    for name in ("cohort", "imported"):
        assert main(["effects", str(trial[name]), str(trial["store"]), "--out", str(tmp_path / name), "--power-sims", "0", "--observed-bootstrap", "199"]) == 0
    direct, again = _tables(tmp_path / "cohort"), _tables(tmp_path / "imported")
    assert set(again) == set(direct) - {"truth_comparison.csv"}  # a real trial has no truth
    compared = _same_numbers(direct, again, "effects")
    assert compared > 50
    counts = [pd.read_parquet(tmp_path / n / "counts.parquet") for n in ("cohort", "imported")]
    pd.testing.assert_frame_equal(counts[0], counts[1])


def test_net2_is_computed_with_the_project_rule_where_only_t2_masks_exist(trial: dict[str, Path], tmp_path: Path) -> None:
    from mseval.io.nifti import load_volume
    from mseval.lesions.net2 import net2_from_visits

    assert main(["export", "bids", str(trial["cohort"]), str(tmp_path / "b"), "--no-net2"]) == 0
    assert not list((tmp_path / "b").rglob("*desc-net2*"))
    assert main(["import", "bids", str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    visits = pd.read_csv(tmp_path / "c" / "visits.csv")
    report = pd.read_csv(tmp_path / "c" / "import_report.csv")
    assert (report["status"] == "computed").sum() == 2 * visits["visit_index"].gt(0).sum()
    rows = visits[visits["patient_id"] == "P003"].set_index("visit")
    t2 = {v: load_volume(trial["cohort"] / rows.at[v, "t2_lesion_mask"], mask=True) for v in rows.index}
    for v in ("w24", "w48", "w96"):
        prev = rows.at[v, "previous_visit"]
        for col, against in (("net2_mask", prev), ("net2_mask_cumulative", "baseline")):
            want = net2_from_visits(t2[against].data, t2[v].data, t2[v].affine).mask
            got = load_volume(tmp_path / "c" / rows.at[v, col], mask=True).data
            assert np.array_equal(got, want), (v, col)


@pytest.mark.parametrize("column", ["weeks", "acq_time"])
def test_visit_weeks_come_from_sessions_tsv_or_acq_time(bids_copy: Path, tmp_path: Path, trial: dict[str, Path], column: str) -> None:
    for tsv in bids_copy.glob("sub-*/sub-*_sessions.tsv"):
        tab = pd.read_csv(tsv, sep="\t")
        tab.drop(columns=[c for c in ("weeks", "acq_time") if c != column]).to_csv(tsv, sep="\t", index=False)
    assert main(["import", "bids", str(bids_copy), "--out", str(tmp_path / "c")]) == 0
    got, want = pd.read_csv(tmp_path / "c" / "visits.csv"), pd.read_csv(trial["cohort"] / "visits.csv")
    np.testing.assert_allclose(got["weeks"], want["weeks"], atol=1e-9)


def _same_numbers(direct: dict[str, pd.DataFrame], again: dict[str, pd.DataFrame], where: str) -> int:
    """Every table of `again` equals the same-named table of `direct` on the columns both have (numbers to 1e-12,
    text exactly); columns that only the simulated cohort can fill (truth) are absent from `again`, never zero."""
    compared = 0
    for name, table in again.items():
        ref = direct[name]
        if "quantity" in ref:
            ref = ref[~ref["quantity"].astype(str).str.endswith("_attainable")].reset_index(drop=True)
        assert set(table.columns) <= set(ref.columns), f"{where}/{name}"
        missing = set(ref.columns) - set(table.columns)
        assert all("true" in c or "attainable" in c or "truth" in c for c in missing), f"{where}/{name}: {missing}"
        assert len(table) == len(ref), f"{where}/{name}"
        for col in table.columns:
            if pd.api.types.is_numeric_dtype(ref[col]):
                np.testing.assert_allclose(table[col].to_numpy(float), ref[col].to_numpy(float), rtol=0, atol=1e-12, err_msg=f"{where}/{name}:{col}")
            else:
                assert table[col].astype(str).tolist() == ref[col].astype(str).tolist(), f"{where}/{name}:{col}"
            compared += 1
    return compared


def test_evaluate_and_report_on_the_imported_cohort_equal_those_on_the_simulated_one(trial: dict[str, Path], tmp_path: Path) -> None:
    """The round trip's `evaluate` and `report`: every table of the imported cohort's evaluation and report equals
    the simulated cohort's on the numbers a real trial has (truth columns and truth-only tables absent)."""
    from reports.builder import ReportSettings, build_report

    fast = ReportSettings(n_boot=20, observed_bootstrap=199, power_sims=0, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    for name in ("cohort", "imported"):
        (tmp_path / name).mkdir()
        assert main(["evaluate", str(trial[name]), str(trial["store"]), "--out", str(tmp_path / name / "ev")]) == 0
        build_report(trial[name], trial["store"], tmp_path / name / "rep", evaluation_dir=tmp_path / name / "ev", settings=fast)
    compared = 0
    for sub in ("ev", "rep/tables"):
        direct, again = _tables(tmp_path / "cohort" / sub), _tables(tmp_path / "imported" / sub)
        assert again and set(again) <= set(direct), sub
        assert all("truth" in n or "true" in n for n in set(direct) - set(again)), set(direct) - set(again)
        compared += _same_numbers(direct, again, sub)
    assert compared > 50
