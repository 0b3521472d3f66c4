"""forecast/evaluate.py scores count forecasts with mseval's fair-ensemble CRPS (one implementation)."""

from __future__ import annotations

import numpy as np
import pytest


def test_forecast_crps_is_the_fair_estimator_and_a_perfect_small_ensemble_is_not_penalised():
    """forecast/evaluate.py scores counts with mseval's fair CRPS: for a perfect 12-member Poisson
    ensemble its mean equals the exact Poisson CRPS within 2 Monte Carlo SEs (the plain energy form is
    higher by E|X - X'| / (2 S), many SEs)."""
    pytest.importorskip("torch")
    from forecast.evaluate import crps_poisson, crps_samples

    from mseval.metrics.calibration import crps_ensemble_fair

    rng = np.random.default_rng(4)
    n, S = 3000, 12
    mu = rng.gamma(2.0, 2.0, n)
    y = rng.poisson(mu)
    ens = rng.poisson(mu[:, None], (n, S))
    fair = np.array([crps_samples(ens[i], y[i]) for i in range(n)])
    assert np.allclose(fair, crps_ensemble_fair(ens, y))
    exact = np.array([crps_poisson(mu[i], int(y[i])) for i in range(n)])
    d = fair - exact
    se = d.std(ddof=1) / np.sqrt(n)
    assert abs(d.mean()) < 2 * se
    plain = np.abs(ens - y[:, None]).mean(1) - 0.5 * np.abs(ens[:, :, None] - ens[:, None, :]).mean((1, 2))
    assert (plain - exact).mean() > 5 * se
