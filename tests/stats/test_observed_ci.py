"""The observed rate ratio's reported interval (`mseval.stats.observed_ci`): which one `auto` picks, that each
equals the computation it names, that the bootstrap is seeded, and that it widens where the model-based CI is
short (a treated arm more overdispersed than the reference). Coverage on 1,000 trials: bench/RESULTS.md, rule R15."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.observed_ci import chosen_method, observed_intervals
from mseval.stats.small_sample import SMALL_SAMPLE_N, primary_tests
from mseval.validity.observed import DRUG, PLACEBO


@pytest.fixture(scope="module")
def trial() -> pd.DataFrame:
    return simulate_count_trial(replace(TrialConfig(patients_per_arm=60, arms=(PLACEBO, DRUG)), seed=11), samples=1).table


def test_auto_is_the_bootstrap_below_the_sap_threshold_and_the_sandwich_above() -> None:
    assert chosen_method("auto", SMALL_SAMPLE_N - 1) == "bootstrap_t"
    assert chosen_method("auto", SMALL_SAMPLE_N) == "robust"
    assert chosen_method("model", 10) == "model"
    with pytest.raises(InputError, match="unknown observed interval 'sandwich'"):
        chosen_method("sandwich", 10)


def test_each_interval_is_the_computation_it_names(trial: pd.DataFrame) -> None:
    fit = fit_count_model(trial, "net2 ~ arm + gd_count", reference="placebo")
    boot = observed_intervals(trial, fit, seed=3, n_bootstrap=99).set_index("arm").loc["dmf"]
    direct = primary_tests(trial, "net2 ~ arm + gd_count", reference="placebo", method="bootstrap_t", seed=3, n_bootstrap=99).table.set_index("arm").loc["dmf"]
    assert boot["method"] == "bootstrap_t" and "99 resamples" in boot["ci_method"]
    assert direct["rate_ratio"] == pytest.approx(fit.rate_ratio("dmf")["rate_ratio"], rel=1e-9)  # the bootstrap centres on the glm.nb estimate
    assert boot["ci_low"] < boot["rate_ratio"] < boot["ci_high"]
    assert (boot["ci_low"], boot["ci_high"], boot["p_value"]) == pytest.approx((direct["ci_low"], direct["ci_high"], direct["p_value"]), rel=1e-12)
    assert boot["p_value_symmetric"] == direct["p_value_symmetric"]
    model = observed_intervals(trial, fit, method="model").set_index("arm").loc["dmf"]
    assert (model["ci_low"], model["ci_high"]) == pytest.approx((fit.rate_ratio("dmf")["ci_low"], fit.rate_ratio("dmf")["ci_high"]), rel=1e-12)
    robust = observed_intervals(trial, fit, method="robust").set_index("arm").loc["dmf"]
    sandwich = fit_count_model(trial, "net2 ~ arm + gd_count", reference="placebo", cov="robust").rate_ratio("dmf")
    assert (robust["ci_low"], robust["ci_high"]) == pytest.approx((sandwich["ci_low"], sandwich["ci_high"]), rel=1e-12)
    assert len({round(x, 6) for x in (boot["ci_low"], model["ci_low"], robust["ci_low"])}) == 3


def test_the_bootstrap_is_seeded(trial: pd.DataFrame) -> None:
    fit = fit_count_model(trial, "net2 ~ arm", reference="placebo")
    a, b, c = (observed_intervals(trial, fit, seed=s, n_bootstrap=99) for s in (5, 5, 6))
    pd.testing.assert_frame_equal(a, b)
    assert a.loc[0, "ci_low"] != c.loc[0, "ci_low"]


def test_the_bootstrap_widens_where_the_treated_arm_is_more_overdispersed() -> None:
    """Placebo NB2 with alpha 0.3, the treated arm alpha 3 (10 times): one common dispersion understates the treated
    arm's variance, so the model-based CI is narrower than the sandwich's and the bootstrap's (a wrong pivot, or the
    model-based SE in it, would not widen)."""
    rng = np.random.default_rng(4)
    n = 150
    mu = np.r_[np.full(n, 4.0), np.full(n, 2.0)]
    alpha = np.r_[np.full(n, 0.3), np.full(n, 3.0)]
    y = rng.poisson(rng.gamma(1 / alpha, mu * alpha))
    d = pd.DataFrame({"patient_id": [f"P{i}" for i in range(2 * n)], "arm": ["placebo"] * n + ["drug"] * n, "net2": y, "followup_years": 1.0})
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo")
    width = {m: float(np.log(r.ci_high / r.ci_low)) for m in ("model", "robust", "bootstrap_t")
             for r in observed_intervals(d, fit, method=m, n_bootstrap=499).itertuples()}
    assert width["robust"] > 1.1 * width["model"], width
    assert width["bootstrap_t"] > 1.1 * width["model"], width


def test_an_event_free_arm_is_flagged(trial: pd.DataFrame) -> None:
    d = trial.assign(net2=np.where(trial["arm"] == "dmf", 0, trial["net2"]))
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo")
    r = observed_intervals(d, fit, n_bootstrap=49).iloc[0]
    assert not r["estimable"] and r["note"]


def test_the_p_value_is_the_intervals_dual() -> None:
    """Equal-tailed bootstrap-t: p <= 0.05 exactly when t lies outside [t*_(0.025), t*_(0.975)] (the CI excludes 1),
    where the symmetric p can disagree with skewed replicates."""
    from mseval.stats.small_sample import bootstrap_t_p

    tstar = np.r_[np.linspace(-1.5, 0, 500), np.linspace(0, 4.0, 499)]  # skewed: long right tail
    lo_q, hi_q = np.quantile(tstar, [0.025, 0.975])
    for t in (-1.6, -1.2, 0.5, 3.0, 3.95, 4.5):
        assert (bootstrap_t_p(tstar, t) <= 0.05) == (not lo_q <= t <= hi_q), t
    assert bootstrap_t_p(tstar, -1.6) <= 0.05 < (1 + np.sum(np.abs(tstar) >= 1.6)) / (1 + len(tstar))  # they disagree here


def test_an_arm_interaction_falls_back_to_the_sandwich_with_a_note(trial: pd.DataFrame) -> None:
    fit = fit_count_model(trial, "net2 ~ arm * gd_count", reference="placebo")
    r = observed_intervals(trial, fit, n_bootstrap=49).set_index("arm").loc["dmf"]
    sandwich = fit_count_model(trial, "net2 ~ arm * gd_count", reference="placebo", cov="robust").rate_ratio("dmf")
    assert r["method"] == "robust" and "cannot take this model" in r["note"]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((sandwich["ci_low"], sandwich["ci_high"]), rel=1e-12)


def test_the_model_interval_names_the_se_it_was_fitted_with(trial: pd.DataFrame) -> None:
    words = {cov: observed_intervals(trial, fit_count_model(trial, "net2 ~ arm", reference="placebo", cov=cov), method="model").loc[0, "ci_method"]
             for cov in ("expected", "observed", "robust")}
    assert "glm.nb" in words["expected"] and "observed information" in words["observed"] and "sandwich" in words["robust"]
    assert "glm.nb" not in words["robust"]


def test_the_validity_study_scores_the_default_interval() -> None:
    from mseval.validity.observed import NULL, repeated_trials, summarize

    s = summarize(repeated_trials(3, patients_per_arm=30, drug=NULL, seed0=17, bootstrap_t=19))
    assert {"bootstrap_t_coverage", "bootstrap_t_rejection_rate", "bootstrap_t_rejection_rate_symmetric", "bootstrap_t_null_ci_excludes_1"} <= set(s)
    assert 0.0 <= s["bootstrap_t_rejection_rate"] <= 1.0


def test_with_intervals_replaces_the_arm_rows_only(trial: pd.DataFrame) -> None:
    from mseval.stats.observed_ci import with_intervals

    fit = fit_count_model(trial, "net2 ~ arm + gd_count", reference="placebo")
    iv = observed_intervals(trial, fit, seed=1, n_bootstrap=99)
    t = with_intervals(fit, iv).set_index("term")
    assert t.loc["dmf", "ci_low"] == iv.loc[0, "ci_low"] and "bootstrap" in t.loc["dmf", "ci_method"]
    assert t.loc["gd_count", "ci_low"] == fit.rate_ratio("gd_count")["ci_low"] and "glm.nb" in t.loc["gd_count", "ci_method"]
    assert t.loc["dmf", "ci_low"] != fit.rate_ratio("dmf")["ci_low"]


def test_too_few_usable_refits_is_flagged_not_a_crash() -> None:
    """Two patients per arm: most resamples cannot be fitted; the interval is flagged (note says why), no exception."""
    d = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "arm": ["placebo", "placebo", "drug", "drug"], "net2": [3, 0, 1, 0],
                      "followup_years": 1.0})
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo")
    r = observed_intervals(d, fit, n_bootstrap=49).iloc[0]
    assert r["method"] == "bootstrap_t" and (not r["estimable"] or np.isfinite(r["ci_low"]))


def test_a_resample_with_an_event_free_arm_puts_that_arm_at_minus_infinity() -> None:
    """An arm with 1 event in 8 patients is event-free in a resample with probability (7/8)^8 = 0.34: its coefficient
    is at -inf there with a finite SE, so its replicate is -inf (kept: dropping it would cut the lower tail and shorten
    the CI), while the other arms keep theirs (the limit MLE without the event-free arm's rows). With a third of the
    replicates at -inf the arm's CI has no upper bound: flagged, not printed; its p counts them."""
    from mseval.stats.nb2_mle import fit_nb2
    from mseval.stats.small_sample import bootstrap_t_replicates, build_model

    rng = np.random.default_rng(2)
    d = pd.DataFrame({"patient_id": [f"P{i}" for i in range(24)], "arm": ["a"] * 8 + ["b"] * 8 + ["c"] * 8,
                      "net2": np.r_[rng.poisson(4, 8), rng.poisson(2, 8), [1] + [0] * 7], "followup_years": 1.0})
    m = build_model(d, "net2 ~ arm", "arm", "a")
    t = bootstrap_t_replicates(m, "common", 400, 0, fit_nb2(m.y, m.X, m.off))
    jb, jc = m.arm_cols["b"], m.arm_cols["c"]
    assert abs(np.isneginf(t[:, jc]).mean() - (7 / 8) ** 8) < 0.1 and not np.isnan(t[:, jc]).any()
    assert np.isfinite(t[:, jb]).mean() > 0.95
    r = primary_tests(d, "net2 ~ arm", reference="a", method="bootstrap_t", n_bootstrap=199).table.set_index("arm")
    assert np.isinf(r.loc["c", "ci_high"]) and not r.loc["c", "estimable"] and r.loc["c", "p_value"] > 0.3
    assert np.isfinite(r.loc["b", "ci_high"]) and r.loc["b", "estimable"]
