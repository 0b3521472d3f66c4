"""`mseval nbreg`: arms checked against the arms (typos and case variants refused with the closest
arm named, the row as the file numbers it), per-arm n / events / exposure on the console, and a
term without an estimate shown as "not estimable" with empty number fields, never 0, inf or 1e-21."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

DATA = Path(__file__).parents[1] / "stats" / "data" / "nb_trial.csv"
ARMS = ["placebo", "laquinimod", "ifnb1a_im", "ifnb1a_sc", "dmf", "ocrelizumab"]


@pytest.fixture()
def trial() -> pd.DataFrame:
    d = pd.read_csv(DATA)
    d["patient_id"] = [f"P{i + 1:03d}" for i in range(len(d))]
    return d


def _refused(res, out: Path, *words: str) -> str:  # noqa: ANN001
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("mseval: error: ") and "Traceback" not in res.err, res.err
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert not out.exists()
    return lines[0]


def test_a_misspelt_arm_is_refused_with_its_row_and_the_closest_arm(trial: pd.DataFrame, tmp_path: Path, cli) -> None:  # noqa: ANN001
    trial.loc[3, "arm"] = "dfm"  # data row 4, line 5 of the file
    trial.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o", "--arms", ",".join(ARMS))
    _refused(res, tmp_path / "o", "'dfm' is not an arm; did you mean 'dmf'?", "row 4", "line 5 of the file", "data rows")
    # without an arms table the rare one-edit variant is refused too
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o")
    _refused(res, tmp_path / "o", "'dfm' is not an arm; did you mean 'dmf'?", "row 4", "--arms")


def test_a_case_variant_is_refused_with_or_without_an_arms_table(trial: pd.DataFrame, tmp_path: Path, cli) -> None:  # noqa: ANN001
    trial.loc[[5, 40], "arm"] = "Placebo"  # first at data row 6
    trial.to_csv(tmp_path / "t.csv", index=False)
    for extra in ([], ["--arms", ",".join(ARMS)]):
        res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o", *extra)
        _refused(res, tmp_path / "o", "'Placebo' is not an arm; did you mean 'placebo'?", "row 6", "line 7 of the file")
    trial.to_parquet(tmp_path / "t.parquet")  # a Parquet table: data rows, no line
    res = cli("nbreg", tmp_path / "t.parquet", "--out", tmp_path / "o")
    assert "line" not in _refused(res, tmp_path / "o", "'Placebo'", "row 6", "'placebo'")


def test_the_arms_csv_beside_the_table_is_found_and_gives_the_reference(trial: pd.DataFrame, tmp_path: Path, cli) -> None:  # noqa: ANN001
    pd.DataFrame({"arm": ARMS, "label": ARMS, "efficacy": ["none"] + ["moderate"] * 5, "reference": [True] + [False] * 5}).to_csv(
        tmp_path / "arms.csv", index=False)
    trial.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "o" / "model.json").read_text())["reference"] == "placebo"  # not 'dmf', the first in sort order
    assert f"arms checked against {tmp_path / 'arms.csv'}" in res.out
    bad = trial.copy()
    bad.loc[9, "arm"] = "aspirin"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    res = cli("nbreg", tmp_path / "bad.csv", "--out", tmp_path / "o2")
    _refused(res, tmp_path / "o2", "'aspirin' is not an arm", "row 10", str(tmp_path / "arms.csv"))
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o3", "--reference", "Placebo")
    _refused(res, tmp_path / "o3", "--reference 'Placebo' is not an arm; did you mean 'placebo'?")
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o4", "--arms", "placebo,dmf")
    _refused(res, tmp_path / "o4", "is not an arm", "(arms from --arms)")


def test_real_arms_one_letter_apart_are_kept(tmp_path: Path, cli) -> None:  # noqa: ANN001
    d = pd.read_csv(DATA)
    d = d[d["arm"].isin(["placebo", "dmf"])].replace({"arm": {"placebo": "dose1", "dmf": "dose2"}})
    d.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o")
    assert res.code == 0 and "dose2" in res.out and "arms not checked against an arms table" in res.out, res.err


def test_error_rows_are_numbered_as_in_the_file_after_a_dropped_row(trial: pd.DataFrame, tmp_path: Path, cli) -> None:  # noqa: ANN001
    d = trial.head(12).copy()
    d["patient_id"] = [f"P{i + 1:02d}" for i in range(12)]
    d.loc[2, "followup_years"] = None  # P03: dropped for a missing value
    d.loc[5, "followup_years"] = 0.0  # P06: data row 6, line 7
    d.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o")
    _refused(res, tmp_path / "o", "row 6", "patient P06", "line 7 of the file", "must be positive years")
    d.loc[5, "followup_years"] = 1.0
    d["net2"] = d["net2"].astype(float)
    d.loc[8, "net2"] = 1.5  # P09 after the drop
    d.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o")
    _refused(res, tmp_path / "o", "row 9", "patient P09", "line 10 of the file", "whole counts")


def test_console_shows_arm_sizes_and_a_non_estimable_term_without_absurd_numbers(trial: pd.DataFrame, tmp_path: Path, cli) -> None:  # noqa: ANN001
    d = trial[trial["arm"].isin(["placebo", "dmf", "ocrelizumab"])].copy()
    d.loc[d["arm"] == "ocrelizumab", "net2"] = 0
    d.to_csv(tmp_path / "t.csv", index=False)
    res = cli("nbreg", tmp_path / "t.csv", "--out", tmp_path / "o", "--reference", "placebo")
    assert res.code == 0, res.err
    for arm in ("placebo", "dmf", "ocrelizumab"):
        g = d[d["arm"] == arm]
        line = next(x for x in res.out.splitlines() if x.split()[:3] == [arm, str(len(g)), str(int(g["net2"].sum()))])
        assert f"{g['followup_years'].sum():.2f}" in line, line
    oc = [x for x in res.out.splitlines() if x.strip().startswith("ocrelizumab") and "estimable" in x]
    assert oc and "not estimable" in oc[0] and "e-" not in oc[0] and "inf" not in oc[0], oc
    rr = (tmp_path / "o" / "rate_ratios.csv").read_text().splitlines()
    row = next(x for x in rr if x.startswith("ocrelizumab,"))
    assert row.startswith("ocrelizumab,,,,,,,False,"), row  # rate_ratio, CI, p, coef, se empty
    means = pd.read_csv(tmp_path / "o" / "adjusted_means.csv").set_index("arm")
    assert pd.isna(means.loc["ocrelizumab", "adjusted_rate_per_year"]) and means.loc["dmf", "adjusted_rate_per_year"] > 0
    counts = pd.read_csv(tmp_path / "o" / "arm_counts.csv").set_index("arm")
    assert counts.loc["ocrelizumab", "events"] == 0 and counts["n"].sum() == len(d)
