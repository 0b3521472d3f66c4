"""Missing scans and dropout (issue 23 item 3): the count world's dropout, the exposure-based NB2, CONSORT
counts, intercurrent-event strategies and the MNAR sensitivity analysis. Tiny data; the Monte Carlo
coverage is in bench/validity_missing.py (bench/RESULTS.md)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.simulate.arms import ArmSpec
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.missing_data import (apply_intercurrent, consort_counts, estimand, exposure_from_visits, exposure_nb2, mnar_sensitivity,
                                       not_analysed, split_analysed)
from mseval.units import WEEKS_PER_YEAR

PLACEBO = ArmSpec("placebo", "Placebo", "none", 1.0, reference=True)
DRUG = ArmSpec("drug", "Drug", "moderate", 0.25)


@pytest.fixture(scope="module")
def dropped() -> tuple:
    tr = simulate_count_trial(TrialConfig(patients_per_arm=40, arms=(PLACEBO, DRUG), seed=5, dropout_per_year=0.4, dropout_mar=1.0,
                                          missed_visit=0.15), samples=1)
    return tr, tr.table.assign(planned_years=tr.table["followup_years"])


def test_without_dropout_every_visit_is_observed_and_the_observed_columns_are_the_full_ones() -> None:
    tr = simulate_count_trial(TrialConfig(patients_per_arm=5, seed=3), samples=1)
    assert (tr.visits["missing"] == "").all() and tr.visits["net2"].dtype == np.int64
    assert np.array_equal(tr.table["observed_net2"].to_numpy(), tr.table["net2"].to_numpy())
    assert np.allclose(tr.table["observed_years"], tr.table["followup_years"])
    # interval starts are the previous scheduled visit, as before dropout existed
    v = tr.visits
    assert np.allclose(v["start_weeks"].to_numpy()[1:][v["visit_index"].to_numpy()[1:] > 1], v["end_weeks"].to_numpy()[:-1][v["visit_index"].to_numpy()[1:] > 1])


def test_dropout_follows_the_simulator_law() -> None:
    """P(dropout before the first visit) = 1 - exp(-h w1 / 52.18) with h = dropout_per_year (no MAR/MNAR term):
    600 patients, tolerance 4 binomial SEs; dropout is absorbing."""
    cfg = TrialConfig(patients_per_arm=300, arms=(PLACEBO, DRUG), seed=9, dropout_per_year=0.5)
    tr = simulate_count_trial(cfg, samples=1)
    v = tr.visits.merge(tr.table[["patient_id"]], on="patient_id")
    first = v[v["visit_index"] == 1]
    p = float(np.mean(1 - np.exp(-0.5 * first["end_weeks"].to_numpy() / WEEKS_PER_YEAR)))
    share = float((first["missing"] == "dropout").mean())
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / len(first)), (share, p)
    wide = v.pivot(index="patient_id", columns="visit_index", values="missing")
    gone = wide.eq("dropout").to_numpy()
    assert not (gone[:, :-1] & ~gone[:, 1:]).any(), "a patient came back after dropout"


def test_observed_intervals_count_from_the_previous_scan_that_took_place(dropped: tuple) -> None:
    tr, t = dropped
    v = tr.visits
    assert set(v["missing"]) == {"", "dropout", "missed"}
    assert v.loc[v["missing"] != "", "net2"].isna().all() and v.loc[v["missing"] == "", "net2"].notna().all()
    for _, g in v.groupby("patient_id"):
        last = 0.0
        for r in g.itertuples():
            if r.missing == "":
                assert r.start_weeks == last
                last = r.end_weeks
    ex = exposure_from_visits(v).merge(t, on="patient_id")
    assert (ex["observed_net2_x"].fillna(-1) == ex["observed_net2_y"].fillna(-1)).all()
    assert np.allclose(ex["observed_years_x"].fillna(-1), ex["observed_years_y"].fillna(-1))
    both = t[t["observed_net2"].notna()]
    assert (both["observed_net2"] <= both["net2"]).all() and (both["observed_years"] <= both["followup_years"] + 1e-12).all()


def test_exposure_nb2_is_the_nb2_on_the_patients_with_follow_up(dropped: tuple) -> None:
    _, t = dropped
    ea = exposure_nb2(t, "observed_net2 ~ arm", years="observed_years", reference="placebo")
    keep = t[t["observed_net2"].notna()].assign(observed_net2=lambda d: d["observed_net2"].astype(int))
    direct = fit_count_model(keep, "observed_net2 ~ arm", offset_years="observed_years", reference="placebo")
    assert np.allclose(ea.fit.table["coef"], direct.table["coef"], rtol=1e-10)
    assert sorted(ea.not_analysed["patient_id"]) == sorted(t.loc[t["observed_net2"].isna(), "patient_id"])
    c = ea.counts.set_index("arm")
    assert c["randomized"].sum() == len(t) and c["analysed"].sum() == len(keep)
    assert c.loc["drug", "exposure_years"] == pytest.approx(keep.loc[keep["arm"] == "drug", "observed_years"].sum())
    assert "MAR" in ea.summary() or "missing at random" in ea.summary()
    assert (ea.to_frame()["estimand"].str.contains("randomized population")).all()


VISITS = pd.DataFrame({
    "patient_id": ["A"] * 4 + ["B"] * 4 + ["C"] * 4 + ["D"] * 4,
    "visit": ["baseline", "w24", "w48", "w96"] * 4,
    "visit_index": [0, 1, 2, 3] * 4,
    "end_weeks": [0, 24, 48, 96] * 4,
    "net2": pd.array([pd.NA, 1, 0, 2, pd.NA, 3, pd.NA, pd.NA, pd.NA, pd.NA, pd.NA, pd.NA, pd.NA, pd.NA, 2, 1], dtype="Int64"),
    "missing": ["", "", "", "", "", "", "dropout", "dropout", "", "dropout", "dropout", "dropout", "", "missed", "", ""],
})
PATIENTS = pd.DataFrame({"patient_id": ["A", "B", "C", "D"], "arm": ["placebo", "drug", "drug", "placebo"]})


def test_consort_counts_a_hand_made_cohort() -> None:
    c = consort_counts(PATIENTS, VISITS).set_index("arm")
    assert c.loc["all", "randomized"] == 4 and c.loc["all", "with_w24"] == 2 and c.loc["all", "with_w48"] == 2 and c.loc["all", "with_w96"] == 2
    assert c.loc["all", "completed"] == 1 and c.loc["all", "lost_dropout"] == 2 and c.loc["all", "analysed"] == 3
    assert c.loc["drug", "randomized"] == 2 and c.loc["drug", "analysed"] == 1 and c.loc["drug", "not_analysed"] == 1
    assert "lost_missed" not in c.columns  # D missed w24 but its last visit took place
    na = not_analysed(PATIENTS, VISITS, ["A", "B", "D"])
    assert na.to_dict("records") == [{"patient_id": "C", "arm": "drug", "reason": "no follow-up scan: dropout from w24"}]
    ex = exposure_from_visits(VISITS).set_index("patient_id")
    assert ex.loc["A", "observed_net2"] == 3 and ex.loc["B", "observed_net2"] == 3 and pd.isna(ex.loc["C", "observed_net2"])
    assert ex.loc["D", "observed_years"] == pytest.approx(96 / WEEKS_PER_YEAR) and ex.loc["B", "visits_observed"] == 1
    assert np.allclose(ex["planned_years"], 96 / WEEKS_PER_YEAR)
    single = consort_counts(PATIENTS, None, ["A", "B"]).set_index("arm")
    assert list(single.columns) == ["randomized", "analysed", "not_analysed"] and single.loc["all", "not_analysed"] == 2


def test_split_analysed_keeps_randomized_patients_without_a_count_out_of_the_fit() -> None:
    table = PATIENTS.assign(net2=pd.array([3, 3, pd.NA, 3], dtype="Int64"))
    analysed, consort, gone = split_analysed(table, VISITS)
    assert list(analysed["patient_id"]) == ["A", "B", "D"] and analysed["net2"].dtype == np.int64
    assert consort.set_index("arm").loc["all", "analysed"] == 3 and list(gone["patient_id"]) == ["C"]


def test_intercurrent_strategies() -> None:
    e = estimand()
    f = e.to_frame()
    assert set(f["attribute"]) == {"population", "treatment", "variable", "intercurrent event", "summary measure", "missing data"}
    assert f.loc[f["attribute"] == "intercurrent event", "strategy"].str.endswith("treatment policy").all()
    h = estimand({"treatment discontinuation": "hypothetical"}).to_frame()
    assert "set missing" in h.loc[h["attribute"] == "intercurrent event", "description"].iloc[0]
    with pytest.raises(InputError, match="while on treatment"):
        estimand({"treatment discontinuation": "while on treatment"})
    events = pd.DataFrame({"patient_id": ["A"], "event": ["treatment discontinuation"], "weeks": [30.0]})
    assert apply_intercurrent(VISITS, events) is VISITS
    hyp = apply_intercurrent(VISITS, events, "hypothetical")
    a = hyp[hyp["patient_id"] == "A"]
    assert list(a["missing"]) == ["", "", "intercurrent", "intercurrent"] and a["net2"].iloc[2:].isna().all()
    ex = exposure_from_visits(hyp).set_index("patient_id")
    assert ex.loc["A", "observed_net2"] == 1 and ex.loc["A", "observed_years"] == pytest.approx(24 / WEEKS_PER_YEAR)
    assert hyp[hyp["patient_id"] != "A"].equals(VISITS[VISITS["patient_id"] != "A"].astype(hyp.dtypes.to_dict()))


def test_mnar_sensitivity_without_missing_follow_up_is_the_mar_fit() -> None:
    tr = simulate_count_trial(TrialConfig(patients_per_arm=15, arms=(PLACEBO, DRUG), seed=2), samples=1)
    t = tr.table.assign(planned_years=tr.table["followup_years"])
    s = mnar_sensitivity(t, "observed_net2 ~ arm", years="observed_years", reference="placebo", deltas=(0.0, 1.0), imputations=3, seed=1)
    mar = exposure_nb2(t, "observed_net2 ~ arm", years="observed_years", reference="placebo").fit.rate_ratio("drug")
    assert np.allclose(s.table["rate_ratio"], mar.rate_ratio, rtol=1e-10) and np.allclose(s.table["fmi"], 0.0)


def test_mnar_sensitivity_moves_as_documented(dropped: tuple) -> None:
    _, t = dropped
    kw = dict(years="observed_years", reference="placebo", imputations=5, seed=4)
    s = mnar_sensitivity(t, "observed_net2 ~ arm", deltas=(0.0, 1.0, 3.0), **kw)
    rr = s.table.sort_values("delta")["rate_ratio"].to_numpy()
    assert np.all(np.diff(rr) > 0), "a worse rate after dropout on the drug arm raises its rate ratio"
    assert (s.table["fmi"] > 0).all() and (s.table["imputations"] == 5).all()
    mar = exposure_nb2(t, "observed_net2 ~ arm", **{k: kw[k] for k in ("years", "reference")}).fit.rate_ratio("drug")
    at0 = s.table[s.table["delta"] == 0].iloc[0]
    assert abs(np.log(at0["rate_ratio"]) - np.log(mar.rate_ratio)) < at0["se"], "delta = 0 reproduces MAR within the pooled SE"
    tip = s.tipping.iloc[0]
    assert tip["mar_significant"] and tip["flips"], s.summary()
    g = s.table.set_index("delta")["p_value"]
    assert g[tip["tipping_delta"]] >= 0.05 and (g[g.index < tip["tipping_delta"]] < 0.05).all()
    again = mnar_sensitivity(t, "observed_net2 ~ arm", deltas=(0.0, 1.0, 3.0), **kw)
    pd.testing.assert_frame_equal(s.table, again.table)
    j2r = mnar_sensitivity(t, "observed_net2 ~ arm", method="j2r", **kw)
    assert mar.rate_ratio < j2r.table["rate_ratio"].iloc[0] < 1.0
    assert any("jump to reference" in a for a in j2r.assumptions) and any("exp(delta)" in a for a in s.assumptions)
    with pytest.raises(InputError, match="planned"):
        mnar_sensitivity(t.drop(columns="planned_years"), "observed_net2 ~ arm", **kw)


def test_the_bench_loops_agree_with_the_full_data_without_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    import mseval.validity.missing as MV
    from mseval.validity.missing import _crossing, coverage_summary, dropout_trials

    monkeypatch.setattr(MV, "population_rate_ratios", lambda cfg: {"placebo": 1.0, "drug": 0.25})  # the 400k-patient target is the bench's
    tr = dropout_trials(1, TrialConfig(patients_per_arm=10, arms=(PLACEBO, DRUG)), seed0=3)
    assert np.allclose(tr["exp_rate_ratio"], tr["full_rate_ratio"]) and tr["exposure_lost"].iloc[0] == pytest.approx(0.0)
    assert coverage_summary(tr).set_index("arm").loc["all arms", "exp_estimable"] == 1
    assert _crossing(np.array([-1.0, 0.0, 1.0]), np.array([3.0, 2.0, 0.0]), 1.0) == pytest.approx(0.5)
    assert np.isnan(_crossing(np.array([0.0, 1.0]), np.array([1.0, 2.0]), 5.0))


def test_mnar_sensitivity_with_an_arm_without_events_flags_instead_of_crashing() -> None:
    """An arm with no events (its MAR coefficient drifts, its SE is huge): beta draws along that direction give
    imputed means that overflow. Those imputations count as failed and the rows say so (not estimable), never
    a cast of NaN into a count (which made `mseval demo` stop with a false error about the user's net2)."""
    rng = np.random.default_rng(3)
    n = 10
    t = pd.DataFrame({"arm": ["placebo"] * n + ["drug"] * n,
                      "observed_net2": np.concatenate([rng.poisson(4.0, n), np.zeros(n, dtype=int)]),
                      "observed_years": np.r_[np.full(n - 2, 1.8), [0.9, 0.5], np.full(n - 2, 1.8), [0.9, 0.5]],
                      "planned_years": 1.8})
    s = mnar_sensitivity(t, "observed_net2 ~ arm", years="observed_years", reference="placebo", deltas=(0.0, 1.0), imputations=4, seed=2)
    assert len(s.table) == 2 and not s.table["estimable"].any() and not s.table["significant"].any()
    assert s.table["note"].str.contains("MAR estimate of this arm is not estimable").all()
    assert s.table["note"].str.contains("imputations failed").all()  # draws along the drifting coefficient overflow
