"""Heterogeneity along predicted benefit: the interaction test keeps its level under a constant
rate ratio and has power with the simulator's age modifier; strata are tie-safe, sized, flagged.

100 null trials: a correct 5% test rejects more than 0.05 + 3 x 0.022 = 0.115 with probability
under 0.2%; without the prognostic main effect the test rejected 17% (issue 9 work)."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.ensemble_counts import forecast_means
from mseval.validity.forecast import DRUG, PLACEBO, heterogeneity_trials
from mseval.stats.heterogeneity import heterogeneity

MC = float(np.sqrt(0.05 * 0.95 / 100))


def test_interaction_test_level_and_power() -> None:
    null = heterogeneity_trials(100, modifier=0.0, patients_per_arm=80, samples=5, seed0=42_000)
    assert (null["p_value"] < 0.05).mean() <= 0.05 + 3 * MC
    alt = heterogeneity_trials(40, modifier=0.3, patients_per_arm=80, samples=5, seed0=43_000)
    assert (alt["p_value"] < 0.05).mean() > 0.5


def test_strata_are_tie_safe_sized_and_the_all_row_is_the_primary() -> None:
    tr = simulate_count_trial(TrialConfig(patients_per_arm=60, arms=(PLACEBO, DRUG), seed=11), samples=4)
    means = forecast_means(tr.counts)
    primary = fit_count_model(tr.table, "net2 ~ arm", reference="placebo").table
    h = heterogeneity(tr.table, means, "placebo", primary, min_per_arm=10).strata.set_index("stratum")
    assert h.loc["all", "observed_rate_ratio"] == primary.loc[0, "rate_ratio"] and h.loc["all", "ci_low"] == primary.loc[0, "ci_low"]
    assert not h.loc["top 10%", "estimable"] and np.isnan(h.loc["top 10%", "observed_rate_ratio"])  # 12 patients: < 10 per arm
    assert (h.loc[["top 10%", "top 30%", "top 50%"], "analysis"] == "exploratory").all()
    # all forecasts tied: every stratum holds every patient, whatever the row order
    tied = means.assign(expected=np.where(means["arm"] == "placebo", 5.0, 1.0))
    shuffled = tr.table.sample(frac=1.0, random_state=1)
    a = heterogeneity(tr.table, tied, "placebo", primary).strata
    b = heterogeneity(shuffled, tied, "placebo", primary).strata
    assert (a["n_arm"] == 60).all() and (a["n_reference"] == 60).all()
    pd.testing.assert_frame_equal(a, b)
    inter = heterogeneity(tr.table, tied, "placebo", primary).interaction.iloc[0]
    assert not inter["estimable"] and "same for every patient" in inter["note"]


def test_interaction_se_is_model_based_and_the_count_models_sandwich_is_beside_it() -> None:
    """The test's SE is the model-based (expected information) one, equal to fit_count_model(cov="expected")
    on the same model; the patient-level sandwich of fit_count_model(cov="robust") is reported beside it
    (not the test: it over-rejects in the null bench); se_method="robust" makes the sandwich the test's."""
    from mseval.stats.heterogeneity import interaction_test, predicted_benefit
    from mseval.stats.prognostic import prognostic_score

    tr = simulate_count_trial(TrialConfig(patients_per_arm=70, arms=(PLACEBO, DRUG), seed=5), samples=4)
    means = forecast_means(tr.counts)
    ben, prog = predicted_benefit(means, "placebo", DRUG.arm), prognostic_score(means, "placebo")
    res = interaction_test(tr.table, ben, DRUG.arm, "placebo", prognostic=prog)
    rob = interaction_test(tr.table, ben, DRUG.arm, "placebo", prognostic=prog, se_method="robust")
    d = tr.table.assign(score=(ben.loc[tr.table["patient_id"]].to_numpy() - ben.mean()) / ben.std(ddof=1),
                        prognostic_score=prog.loc[tr.table["patient_id"]].to_numpy())
    term = f"arm[T.{DRUG.arm}]:score"
    robust_fit = fit_count_model(d, "net2 ~ arm * score + prognostic_score", reference="placebo", cov="robust").rate_ratio(term)
    expected_fit = fit_count_model(d, "net2 ~ arm * score + prognostic_score", reference="placebo", cov="expected").rate_ratio(term)
    assert res["interaction_coef"] == pytest.approx(expected_fit["coef"], rel=1e-6)
    assert res["se"] == pytest.approx(expected_fit["se"], rel=1e-6) and "expected information" in res["se_method"]
    assert res["se_sandwich"] == pytest.approx(robust_fit["se"], rel=1e-6)
    assert rob["se"] == pytest.approx(res["se_sandwich"]) and rob["p_value"] == pytest.approx(res["p_value_sandwich"])
    assert "sandwich" in rob["se_method"] and res["se"] != pytest.approx(res["se_sandwich"], rel=1e-3)


def test_the_all_row_predicts_and_is_true_over_the_population_of_the_primary_table() -> None:
    """Six arms (issue 25): the "all" row's observed RR is the primary NB2 estimate, its predicted RR is
    the counterfactual ratio of means (every patient under both arms) and its true RR the primary
    table's true ratio over every patient; a stratum's predicted RR is over its own patients only."""
    from mseval.simulate.arms import DEFAULT_ARMS
    from mseval.stats.counterfactual import counterfactual_effects

    tr = simulate_count_trial(TrialConfig(patients_per_arm=12, arms=DEFAULT_ARMS, seed=5), samples=3)
    means = forecast_means(tr.counts)
    ref = next(a.arm for a in DEFAULT_ARMS if a.reference)
    primary = fit_count_model(tr.table, "net2 ~ arm", reference=ref).table
    truth = tr.truth.set_index(["patient_id", "arm"])["expected_count"]
    h = heterogeneity(tr.table, means, ref, primary, truth=tr.truth).strata
    cf = counterfactual_effects(means, ref).average.set_index("arm")
    everyone = list(pd.unique(means["patient_id"]))
    for arm, g in h.groupby("arm"):
        row = g.set_index("stratum").loc["all"]
        assert row["observed_rate_ratio"] == primary.set_index("term").loc[arm, "rate_ratio"]
        assert np.isclose(row["predicted_rate_ratio"], cf.loc[arm, "ratio_of_means"], rtol=1e-12)
        true_all = truth.loc[[(p, arm) for p in everyone]].sum() / truth.loc[[(p, ref) for p in everyone]].sum()
        assert np.isclose(row["true_rate_ratio"], true_all, rtol=1e-12)
        randomized = tr.table.loc[tr.table["arm"].isin([arm, ref]), "patient_id"]
        assert len(randomized) < len(everyone)  # the two populations differ, so the test can tell them apart
        assert "counterfactual" in row["predicted_over"]


def test_interaction_without_events_in_an_arm_or_with_a_zero_se_is_not_estimable() -> None:
    """An arm with no events (separation: its coefficients drift) is flagged, whichever SE is chosen --
    the sandwich alone gave a finite, meaningless SE there; and a zero SE gives a NaN p-value, never a
    division error or p = 0."""
    from mseval.stats.heterogeneity import _wald_p, interaction_test

    rng = np.random.default_rng(0)
    n = 12
    t = pd.DataFrame({"patient_id": [f"P{i}" for i in range(2 * n)], "arm": ["placebo"] * n + ["dmf"] * n,
                      "net2": list(rng.poisson(3, n)) + [0] * n, "followup_years": 1.0})
    benefit = pd.Series(rng.normal(size=2 * n), index=t["patient_id"])
    for se_method in ("model", "robust"):
        r = interaction_test(t, benefit, "dmf", "placebo", se_method=se_method)  # type: ignore[arg-type]
        assert not r["estimable"] and "no events" in r["note"] and np.isnan(r["p_value"])
    assert np.isnan(_wald_p(0.3, 0.0)) and np.isnan(_wald_p(0.3, float("nan"))) and _wald_p(0.0, 1.0) == 1.0
