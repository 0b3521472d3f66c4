"""The kurtosis-based Satterthwaite df of a delta-method variance (`mseval.stats.influence_t`)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from mseval.stats.influence_t import kurtosis_df, t_critical


def test_normal_influence_values_give_about_n_df_and_heavy_tails_far_fewer() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    # normal: sample kurtosis 3 +- sqrt(24 / n) = 3 +- 0.08, so df = 2n / (kurtosis - 1) within 8% of n (capped at n - 1)
    assert kurtosis_df(rng.normal(size=n)) > 0.9 * n
    assert kurtosis_df(rng.normal(size=n)) <= n - 1
    assert kurtosis_df(rng.lognormal(0.0, 1.5, size=n)) < 0.05 * n
    assert kurtosis_df(np.ones(10)) == 9.0 and kurtosis_df(np.array([1.0, 2.0])) == 1.0
    crit, df = t_critical(rng.normal(size=50))
    assert crit == stats.t.ppf(0.975, df)


def test_the_t_interval_covers_a_skewed_mean_better_than_the_normal_one() -> None:
    """Mean of 40 lognormal(0, 1.2) values, 4,000 samples: the z interval under-covers (heavy right tail); the
    t interval with the kurtosis df covers more often, by more than 3 Monte Carlo SEs of the paired difference."""
    rng = np.random.default_rng(2)
    x = rng.lognormal(0.0, 1.2, size=(4000, 40))
    truth = np.exp(1.2**2 / 2)
    m, se = x.mean(axis=1), x.std(axis=1, ddof=1) / np.sqrt(40)
    crit = np.array([t_critical(row)[0] for row in x])
    z_cov = np.abs(m - truth) <= 1.959964 * se
    t_cov = np.abs(m - truth) <= crit * se
    d = t_cov.astype(float) - z_cov
    assert np.all(crit >= 1.959964)
    assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(len(d))
