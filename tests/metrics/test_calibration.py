"""Calibration of P(active) and of counts, with validity checks against the simulator's truth model.

The large-n validity tests build count tables directly from the simulator's truth model (the same
`draw_patients` / `truth_frame` as `mseval simulate`, without images): each patient's observed
count is Poisson(expected_count) under the allocated arm, exactly as the simulator draws it, and
each forecast sample is drawn from the forecaster's law (`mseval.simulate.forecasters`:
oracle Poisson(mu); overdispersed Poisson(mu G), G ~ Gamma(1, 1); biased Poisson(2 mu)).
"""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules as sr

from mseval.metrics.calibration import (
    binary_calibration, brier_decomposition, count_calibration, crps_ensemble_fair, expected_calibration_error,
    logistic_recalibration, randomized_pit, ranked_probability_score, reliability_table,
)
from mseval.simulate.model import TrialConfig, draw_patients, truth_frame

S = 20


@pytest.fixture(scope="module")
def truth_model():
    """6,000 patients (1,000 per arm) of the default trial: allocated expected counts and observed counts."""
    rng = np.random.default_rng(5)
    cfg = TrialConfig(patients_per_arm=1000, seed=5, followup_weeks=48)
    truth = truth_frame(draw_patients(cfg, rng), cfg)
    al = truth[truth["allocated"]].reset_index(drop=True)
    mu = al["expected_count"].to_numpy()
    return mu, al["p_active"].to_numpy(), rng.poisson(mu), rng


def _forecast(kind: str, mu: np.ndarray, rng: np.random.Generator, samples: int = S) -> np.ndarray:
    lam = {"oracle": lambda: np.repeat(mu[:, None], samples, 1),
           "overdispersed": lambda: mu[:, None] * rng.gamma(1.0, 1.0, (mu.size, samples)),
           "biased": lambda: np.repeat(2 * mu[:, None], samples, 1)}[kind]()
    return rng.poisson(lam)


# -- scores checked against scoringrules ----------------------------------------------------
def test_fair_crps_equals_scoringrules():
    """Our fair CRPS is scoringrules' `crps_ensemble(estimator='fair')` to rounding."""
    rng = np.random.default_rng(0)
    x, y = rng.poisson(3, (300, S)), rng.poisson(3, 300)
    assert np.allclose(crps_ensemble_fair(x, y), sr.crps_ensemble(y, x.astype(float), estimator="fair"), atol=1e-12)


def test_rps_equals_the_plain_ensemble_crps_for_counts():
    """For integer forecasts and outcomes, sum_k (F(k) - 1{y <= k})^2 is the integral defining the
    CRPS of the ensemble's empirical CDF: scoringrules' 'nrg' estimator, to rounding."""
    rng = np.random.default_rng(1)
    x, y = rng.poisson(4, (300, S)), rng.poisson(4, 300)
    assert np.allclose(ranked_probability_score(x, y), sr.crps_ensemble(y, x.astype(float), estimator="nrg"), atol=1e-9)


# -- P(active) building blocks --------------------------------------------------------------
def test_reliability_bins_are_closed_and_count_every_patient():
    """p = 0 and p = 1 (common with ensembles) are counted; tied quantiles merge; bins cover all."""
    p = np.r_[np.zeros(40), np.full(10, 0.5), np.ones(50)]
    y = np.r_[np.zeros(40), np.ones(5), np.zeros(5), np.ones(50)].astype(bool)
    rel = reliability_table(p, y, n_bins=10)
    assert rel["n"].sum() == 100 and (rel["n"] > 0).all()
    assert rel["observed_rate"].iloc[-1] == 1.0 and rel["mean_predicted"].iloc[0] == 0.0
    assert reliability_table(p, y, n_bins=4, strategy="uniform")["n"].sum() == 100


def test_brier_decomposition_adds_up_and_is_exact_on_distinct_values():
    """With few distinct forecast values, REL - RES + UNC equals the Brier score exactly (Murphy);
    with many, the within-bin remainder makes the parts add up."""
    rng = np.random.default_rng(2)
    p = rng.integers(0, S + 1, 1000) / S
    y = rng.random(1000) < p
    d = brier_decomposition(p, y)
    assert d["grouping"] == "distinct forecast values" and abs(d["within_bin"]) < 1e-12
    q = rng.random(1000)
    d2 = brier_decomposition(q, rng.random(1000) < q)
    assert d2["reliability"] - d2["resolution"] + d2["uncertainty"] + d2["within_bin"] == pytest.approx(d2["brier"])


def test_ece_by_hand():
    """Two bins: {0.2, 0.2} with 1 event (gap 0.3) and {0.8, 0.8} with 2 events (gap 0.2): ECE 0.25."""
    assert expected_calibration_error(np.array([0.2, 0.2, 0.8, 0.8]), np.array([1, 0, 1, 1]), n_bins=2) == pytest.approx(0.25)


def test_recalibration_of_the_true_probability(truth_model):
    """With the simulator's own P(active) as the forecast, intercept 0 and slope 1 are the truth:
    each lies within 3.29 Wald SEs (SE from the 95% CI's width; a correct fit fails with
    probability 0.1% at this fixed seed, where the 95% CI failed 5% of the time)."""
    mu, p_true, y, _ = truth_model
    r = logistic_recalibration(p_true, y >= 1)
    for (lo, hi), target in ((r.intercept_ci, 0.0), (r.slope_ci, 1.0)):
        se = (hi - lo) / (2 * 1.959963984540054)
        assert abs(0.5 * (lo + hi) - target) < 3.29 * se


# -- validity: oracle vs degraded forecasters ----------------------------------------------
def test_oracle_pit_is_uniform_and_intervals_cover(truth_model):
    """Oracle, S = 20, n = 6,000. The augmented randomized PIT is exactly U(0, 1) when observation and
    members are exchangeable (any S), so the chi-square test must not reject at 1%, and the
    randomized central-interval coverage must be within 2 points of nominal (2 points is >= 3 SE:
    SE <= sqrt(.25 / 6000) = 0.65 points). The plain PIT against the 20-member CDF is not uniform
    (values of exactly 0 or 1 when y falls outside the members): it must reject, showing why the
    ensemble size has to be accounted for."""
    mu, _, y, rng = truth_model
    cc = count_calibration(_forecast("oracle", mu, rng), y, seed=1)
    assert cc.pit_test.chi2_p > 0.01
    for rec in cc.coverage.to_dict("records"):
        assert abs(rec["randomized"] - rec["level"]) < 0.02, rec
    plain = randomized_pit(_forecast("oracle", mu, rng), y, kind="ensemble")
    assert ((plain == 0) | (plain == 1)).mean() > 0.02


def test_oracle_quantile_interval_coverage_with_many_samples(truth_model):
    """Closed sample-quantile intervals of discrete counts hold more than the nominal mass, so
    their coverage is compared with the mass the forecast itself puts inside (`implied`). With
    S = 400 members the implied mass is the true interval probability to O(1/sqrt S) per patient,
    averaged over 6,000 patients; the observed coverage must match it within 2 points (3 SE)."""
    mu, _, y, rng = truth_model
    cov = count_calibration(_forecast("oracle", mu, rng, 400), y, seed=2).coverage
    for rec in cov.to_dict("records"):
        assert abs(rec["coverage"] - rec["implied"]) < 0.02, rec
        assert rec["coverage"] >= rec["level"] - 0.02


def test_oracle_probability_calibration(truth_model):
    """Oracle P(active) from 20 samples: the calibration intercept's 95% CI covers 0 (E[p_hat] = p),
    and the slope is within 0.1 of 1 (sampling noise in p_hat attenuates it by about
    var(noise)/var(logit p) ~ 1-2%; the Wald SE is ~0.025, so 0.1 is 4 SE)."""
    mu, _, y, rng = truth_model
    r = binary_calibration((_forecast("oracle", mu, rng) >= 1).mean(1), y >= 1, samples=S, n_boot=0).recalibration
    assert r.intercept_ci[0] < 0 < r.intercept_ci[1]
    assert abs(r.slope - 1) < 0.1


def test_overdispersed_forecaster_gives_a_hump(truth_model):
    """Too-wide forecasts put observations in the middle of the ensemble: too few PIT values in the
    tails (u < 0.1 or u > 0.9; 0.2 expected), significant at 1% by the exact binomial test."""
    mu, _, y, rng = truth_model
    t = count_calibration(_forecast("overdispersed", mu, rng), y, seed=3).pit_test
    assert t.tail_share < 0.2 and t.tail_p < 0.01
    assert t.chi2_p < 0.01 and t.variance < 1 / 12


def test_biased_forecaster_is_flagged(truth_model):
    """Doubling the rate over-forecasts activity: the calibration intercept's 95% CI lies below 0,
    the count bias's CI above 0, and the PIT mean below 1/2 (observations fall low in the ensemble)."""
    mu, _, y, rng = truth_model
    ens = _forecast("biased", mu, rng)
    r = binary_calibration((ens >= 1).mean(1), y >= 1, samples=S, n_boot=0).recalibration
    assert r.intercept_ci[1] < 0
    from mseval.metrics.activity import count_error

    assert count_error(ens.mean(1), y).bias_ci[0] > 0
    t = count_calibration(ens, y, seed=4).pit_test
    assert t.mean < 0.5 and t.chi2_p < 0.01


def test_ece_bootstrap_ci_and_tidy_frame(truth_model):
    """The ECE has a patient-bootstrap CI that brackets it; the tidy frame has one row per metric."""
    mu, _, y, rng = truth_model
    m = slice(0, 1500)
    bc = binary_calibration((_forecast("oracle", mu[m], rng) >= 1).mean(1), y[m] >= 1, samples=S, n_boot=200, seed=1)
    assert bc.ece_ci[0] <= bc.ece <= bc.ece_ci[1]
    f = bc.to_frame()
    assert {"brier", "ece", "calibration_intercept", "calibration_slope", "brier_reliability"} <= set(f["metric"])
    assert "Brier" in bc.summary()


def test_leave_one_out_interval_bounds_are_numpys_quantiles():
    from mseval.metrics.calibration import _leave_one_out_mass

    rng = np.random.default_rng(0)
    x = rng.poisson(3, (6, 12))
    y = rng.poisson(3, 6)
    for lo_q, hi_q in ((0.25, 0.75), (0.1, 0.9), (0.025, 0.975)):
        imp, obs = _leave_one_out_mass(x, y, lo_q, hi_q)
        s = np.sort(x, axis=1)
        want_i, want_o = np.zeros(6), np.zeros(6)
        for j in range(12):
            red = np.delete(s, j, axis=1)
            lo, hi = np.quantile(red, [lo_q, hi_q], axis=1, method="inverted_cdf")
            want_i += ((s[:, j] >= lo) & (s[:, j] <= hi)) / 12
            want_o += ((y >= lo) & (y <= hi)) / 12
        assert np.allclose(imp, want_i) and np.allclose(obs, want_o)


def test_calibrated_ensemble_implied_mass_matches_observed_within_2_mc_se():
    """y exchangeable with 20 overdispersed count members: forecast-implied and observed coverage of
    the same (leave-one-out) intervals agree within 2 Monte Carlo SEs at 50/80/95%; the plug-in share
    of members (the old `implied`) is biased upward by more than 2 SEs at 95%."""
    rng = np.random.default_rng(3)
    n, S = 4000, 20
    z = rng.poisson(rng.gamma(2, 2, n)[:, None] * rng.gamma(2, 0.5, (n, S + 1)))
    from mseval.metrics.calibration import interval_coverage

    cov = interval_coverage(z[:, :S], z[:, S])
    for r in cov.itertuples():
        assert abs(r.coverage_loo - r.implied) <= 2 * r.implied_diff_se, r
    hi = cov.set_index("level").loc[0.95]
    assert hi["implied_plugin"] - hi["coverage_loo"] > 2 * hi["implied_diff_se"]


def test_debiased_calibration_error_ci_contains_zero_when_calibrated():
    """100 data sets of 200 perfectly calibrated forecasts on a 12-member grid (y ~ Bernoulli(p)): the
    plain ECE sits near its expectation under calibration (not near 0), the debiased squared error is
    centred on 0 and its CI contains 0 in >= 90 of 100 (binomial: a 95% interval would fail this with
    probability < 1e-3). A forecast off by 0.2 is detected in most data sets."""
    from mseval.metrics.calibration import binary_calibration

    rng = np.random.default_rng(11)
    hits, d, ece, ece0 = 0, [], [], []
    for i in range(100):
        p = rng.binomial(12, rng.beta(2, 2, 200)) / 12
        y = rng.random(200) < p
        b = binary_calibration(p, y, samples=12, n_boot=150, seed=i)
        hits += b.ce_sq_debiased_ci[0] <= 0 <= b.ce_sq_debiased_ci[1]
        d.append(b.ce_sq_debiased)
        ece.append(b.ece)
        ece0.append(b.ece_expected_if_calibrated)
    assert hits >= 90
    assert abs(np.mean(d)) < 3 * np.std(d) / np.sqrt(100)  # unbiased around 0
    assert np.mean(ece) > 0.04 and abs(np.mean(ece) - np.mean(ece0)) < 0.01  # plain ECE ~ its calibrated expectation
    missed = 0
    for i in range(20):
        p = rng.binomial(12, rng.beta(2, 2, 200)) / 12
        y = rng.random(200) < np.clip(p + 0.2, 0, 1)
        b = binary_calibration(p, y, samples=12, n_boot=150, seed=i)
        missed += b.ce_sq_debiased_ci[0] <= 0
    assert missed <= 8



def test_crps_pmf_equals_the_energy_form_and_a_point_mass():
    """Exact CRPS of a discrete law = E|X - y| - E|X - X'| / 2 (computed by double sums); a point mass gives |m - y|."""
    from scipy import stats

    from mseval.metrics.calibration import crps_pmf

    k = np.arange(60)
    for mu, alpha in ((0.4, 0.5), (3.0, 1.0), (9.0, 0.2)):
        n, p = 1 / alpha, 1 / (1 + alpha * mu)
        pmf = stats.nbinom.pmf(k, n, p)
        y = np.array([0, 1, 4, 12, 70])  # 70: beyond the rows' support
        energy = [(pmf * np.abs(k - yy)).sum() + (1 - pmf.sum()) * abs(60 - yy) - 0.5 * (pmf[:, None] * pmf[None, :] * np.abs(k[:, None] - k[None, :])).sum()
                  for yy in y]
        got = crps_pmf(np.tile(pmf, (len(y), 1)), y)
        assert np.allclose(got, energy, atol=1e-8)  # y = 70 lies beyond the support: the added terms are exact
    point = np.zeros((3, 10))
    point[:, 4] = 1.0
    assert np.allclose(crps_pmf(point, np.array([0, 4, 9])), [4, 0, 5])


def test_randomized_pit_of_the_true_law_is_uniform():
    from scipy import stats

    from mseval.metrics.calibration import randomized_pit_pmf

    rng = np.random.default_rng(8)
    mu = rng.gamma(1.0, 3.0, 4000)
    y = rng.poisson(mu)
    pmf = stats.poisson.pmf(np.arange(80)[None, :], mu[:, None])
    u = randomized_pit_pmf(pmf, y, seed=1)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert pit_uniformity_p(u) > 1e-3


def pit_uniformity_p(u: np.ndarray) -> float:
    from mseval.metrics.calibration import pit_uniformity

    return pit_uniformity(u).chi2_p
