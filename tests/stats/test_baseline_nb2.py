"""The NB2 baseline: predictions on new data, its predictive law, and that the baseline features carry signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mseval.metrics.calibration import crps_pmf
from mseval.stats.baseline_nb2 import fit_nb2_baseline
from mseval.stats.count_model import fit_count_model


def test_predict_on_new_data_is_the_fitted_linear_predictor(count_trial):
    train, _, _ = count_trial(41)
    test, _, _ = count_trial(42, patients_per_arm=5)
    b = fit_nb2_baseline(train, reference="placebo", trained_on="trial 41")
    arms = ["placebo", "dmf", "ifnb1a_im", "ifnb1a_sc", "laquinimod", "ocrelizumab"]

    def design(d: pd.DataFrame) -> np.ndarray:
        X = pd.get_dummies(pd.Categorical(d["arm"], categories=arms), drop_first=True).to_numpy(dtype=float)
        return np.column_stack([np.ones(len(d)), X, np.log1p(d["gd_count"]), np.log(d["t2_count"]), np.log(d["t2_volume_mm3"]), d["age"]])

    beta = b.fit.coef
    for d in (train, test):  # in-sample and new patients: exp(x'beta) x follow-up years
        assert np.allclose(b.mean(d), np.exp(design(d) @ beta) * d["followup_years"].to_numpy(), rtol=1e-10)
    assert np.allclose(b.fit.predict(train), b.mean(train), rtol=1e-12)
    assert b.to_dict()["trained_on"] == "trial 41" and b.to_dict()["n_train"] == 240


def test_predictive_law_has_the_nb2_mean_and_variance(count_trial):
    train, _, _ = count_trial(43)
    b = fit_nb2_baseline(train, reference="placebo")
    pmf = b.pmf(train.iloc[:20])
    mu = b.mean(train.iloc[:20])
    k = np.arange(pmf.shape[1])
    assert np.allclose(pmf.sum(1), 1.0, atol=1e-9)
    assert np.allclose((pmf * k).sum(1), mu, rtol=1e-7)
    assert np.allclose((pmf * k**2).sum(1) - mu**2, mu + b.fit.alpha * mu**2, rtol=1e-6)


def test_a_law_beyond_any_ms_count_is_not_estimable_and_returns_at_once(count_trial):
    """A law extrapolated to a mean of millions of lesions gives NaN rows (flagged as not estimable
    by the evaluation), not a (n, 44 million) array that takes minutes to build."""
    import time

    from forecast.evaluate import unusable_references
    from mseval.stats.baseline_nb2 import KMAX

    train, _, _ = count_trial(43)
    b = fit_nb2_baseline(train, reference="placebo")
    far = train.iloc[:5].assign(followup_years=1e5)  # a follow-up of 100,000 years: means of a million lesions
    assert b.mean(far).max() > KMAX
    t0 = time.perf_counter()
    pmf = b.pmf(far)
    assert time.perf_counter() - t0 < 5.0
    assert np.isnan(pmf).all()
    assert "nb2_baseline" in unusable_references({"nb2_baseline": pmf})


def test_baseline_features_beat_the_arm_only_model(count_trial):
    """On a new trial the baseline's CRPS is below an arm-only NB2's (paired over patients, 3 SE)."""
    from scipy import stats

    train, _, _ = count_trial(44, patients_per_arm=200)
    test, _, _ = count_trial(45, patients_per_arm=100)
    y = test["net2"].to_numpy()
    full = fit_nb2_baseline(train, reference="placebo")
    arm_only = fit_count_model(train, "net2 ~ arm", offset_years="followup_years", reference="placebo", adjusted_means=False)
    mu0 = arm_only.predict(test)
    a = arm_only.alpha
    pmf0 = stats.nbinom.pmf(np.arange(200)[None, :], 1 / a, (1 / (1 + a * mu0))[:, None])
    d = crps_pmf(full.pmf(test), y) - crps_pmf(pmf0, y)
    assert d.mean() < -3 * d.std(ddof=1) / np.sqrt(len(d))


def test_predict_needs_the_fitted_design(count_trial):
    from dataclasses import replace

    train, _, _ = count_trial(46, patients_per_arm=10)
    fit = replace(fit_nb2_baseline(train, reference="placebo").fit, design_info=None)
    with pytest.raises(ValueError, match="no design"):
        fit.predict(train)


def test_flexible_baseline_law_is_the_fitted_double_glm(count_trial):
    """The flexible baseline's law per row: NB2 with mean exp(x'beta) x years and its own dispersion
    exp(z'gamma) (not one alpha for all rows: the dispersion falls with the baseline counts)."""
    from mseval.stats.baseline_nb2 import fit_flexible_baseline

    train, _, _ = count_trial(47, patients_per_arm=150)
    b = fit_flexible_baseline(train, trained_on="trial 47")
    assert b.fit.converged
    rows = train.iloc[:30]
    mu, alpha, pmf = b.mean(rows), b.alpha(rows), b.pmf(rows)
    k = np.arange(pmf.shape[1])
    assert np.allclose(pmf.sum(1), 1.0, atol=1e-9)
    assert np.allclose(pmf @ k, mu, rtol=1e-7)
    assert np.allclose(pmf @ k**2 - mu**2, mu + alpha * mu**2, rtol=1e-6)
    assert alpha.max() / alpha.min() > 1.5
    gd_term = [t for t in b.dispersion_info.column_names if "gd_count" in t][0]
    assert b.fit.gamma[b.dispersion_info.column_names.index(gd_term)] < 0  # more Gd+ lesions, a better-known rate
    assert b.to_dict()["trained_on"] == "trial 47" and b.to_dict()["n_train"] == 900


def test_flexible_baseline_is_closer_to_the_counts_only_oracle_than_the_simple_one():
    """In the world with its image channels off, the counts-only Bayes law is the best any count-feature
    model can do. On a new trial (1,200 patients) the flexible baseline (fitted on 2,400) scores a lower
    CRPS than the simple NB2 (paired, 3 SE) -- its tensor-spline surface in Gd+ and T2 counts, arm x age and
    dispersion model are what the simple formula lacks -- and stays within 4% of the oracle's CRPS."""
    from dataclasses import replace

    from mseval.simulate.counts_only import simulate_count_trial
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.observable_oracle import ModelParams, observable_pmf
    from mseval.stats.baseline_nb2 import fit_flexible_baseline

    cfg = replace(TrialConfig(), prelesion_fraction=0.0, dawm_strength=0.0, visits=(48,))
    train = simulate_count_trial(replace(cfg, patients_per_arm=400, seed=71), samples=1).table
    test = simulate_count_trial(replace(cfg, patients_per_arm=200, seed=72), samples=1).table
    y = test["net2"].to_numpy()
    flex = crps_pmf(fit_flexible_baseline(train).pmf(test), y)
    simple = crps_pmf(fit_nb2_baseline(train, reference="placebo").pmf(test), y)
    oracle = crps_pmf(observable_pmf(test, ModelParams.from_config(cfg)), y)
    d = flex - simple
    assert d.mean() < -3 * d.std(ddof=1) / np.sqrt(len(d))
    assert flex.mean() < 1.04 * oracle.mean()
