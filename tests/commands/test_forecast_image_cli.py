"""`mseval forecast image-train` / `image-laws` on the 20^3 three-visit cohort: a checkpoint from observed outcomes, the
law table's estimands and contrasts, and one clean line (exit 2) for each input the checkpoint cannot take."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast.image_count_pipeline import LAW_COLUMNS


@pytest.fixture(scope="module")
def trained(visits_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mseval.cli import main

    out = tmp_path_factory.mktemp("icli") / "ckpt"
    assert main(["forecast", "image-train", str(visits_cohort), "--out", str(out), "--epochs", "2", "--hidden", "4", "--count-hidden", "3",
                 "--count-trunk", "gated", "--count-head", "linear", "--seed", "4", "--val-fraction", "0.5"]) == 0
    return out


def test_train_then_laws(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    assert (trained / "image_count.json").is_file() and (trained / "weights.pt").is_file()
    r = cli("forecast", "image-laws", visits_cohort, trained, "--out", tmp_path / "laws.csv", "--reference-arm", "placebo")
    assert r.code == 0, r.err
    assert "no training uncertainty" in r.out
    t = pd.read_csv(tmp_path / "laws.csv")
    assert tuple(t.columns) == LAW_COLUMNS and len(t) == 12 * 6 * 3
    assert (t["reference_arm"] == "placebo").all() and np.allclose(t.loc[t["arm"] == "placebo", "log_rate_ratio"], 0.0)
    g = t.sort_values("scheduled_weeks").groupby(["patient_id", "arm"])
    assert (g["expected_net2"].diff().dropna() >= 0).all()  # cumulative counts never decrease over the schedule
    a, m = t["dispersion"], t["expected_net2"]
    assert np.allclose(t["p_active"], 1 - (1 + a * m) ** (-1 / a))
    pla = t[t["arm"] == "placebo"].set_index(["patient_id", "visit"])["expected_net2"]
    for arm, d in t[t["arm"] != "placebo"].groupby("arm"):  # the contrast is the patient's own mean ratio
        d = d.set_index(["patient_id", "visit"])
        assert np.allclose(d["log_rate_ratio"], np.log(d["expected_net2"] / pla.loc[d.index]), atol=1e-5), arm
    assert t.groupby("arm")["log_rate_ratio"].mean().abs().max() > 1e-6  # the arm reaches the law


def test_bad_inputs_one_line_exit_2(cli, trained: Path, visits_cohort: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "laws.csv"
    bad = tmp_path / "bad"
    shutil.copytree(visits_cohort, bad)
    v = pd.read_csv(bad / "visits.csv")
    v.loc[v["visit"] == "w96", "scheduled_weeks"] = 104.0
    v.to_csv(bad / "visits.csv", index=False)
    cases = [
        (("forecast", "image-laws", tiny_cohort, trained, "--out", out), "shape"),  # a 32^3 single-visit cohort
        (("forecast", "image-laws", bad, trained, "--out", out), "week 104"),
        (("forecast", "image-laws", visits_cohort, tmp_path / "nothing", "--out", out), "not found"),
        (("forecast", "image-laws", visits_cohort, trained, "--out", out, "--reference-arm", "x"), "never seen"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--count-head", "gam"), "choose one of"),
        (("forecast", "image-train", visits_cohort, "--out", tmp_path / "c", "--val-fraction", "1"), "strictly between"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, (message, r.err)
    assert not out.exists() and not (tmp_path / "c").exists()
