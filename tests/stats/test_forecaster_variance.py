"""The two-level variance over K forecasters (mseval.stats.forecaster_variance), the NB2 forecaster
family (mseval.stats.nb2_forecaster) and the Monte Carlo part of the stacked sandwich."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mseval.errors import InputError
from mseval.simulate.counts_only import simulate_count_trial
from mseval.stats.counterfactual import counterfactual_effects
from mseval.stats.design import design_matrix
from mseval.stats.ensemble_counts import forecast_means
from mseval.validity.forecasters import pair_config, summarize_pairs, trained_forecaster_pairs
from mseval.stats.forecaster_variance import counterfactual_arrays, forecaster_effects, split_forecasters, two_level_combine
from mseval.stats.nb2_forecaster import draw_family, fit_forecaster_family
from mseval.stats.synthetic import stacked_sandwich


def test_two_level_rule_covers_in_its_own_model():
    """q_k = theta_hat + d_k + c + e_k (training error, bootstrap deviation, shared patient error, ensemble
    noise): the rule's t interval covers the target at 95% within 3 binomial SEs over 4000 replicates."""
    rng = np.random.default_rng(1)
    K, reps, v_train, v_pat, v_mc = 10, 4000, 0.04, 0.02, 0.01
    covers = []
    for _ in range(reps):
        theta_hat = rng.normal(0, np.sqrt(v_train))
        c = rng.normal(0, np.sqrt(v_pat))
        q = theta_hat + rng.normal(0, np.sqrt(v_train), K) + c + rng.normal(0, np.sqrt(v_mc), K)
        w = (v_pat + v_mc) * rng.chisquare(198, K) / 198
        s = v_mc * rng.chisquare(90, K) / 90
        covers.append(two_level_combine(q, w, s, df_within=198).covers(0.0))
    cov = float(np.mean(covers))
    assert abs(cov - 0.95) < 3 * np.sqrt(0.95 * 0.05 / reps), cov


def test_two_level_rule_components_and_positivity_fix():
    same = two_level_combine([0.1, 0.1, 0.1], [0.04, 0.04, 0.04], [0.0, 0.0, 0.0], df_within=100)
    assert same.v_training == pytest.approx(0, abs=1e-20) and same.variance == pytest.approx(0.04) and same.df == pytest.approx(100)
    spread = two_level_combine([0.0, 0.2, 0.4], [0.01] * 3, [0.005] * 3)
    B = np.var([0.0, 0.2, 0.4], ddof=1)
    assert spread.variance == pytest.approx(0.005 + (1 + 1 / 3) * (B - 0.005) + 0.005 / 3)
    neg = two_level_combine([0.1, 0.1001, 0.1002], [0.001] * 3, [0.01] * 3)  # spread below the ensemble noise: truncated at 0
    assert neg.truncated and neg.v_training == 0 and neg.v_patients == 0 and neg.variance == pytest.approx(0.01 / 3)


def test_one_forecaster_has_no_between_variance():
    with pytest.raises(InputError, match="at least 2 forecasters"):
        two_level_combine([0.1], [0.01], [0.0])


def test_counterfactual_arrays_match_counterfactual_effects():
    tr = simulate_count_trial(replace(pair_config(30), seed=3), samples=8)
    means = forecast_means(tr.counts)
    avg = counterfactual_effects(means, "placebo").average.set_index("arm").loc["dmf"]
    wide = {a: tr.counts[tr.counts["arm"] == a].pivot(index="patient_id", columns="sample", values="count").to_numpy(float) for a in ("dmf", "placebo")}
    v = counterfactual_arrays(wide["dmf"], wide["placebo"])
    assert np.exp(v["log_ratio"]) == pytest.approx(avg["ratio_of_means"])
    crit = stats.t.ppf(0.975, avg["ratio_df"])  # the one-forecaster CI's t with the kurtosis df (influence_t)
    assert np.exp(v["log_ratio"] + crit * np.sqrt(v["w_log_ratio"])) == pytest.approx(avg["ratio_ci_high"])
    assert 0 < v["s_log_ratio"] <= v["w_log_ratio"] * 1.5


def test_monte_carlo_part_of_the_sandwich_is_the_ensemble_noise():
    """vcov_mc (from each patient's spread over its own samples) matches the spread of the stacked estimate
    over fresh ensembles for the same patients (within 25%), and is below the full sandwich."""
    tr = simulate_count_trial(replace(pair_config(100), seed=4), samples=1)
    tab = tr.table
    des = design_matrix(tab, "arm", reference="placebo")
    mu = tr.truth.set_index(["patient_id", "arm"])["expected_count"].loc[list(zip(tab["patient_id"], tab["arm"]))].to_numpy()
    rng = np.random.default_rng(0)
    est, mc = [], []
    for _ in range(150):
        st = stacked_sandwich(rng.poisson(np.repeat(mu[:, None], 10, axis=1)).astype(float), des.X, des.offset)
        est.append(st.coef[1])
        mc.append(st.vcov_mc[1, 1])
    assert np.mean(mc) == pytest.approx(np.var(est, ddof=1), rel=0.25)
    assert np.mean(mc) < st.vcov[1, 1]


def test_bootstrap_family_differs_and_single_fit_is_the_mle():
    train = simulate_count_trial(replace(pair_config(60), seed=8), samples=1).table
    single = fit_forecaster_family(train, 1, reference="placebo", bootstrap=False)[0]
    from mseval.stats.count_model import fit_count_model

    fit = fit_count_model(train, "net2 ~ arm + np.log1p(gd_count) + age", reference="placebo", adjusted_means=False)
    assert single.coef[single.names.index("dmf")] == pytest.approx(float(fit.table.set_index("term").loc["dmf", "coef"]), abs=1e-6)
    fam = fit_forecaster_family(train, 5, reference="placebo", seed=2)
    rr = [f.coef[f.names.index("dmf")] for f in fam]
    assert len(set(np.round(rr, 8))) == 5 and [f.forecaster for f in fam] == [0, 1, 2, 3, 4]
    assert all(f.provenance["resample"] == "bootstrap within arms" for f in fam)
    with pytest.raises(InputError):
        fit_forecaster_family(train, 3, reference="placebo", bootstrap=False)


def test_forecaster_effects_from_a_counts_table():
    train = simulate_count_trial(replace(pair_config(60), seed=9), samples=1).table
    test = simulate_count_trial(replace(pair_config(40), seed=10), samples=1).table
    fam = fit_forecaster_family(train, 4, reference="placebo", seed=1)
    counts = draw_family(fam, test, ["placebo", "dmf"], 5, seed=3)
    assert sorted(split_forecasters(counts)) == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fe = forecaster_effects(test, counts, reference="placebo")
    rr = fe.rate_ratios.set_index("term").loc["dmf"]
    cf = fe.counterfactual.set_index("arm").loc["dmf"]
    assert rr["estimable"] and cf["estimable"] and rr["forecasters"] == 4 and "training procedure" in rr["estimand"]
    assert rr["ci_low"] < rr["rate_ratio"] < rr["ci_high"] and cf["ratio_ci_low"] < cf["ratio_of_means"] < cf["ratio_ci_high"]
    assert len(fe.per_forecaster) == 8 and "4 forecasters" in fe.summary()


def test_trained_forecaster_pairs_carry_the_training_error():
    """A fast slice of bench/validity_forecasters.py: with a trained forecaster, the conditional
    counterfactual SE is far below the spread of its estimates across pairs; the two-level SE is not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = trained_forecaster_pairs(25, forecasters=6, samples=5, seed0=123)
    s = summarize_pairs(d).set_index("method")
    single = s.loc["single_cf", "mean_se"] / s.loc["single_cf", "empirical_sd"]
    family = s.loc["family_cf", "mean_se"] / s.loc["family_cf", "empirical_sd"]
    assert single < 0.5 and 0.6 < family < 1.6, (single, family)
