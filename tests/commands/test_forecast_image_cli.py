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
                 "--count-trunk", "gated", "--seed", "4", "--val-fraction", "0.5"]) == 0
    return out


def test_train_then_laws(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    assert (trained / "image_count.json").is_file() and (trained / "weights.pt").is_file()
    r = cli("forecast", "image-laws", visits_cohort, trained, "--out", tmp_path / "laws.csv", "--reference-arm", "placebo")
    assert r.code == 0, r.err
    assert "no training uncertainty" in r.out
    t = pd.read_csv(tmp_path / "laws.csv")
    assert tuple(t.columns) == LAW_COLUMNS and len(t) == 12 * 6 * 3 and t["estimable"].all()
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


def test_sampled_trajectories_are_coherent_and_order_free(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """Each member's counts never decrease, its lesions present at a visit are those born by then, and a patient's
    members are the same when sampled alone (seeds from names, not order)."""
    from forecast.image_count_pipeline import forecast_trajectories

    r = cli("forecast", "image-sample", visits_cohort, trained, "--out", tmp_path / "s", "--samples", "6", "--seed", "9")
    assert r.code == 0, r.err
    counts, lesions = pd.read_csv(tmp_path / "s" / "counts.csv"), pd.read_csv(tmp_path / "s" / "lesions.csv")
    assert len(counts) == 12 * 6 * 6 * 3
    order = {"w24": 0, "w48": 1, "w96": 2}
    for (pid, arm, m), c in counts.groupby(["patient_id", "arm", "member"]):
        c = c.sort_values("scheduled_weeks")
        assert (np.diff(c["net2"]) >= 0).all()
        born = lesions[(lesions.patient_id == pid) & (lesions.arm == arm) & (lesions.member == m)]["birth_visit"].map(order)
        assert [int((born <= v).sum()) for v in range(3)] == c["placed"].tolist()
    pid = counts["patient_id"].iloc[-1]
    alone, _ = forecast_trajectories(visits_cohort, trained, samples=6, seed=9, patients=[pid])
    assert alone.reset_index(drop=True).equals(counts[counts.patient_id == pid].reset_index(drop=True))
    assert counts["net2"].sum() > 0 and len(lesions) > 0


def test_a_degenerate_count_law_is_flagged_not_printed(cli, trained: Path, visits_cohort: Path, tmp_path: Path) -> None:
    """A count law with absurd rates (the head's interval biases pushed up by 30 nats): the law table keeps its rows
    with estimable False, a note and no numbers; sampling stops with one line naming the checkpoint's weights."""
    import torch

    from forecast.image_count_checkpoint import load_image_count, save_image_count

    net, meta, _ = load_image_count(trained)
    with torch.no_grad():
        net.count[-1].bias[: net.n_intervals] += 30.0
    save_image_count(tmp_path / "deg", net, inputs=meta.inputs, normalization=meta.normalization, arms=meta.arms, visits=meta.visits,
                     weeks=meta.weeks, shape=meta.shape)
    r = cli("forecast", "image-laws", visits_cohort, tmp_path / "deg", "--out", tmp_path / "laws.csv")
    assert r.code == 0, r.err
    t = pd.read_csv(tmp_path / "laws.csv")
    assert not t["estimable"].any() and t["expected_net2"].isna().all() and t["note"].str.contains("not estimable").all()
    r = cli("forecast", "image-sample", visits_cohort, tmp_path / "deg", "--out", tmp_path / "s")
    assert r.code == 2 and "degenerate" in r.err and "weights.pt" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
