"""bench/effects_references.py: the truth's observable part (the patient's response integrated out) and the slopes
reported against it and against the per-patient truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.effects_references import effect_accuracy, observable_log_rate_ratios, population_ratios
from mseval.simulate.model import effect_multiplier


def test_observable_part_integrates_out_the_response(visits_cohort: Path, tmp_path: Path) -> None:
    """log E_R[RR^(m R)] by quadrature equals a Monte-Carlo mean over R = exp(sd Z) to 1e-3 (and is 0 on the reference
    arm); the exact observable law has slope 1 on itself and below 1 on the per-patient truth; with response_sd 0 it is
    m log RR, the truth without a response."""
    cfg = json.loads((visits_cohort / "simulation.json").read_text())["config"]
    obs = observable_log_rate_ratios(visits_cohort)
    ages = pd.read_csv(visits_cohort / "manifest.csv").set_index("patient_id")["age"]
    z = np.random.default_rng(0).standard_normal(400_000)
    arm = next(a for a in cfg["arms"] if not a.get("reference"))
    row = obs[obs["arm"] == arm["arm"]].iloc[0]
    m = effect_multiplier(np.array([ages[row["patient_id"]]]), float(cfg["modifier"]))[0]
    mc = np.log(np.mean(arm["rate_ratio"] ** (m * np.exp(cfg["response_sd"] * z))))
    assert row["lrr"] == pytest.approx(mc, abs=1e-3) and cfg["response_sd"] > 0
    assert (obs.loc[obs["arm"] == next(a["arm"] for a in cfg["arms"] if a.get("reference")), "lrr"] == 0).all()

    ref = next(a["arm"] for a in cfg["arms"] if a.get("reference"))
    exact = effect_accuracy({}, visits_cohort, ref)["observable_truth"]["pooled"]
    assert exact["slope_pred_on_observable"] == pytest.approx(1.0) and exact["slope_pred_on_true"] < 1.0

    nores = tmp_path / "c"
    nores.mkdir()
    for name in ("simulation.json", "manifest.csv"):
        shutil.copy(visits_cohort / name, nores / name)
    sim = json.loads((nores / "simulation.json").read_text())
    sim["config"]["response_sd"] = 0.0
    (nores / "simulation.json").write_text(json.dumps(sim))
    o0 = observable_log_rate_ratios(nores)
    m_all = effect_multiplier(ages.loc[o0["patient_id"]].to_numpy(), float(cfg["modifier"]))
    rr = o0["arm"].map({a["arm"]: a["rate_ratio"] for a in cfg["arms"]}).to_numpy(float)
    assert np.allclose(o0["lrr"], m_all * np.log(rr))


def test_population_ratios_of_the_truth_itself_are_one(visits_cohort: Path) -> None:
    """A law whose expected counts are truth.csv's has law / same-patient truth = 1 for every active arm; its ratio to the
    superpopulation target is near 1 (12 patients: within a factor 2); halving one arm's means halves that arm's ratio."""
    truth = pd.read_csv(visits_cohort / "truth.csv").rename(columns={"expected_count": "mu"})[["patient_id", "arm", "mu"]]
    out = population_ratios(truth, visits_cohort, "placebo")
    assert set(out) == set(truth["arm"]) - {"placebo"}
    for arm, r in out.items():
        assert r["law_over_same"] == pytest.approx(1.0) and 0.5 < r["law_over_population"] < 2.0
    arm = sorted(out)[0]
    half = population_ratios(truth.assign(mu=np.where(truth["arm"] == arm, truth["mu"] / 2, truth["mu"])), visits_cohort, "placebo")
    assert half[arm]["law_over_same"] == pytest.approx(0.5)
