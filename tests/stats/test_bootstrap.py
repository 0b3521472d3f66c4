"""Patient-level bootstrap: agrees with closed forms, resamples patients (not samples), falls back
to a flagged percentile interval when BCa is degenerate, and is seeded."""

from __future__ import annotations

import numpy as np

from mseval.stats.bootstrap import patient_bootstrap


def test_bca_ci_of_a_mean_matches_the_t_interval():
    """For the mean of n = 400 normal values the bootstrap SE estimates s / sqrt(n). Its Monte-Carlo
    error with B = 2000 replicates is about 1 / sqrt(2B) = 1.6% relative, and the bootstrap's
    plug-in SE is sqrt((n-1)/n) of s/sqrt(n) (0.1%): a 6% tolerance is ~4 MC standard errors.
    The CI half-width likewise (t vs normal quantile differ by 0.2% at 399 df)."""
    x = np.random.default_rng(1).normal(10.0, 2.0, 400)
    res = patient_bootstrap(np.mean, x, n_resamples=2000, seed=3)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert res.method == "BCa" and res.note == ""
    assert abs(res.standard_error / se - 1) < 0.06
    half = (res.ci_high - res.ci_low) / 2
    assert abs(half / (1.96 * se) - 1) < 0.06
    assert res.ci_low < x.mean() < res.ci_high


def test_resamples_patients_not_samples():
    """x[i, s] = u_i + e_is with a large patient effect (sd 3) and small sample noise (sd 0.5): the
    grand mean's SE is sd(row means) / sqrt(n) when patients are resampled, about 8 times the naive
    per-value SE. The bootstrap SE must match the patient-level SE within 8% (MC error 1.6% x 4),
    and be far from the naive one."""
    rng = np.random.default_rng(2)
    n, S = 300, 20
    x = rng.normal(0, 3.0, (n, 1)) + rng.normal(0, 0.5, (n, S))
    res = patient_bootstrap(lambda a: a.mean(), x, n_resamples=2000, seed=0)
    patient_se = x.mean(axis=1).std(ddof=1) / np.sqrt(n)
    naive_se = x.std(ddof=1) / np.sqrt(n * S)
    assert abs(res.standard_error / patient_se - 1) < 0.08
    assert res.standard_error > 3 * naive_se


def test_paired_arrays_stay_together():
    """Two arrays of one patient each: the statistic sees matched pairs (a - b is constant here,
    so the difference of means has zero variance and the interval collapses to the estimate)."""
    a = np.random.default_rng(0).normal(size=100)
    res = patient_bootstrap(lambda x, y: float(np.mean(x - y)), a, a - 1.0, n_resamples=500, seed=0)
    assert res.estimate == 1.0
    assert abs(res.ci_low - 1.0) < 1e-12 and abs(res.ci_high - 1.0) < 1e-12


def test_degenerate_bca_falls_back_and_says_so():
    """Constant data: every replicate equals the estimate; scipy's BCa is undefined (NaN); the
    result must be a finite interval with the fallback named in `method` and `note`."""
    res = patient_bootstrap(np.mean, np.full(50, 2.0), n_resamples=200, seed=0)
    assert res.method in ("percentile", "none")
    assert res.note
    assert res.ci_low == res.ci_high == 2.0


def test_seeded_and_vectorized_agree():
    """The same seed gives the same interval. A vectorized statistic draws its resamples differently,
    so its SE agrees only within Monte-Carlo error: about 4% per estimate at B = 300, so 25% is
    more than 4 standard deviations of the difference."""
    x = np.random.default_rng(5).exponential(size=200)
    a = patient_bootstrap(np.mean, x, n_resamples=300, seed=9)
    b = patient_bootstrap(np.mean, x, n_resamples=300, seed=9)
    c = patient_bootstrap(lambda v, axis=-1: np.mean(v, axis=axis), x, n_resamples=300, seed=9, vectorized=True)
    assert a == b
    assert np.isfinite(c.ci_low) and abs(c.standard_error / a.standard_error - 1) < 0.25
    assert a.to_frame().shape[0] == 1 and "BCa" in a.summary()
