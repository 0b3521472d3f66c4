"""The NB2 log-likelihood equals 50-digit arithmetic to 1e-12 relative, from strong dispersion
(theta 1e-3) to the Poisson boundary (theta 1e8), where the textbook form loses 2.6e-7 (issue 22):
at that error a fit near the boundary climbs on rounding noise and is dropped as non-converged."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from mseval.stats.nb2_mle import fit_nb2, nb2_loglik

mp.mp.dps = 50


def reference_loglik(y: np.ndarray, eta: np.ndarray, theta: float) -> mp.mpf:
    """sum_i lgamma(y + theta) - lgamma(theta) - lgamma(y + 1) + theta log(theta / (theta + mu)) + y log(mu / (theta + mu)), 50 digits."""
    th = mp.mpf(theta)
    total = mp.mpf(0)
    for yi, ei in zip(y, eta):
        mu = mp.exp(mp.mpf(float(ei)))
        yi = mp.mpf(int(yi))
        total += (mp.loggamma(yi + th) - mp.loggamma(th) - mp.loggamma(yi + 1) + th * mp.log(th / (th + mu)) + yi * mp.log(mu / (th + mu)))
    return total


@pytest.mark.parametrize("theta", [1e-3, 0.3, 1.0, 7.5, 1e2, 1e4, 1e6, 3e7, 1e8])
def test_loglik_matches_50_digit_reference(theta: float) -> None:
    rng = np.random.default_rng(int(np.log10(theta) * 10) + 40)
    eta = rng.normal(0.0, 1.2, 60)
    y = rng.poisson(np.exp(eta)).astype(float)
    y[:3] = (0.0, 25.0, 140.0)  # a zero and two large counts
    ref = reference_loglik(y, eta, theta)
    got = nb2_loglik(y, eta, theta)
    assert abs(mp.mpf(got) - ref) <= 1e-12 * abs(ref)


def test_textbook_form_fails_where_the_log1p_form_holds() -> None:
    """The regression itself: at theta 1e8 the textbook expression is off by far more than 1e-12."""
    from scipy.special import gammaln

    rng = np.random.default_rng(5)
    eta = rng.normal(0.0, 1.0, 60)
    y = rng.poisson(np.exp(eta)).astype(float)
    th = 1e8
    lt = np.log(th)
    textbook = float(np.sum(gammaln(y + th) - gammaln(th) - gammaln(y + 1) + th * (lt - np.logaddexp(lt, eta)) + y * (eta - np.logaddexp(lt, eta))))
    ref = reference_loglik(y, eta, th)
    assert abs(mp.mpf(textbook) - ref) > 1e-9 * abs(ref)
    assert abs(mp.mpf(nb2_loglik(y, eta, th)) - ref) <= 1e-12 * abs(ref)


def test_poisson_like_samples_converge() -> None:
    """Samples drawn from a Poisson law (MLE at or near the boundary) all return a converged fit."""
    rng = np.random.default_rng(11)
    n = 48
    X = np.column_stack([np.ones(n), np.repeat(np.eye(6)[:, 1:], 8, axis=0)])
    mu = np.exp(X @ np.array([0.5, -0.2, -0.5, -0.9, -1.4, 0.1]))
    for _ in range(200):
        fit = fit_nb2(rng.poisson(mu).astype(float), X, 0.0)
        assert fit.converged


def test_rows_whose_poisson_mean_underflows_leave_the_fit_unchanged() -> None:
    """Rows with y = 0 and a mean of exactly 0 (offset -800: exp underflows) add nothing to the NB2 likelihood:
    the fit with them equals the fit without them (the moment start of theta must not turn NaN on 0 / 0 and
    fall back to the Poisson law)."""
    from mseval.stats.nb2_mle import fit_nb2

    rng = np.random.default_rng(2)
    n = 200
    x = rng.normal(size=n)
    y = rng.poisson(np.exp(1 + 0.3 * x) * rng.gamma(1.0, 1.0, n)).astype(float)
    X = np.column_stack([np.ones(n), x])
    plain = fit_nb2(y, X, np.zeros(n))
    more = fit_nb2(np.r_[y, np.zeros(5)], np.vstack([X, np.column_stack([np.ones(5), np.zeros(5)])]), np.r_[np.zeros(n), np.full(5, -800.0)])
    assert not more.boundary and more.alpha == pytest.approx(plain.alpha, rel=1e-9)
    assert more.beta == pytest.approx(plain.beta, rel=1e-9) and more.llf == pytest.approx(plain.llf, rel=1e-12)
