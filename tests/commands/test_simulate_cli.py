"""`mseval simulate`: the visit schedule (--visits, or --followup-weeks for one visit), the world knobs
(named options and --set), bad options as one line with exit 2 and nothing written, and the
downstream commands on the default multi-visit cohort."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mseval.cli import app, main
from mseval.commands._world_options import NAMED_KNOBS
from mseval.simulate.model import TrialConfig

SMALL = ["--shape", "16", "16", "16", "--patients-per-arm", "1", "--seed", "3"]


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_default_is_the_multi_visit_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "simulate", tmp_path / "c", *SMALL)
    assert code == 0, err
    visits = pd.read_csv(tmp_path / "c" / "visits.csv", keep_default_na=False)
    labels = visits.groupby("patient_id")["visit"].apply(list)
    assert all(v == ["baseline", "w24", "w48", "w96"] for v in labels), labels
    cfg = json.loads((tmp_path / "c" / "simulation.json").read_text())["config"]
    assert cfg["schedule"] == list(TrialConfig().schedule) == [24.0, 48.0, 96.0] and cfg["followup_weeks"] is None
    assert "visits: w24, w48, w96" in out


def test_visits_option_and_single_visit_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "simulate", tmp_path / "two", *SMALL, "--visits", "12, 36")
    assert code == 0, err
    v = pd.read_csv(tmp_path / "two" / "visits.csv", keep_default_na=False)
    assert sorted(set(v["visit"])) == ["baseline", "w12", "w36"]
    assert set(v.loc[v["visit"] == "w36", "scheduled_weeks"]) == {36.0}
    code, _, err = _run(capsys, "simulate", tmp_path / "one", *SMALL, "--followup-weeks", "52")
    assert code == 0, err
    v = pd.read_csv(tmp_path / "one" / "visits.csv", keep_default_na=False)
    assert sorted(set(v["visit"])) == ["baseline", "w52"] and len(v) == 2 * 6
    cfg = json.loads((tmp_path / "one" / "simulation.json").read_text())["config"]
    assert cfg["followup_weeks"] == 52.0 and cfg["schedule"] == [52.0]
    # the manifest's follow-up is the observed visit, within the +/- 2 week window
    m = pd.read_csv(tmp_path / "one" / "manifest.csv")
    assert m["followup_weeks"].between(50, 54).all()


def test_knobs_reach_the_simulated_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    code, _, err = _run(capsys, "simulate", out, *SMALL, "--dropout-per-year", "0.6", "--dropout-mar", "0.5", "--dropout-mnar", "-0.5",
                        "--missed-visit", "0.3", "--prelesion-fraction", "0", "--prelesion-contrast", "1.5", "--dawm-strength", "0",
                        "--spatial-strength", "0.25", "--mtr", "--set", "base_rate=9", "--set", "ocrelizumab.size_multiplier=0.7",
                        "--set", "visit_window_weeks=1")
    assert code == 0, err
    cfg = json.loads((out / "simulation.json").read_text())["config"]
    want = {"dropout_per_year": 0.6, "dropout_mar": 0.5, "dropout_mnar": -0.5, "missed_visit": 0.3, "prelesion_fraction": 0.0,
            "prelesion_contrast": 1.5, "dawm_strength": 0.0, "spatial_strength": 0.25, "mtr": True, "base_rate": 9.0, "visit_window_weeks": 1}
    assert {k: cfg[k] for k in want} == want
    assert {a["arm"]: a["size_multiplier"] for a in cfg["arms"]} == {"placebo": 1.0, "laquinimod": 1.0, "ifnb1a_im": 1.0, "ifnb1a_sc": 1.0,
                                                                     "dmf": 1.0, "ocrelizumab": 0.7}
    visits = pd.read_csv(out / "visits.csv", keep_default_na=False)
    base = visits[visits["visit"] == "baseline"]
    assert (base["mtr"] == [f"images/{p}/mtr.nii.gz" for p in base["patient_id"]]).all()
    assert all((out / p).is_file() for p in base["mtr"])
    # with 60% dropout a year over 96 weeks and 30% missed visits, some of 18 follow-up visits are absent (P(none) < 1e-4)
    assert set(visits["missing"]) - {""} <= {"dropout", "missed"} and (visits["missing"] != "").any()


def test_help_states_the_simulator_defaults() -> None:
    """Each named knob's help says '(default X' with X the TrialConfig default: the help cannot drift."""
    import typer

    cmd = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    helps = {p.name: p.help or "" for p in cmd.params}
    defaults = TrialConfig()
    for knob in NAMED_KNOBS:
        if knob == "mtr":
            assert "default: no" in helps[knob] and defaults.mtr is False
            continue
        m = re.search(r"\(default ([-0-9.]+)", helps[knob])
        assert m, (knob, helps[knob])
        assert float(m.group(1)) == getattr(defaults, knob), knob
    m = re.search(r"\(default ([0-9,]+)\)", helps["visits"])
    assert m and tuple(float(w) for w in m.group(1).split(",")) == defaults.schedule


BAD: dict[str, tuple[list[str], list[str]]] = {
    # name: (options, words that must be in the one error line)
    "not increasing": (["--visits", "48,24"], ["--visits", "strictly increasing"]),
    "repeated visit": (["--visits", "24,24,96"], ["--visits", "strictly increasing"]),
    "negative weeks": (["--visits=-24,48"], ["--visits", "weeks must be positive"]),
    "zero weeks": (["--visits", "0,48"], ["--visits", "weeks must be positive"]),
    "visits too close": (["--visits", "24,26"], ["--visits", "closer than twice the visit window"]),
    "not a number": (["--visits", "24,x"], ["--visits", "'x' is not a number"]),
    "empty entry": (["--visits", "24,,48"], ["--visits", "comma"]),
    "both forms": (["--visits", "24,48", "--followup-weeks", "48"], ["--visits and --followup-weeks are mutually exclusive"]),
    "negative follow-up": (["--followup-weeks", "-4"], ["--followup-weeks", "positive"]),
    "dropout 1": (["--dropout-per-year", "1"], ["--dropout-per-year", "dropout_per_year = 1.0 must lie in [0, 1)"]),
    "dropout negative": (["--dropout-per-year", "-0.1"], ["--dropout-per-year", "must lie in [0, 1)"]),
    "missed visit 1": (["--missed-visit", "1"], ["--missed-visit", "must lie in [0, 1)"]),
    "mar out of range": (["--dropout-mar", "9"], ["--dropout-mar", "out of range [-5.0, 5.0]"]),
    "prelesion fraction": (["--prelesion-fraction", "1.5"], ["--prelesion-fraction", "out of range [0.0, 1.0]"]),
    "spatial strength": (["--spatial-strength", "-1"], ["--spatial-strength", "out of range"]),
    "set out of range": (["--set", "dispersion=50"], ["--set dispersion", "dispersion = 50.0 is out of range"]),
    "set unknown knob": (["--set", "shoe_size=3"], ["--set", "unknown knob 'shoe_size'"]),
    "set named knob": (["--set", "dropout_per_year=0.1"], ["use --dropout-per-year"]),
    "set own option": (["--set", "seed=4"], ["use --seed"]),
    "set no value": (["--set", "base_rate"], ["--set", "KNOB=VALUE"]),
    "set bad value": (["--set", "base_rate=fast"], ["--set", "'fast' is not a number"]),
    "set integer knob": (["--set", "n_sites=2.5"], ["--set", "expected an integer"]),
    "set twice": (["--set", "base_rate=2", "--set", "base_rate=3"], ["base_rate is set twice"]),
    "set unknown arm": (["--set", "aspirin.size_multiplier=0.5"], ["unknown arm 'aspirin'"]),
    "set arm field": (["--set", "dmf.colour=2"], ["--set", "rate_ratio, size_multiplier, black_hole_multiplier"]),
    "set reference rate ratio": (["--set", "placebo.rate_ratio=0.5"], ["reference arm"]),
    "set arm out of range": (["--set", "dmf.size_multiplier=0"], ["arm 'dmf'", "must be positive"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_world_options_are_one_line_exit_2_nothing_written(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options, words = BAD[case]
    out = tmp_path / "c"
    code, stdout, err = _run(capsys, "simulate", out, *SMALL, *options)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and err.startswith("mseval: error: ") and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_downstream_commands_on_the_default_multi_visit_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """simulate (default schedule) -> validate -> simulate-forecasts -> count -> effects -> report."""
    cohort = tmp_path / "cohort"
    code, _, err = _run(capsys, "simulate", cohort, "--shape", "16", "16", "16", "--patients-per-arm", "3", "--seed", "7")
    assert code == 0, err
    assert (pd.read_csv(cohort / "visits.csv")["visit_index"].max()) == 3
    code, out, err = _run(capsys, "validate", cohort)
    assert code == 0 and "OK (18 patients" in out, err
    code, _, err = _run(capsys, "simulate-forecasts", cohort, "--out", tmp_path / "fc", "--samples", "3")
    assert code == 0, err
    code, _, err = _run(capsys, "count", tmp_path / "fc", "--out", tmp_path / "cnt")
    assert code == 0 and (tmp_path / "cnt" / "counts.parquet").is_file(), err
    code, _, err = _run(capsys, "effects", cohort, tmp_path / "fc", "--out", tmp_path / "eff", "--power-sims", "0", "--bootstrap", "20", "--observed-bootstrap", "199")
    assert code == 0, err
    code, _, err = _run(capsys, "report", cohort, tmp_path / "fc", "--out", tmp_path / "rep", "--power-sims", "2", "--figure-formats", "png",
                        "--figure-dpi", "72", "--observed-bootstrap", "199")
    assert code == 0 and (tmp_path / "rep" / "report.html").is_file(), err
    assert {p.suffix for p in (tmp_path / "rep" / "figures").iterdir()} == {".png"}  # --figure-formats png: no PDF written


def test_effects_counts_a_patient_without_follow_up_as_randomized_not_analysed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With dropout a patient may have no follow-up scan at all; `effects` then analyses the others (never
    counting the absent scan as zero lesions) and lists that patient as randomized, not analysed, with the reason."""
    cohort = tmp_path / "cohort"
    code, _, err = _run(capsys, "simulate", cohort, "--shape", "16", "16", "16", "--patients-per-arm", "3", "--seed", "7",
                        "--dropout-per-year", "0.9")
    assert code == 0, err
    v = pd.read_csv(cohort / "visits.csv", keep_default_na=False)
    gone = sorted(set(v["patient_id"]) - set(v.loc[(v["visit_index"] > 0) & (v["missing"] == ""), "patient_id"]))
    assert gone, "18 patients at 0.9 dropouts a year: P(nobody leaves before week 24) < 0.001"
    code, _, err = _run(capsys, "simulate-forecasts", cohort, "--out", tmp_path / "fc", "--samples", "2")
    assert code == 0, err
    code, out, err = _run(capsys, "effects", cohort, tmp_path / "fc", "--out", tmp_path / "eff", "--power-sims", "0", "--observed-bootstrap", "199")
    assert code == 0, err
    na = pd.read_csv(tmp_path / "eff" / "not_analysed.csv")
    assert sorted(na["patient_id"]) == gone and na["reason"].str.contains("dropout from w").all(), na
    consort = pd.read_csv(tmp_path / "eff" / "consort.csv").set_index("arm")
    assert consort.loc["all", "randomized"] == 18 and consort.loc["all", "analysed"] == 18 - len(gone)
    assert consort.loc["all", "with_w24"] == v[(v["visit"] == "w24") & (v["missing"] == "")].shape[0]
    primary = pd.read_csv(tmp_path / "eff" / "primary_endpoint.csv").set_index("arm")
    m = pd.read_csv(cohort / "manifest.csv")
    for arm in primary.index:
        ids = set(m.loc[m["arm"] == arm, "patient_id"])
        assert primary.loc[arm, "n_randomized"] == len(ids) and primary.loc[arm, "n_analysed"] == len(ids - set(gone))
    assert f"randomized 18, analysed {18 - len(gone)}" in out, out
