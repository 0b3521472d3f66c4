"""NB2 regression with a model for the dispersion (a double GLM): overdispersion that varies with covariates.

    y_i ~ NB(mu_i, theta_i),  log mu_i = x_i' beta + offset_i,  log alpha_i = z_i' gamma,  theta_i = 1 / alpha_i
    Var y_i = mu_i + alpha_i mu_i^2

(counts y, offset = log follow-up years, mu in counts over the follow-up, alpha dimensionless). The
one-dispersion NB2 (`nb2_mle.fit_nb2`) is the case z_i = 1; one dispersion per arm
(`nb2_by_arm.fit_nb2_by_arm`) is z_i = the arm's indicator. A dispersion that falls with a covariate is
what a Bayes predictive law looks like when a baseline count informs a gamma-distributed latent rate
(the posterior's shape grows with the count), so this is the shape of law the simulated world's
counts-only oracle has (`mseval.stats.baseline_nb2`, the flexible count-feature baseline).

Fit: Newton on (beta, gamma) jointly with the observed Hessian, Cholesky on the Jacobi-scaled matrix and
step halving (`nb2_mle.newton_step`); where the Hessian is not negative definite, a Newton step for beta
at fixed gamma and a gradient step for gamma, both halved until the log-likelihood rises. Converged when
the Newton decrement g' (-H)^-1 g < 1e-20 at a negative definite Hessian (as `fit_nb2`). No boundary
handling: a row whose alpha runs below 1e-8 (theta beyond `nb2_mle.THETA_MAX`) is reported as
`converged=False` (a dispersion model pushed to the Poisson law is not this model's regime).

Standard errors: inverse observed information of (beta, gamma) -- what R's
`glmmTMB(y ~ x + offset(log(years)), dispformula = ~ z, family = nbinom2)` reports, whose dispersion
coefficients are those of log phi = log theta = -log alpha: glmmTMB's are -gamma. Parity:
tests/stats/test_nb2_dispersion_model.py (live where R has glmmTMB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import digamma, gammaln, polygamma

from mseval.stats.nb2_mle import (QUADRATIC, THETA_MAX, fit_nb2, gradient_converged, halving_search, inv_pd, newton_step,
                                  rounding_slack)


@dataclass(frozen=True)
class NB2DispersionResult:
    """beta (k,) mean coefficients; gamma (q,) log-dispersion coefficients; llf; Hessian of the
    log-likelihood in (beta, gamma) ((k + q) square); Newton decrement, iterations, `converged`."""

    beta: np.ndarray
    gamma: np.ndarray
    llf: float
    hessian: np.ndarray
    decrement: float
    iterations: int
    converged: bool

    def covariance(self) -> tuple[np.ndarray, bool]:
        """Inverse observed information of (beta, gamma) ((k + q) square) and whether -H inverted."""
        return inv_pd(-self.hessian)

    def alpha(self, Z: np.ndarray) -> np.ndarray:
        """Dispersion alpha (n,) of rows with dispersion design Z (n, q)."""
        return np.exp(np.asarray(Z, dtype=float) @ self.gamma)


_EXACT_THETA = 1e3
"""From this theta on, log Gamma(y + th) - log Gamma(th) is summed exactly (the difference of two gammaln's
loses about log10(th) digits where th >> y: 1e-5 absolute at th = 1e7, near the Poisson law)."""


def _lgamma_ratio(y: np.ndarray, th: np.ndarray) -> np.ndarray:
    """log Gamma(y + th) - log Gamma(th) per row (y whole counts >= 0, th > 0): gammaln difference below
    `_EXACT_THETA`, else y log th + sum_{j < y} log1p(j / th) (rows in chunks of at most 4e6 terms)."""
    out = gammaln(y + th) - gammaln(th)
    big = np.flatnonzero((th >= _EXACT_THETA) & (y > 0))
    if big.size:
        ymax = int(y[big].max())
        j = np.arange(ymax, dtype=float)
        step = max(1, int(4e6 // max(ymax, 1)))
        for lo in range(0, big.size, step):
            rows = big[lo:lo + step]
            terms = np.log1p(j[None, :] / th[rows, None]) * (j[None, :] < y[rows, None])
            out[rows] = y[rows] * np.log(th[rows]) + terms.sum(axis=1)
    return out


def _loglik(y: np.ndarray, eta: np.ndarray, lalpha: np.ndarray, lgy1: np.ndarray) -> float:
    """Sum of the rows' NB2 log-likelihoods at log mu = eta, log alpha = lalpha (-inf if not finite)."""
    if np.max(eta, initial=-np.inf) > 700.0 or np.max(np.abs(lalpha), initial=0.0) > 700.0:
        return -np.inf
    th = np.exp(-lalpha)
    alpha_mu = np.exp(lalpha + eta)
    # th log(th / (th + mu)) = -th log(1 + alpha mu); y log(mu / (th + mu)) = y (eta + log alpha - log(1 + alpha mu))
    ll = _lgamma_ratio(y, th) - lgy1 - th * np.log1p(alpha_mu) + y * (eta + lalpha - np.log1p(alpha_mu))
    total = float(np.sum(ll))
    return total if np.isfinite(total) else -np.inf


def _derivs(y: np.ndarray, X: np.ndarray, Z: np.ndarray, eta: np.ndarray, lalpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (k + q,) and Hessian of the log-likelihood in (beta, gamma)."""
    th = np.exp(-lalpha)
    mu = np.exp(eta)
    tm = th + mu
    d_eta = th * (y - mu) / tm
    w_eta = th * mu * (y + th) / tm**2  # -d2l/deta2
    # derivatives in theta, then chained to log alpha = -log theta
    d_th = digamma(y + th) - digamma(th) - np.log1p(mu / th) + (mu - y) / tm
    h_th = polygamma(1, y + th) - polygamma(1, th) + 1.0 / th - 2.0 / tm + (y + th) / tm**2
    d_la = -th * d_th
    h_la = th * th * h_th + th * d_th  # d2l/d(log alpha)^2 = d2l/d(log theta)^2
    c = -th * (y - mu) * mu / tm**2  # d2l/(deta dlog alpha)
    g = np.concatenate([X.T @ d_eta, Z.T @ d_la])
    k = X.shape[1]
    H = np.empty((k + Z.shape[1],) * 2)
    H[:k, :k] = -(X.T @ (X * w_eta[:, None]))
    H[:k, k:] = X.T @ (Z * c[:, None])
    H[k:, :k] = H[:k, k:].T
    H[k:, k:] = Z.T @ (Z * h_la[:, None])
    return g, H


def fit_nb2_dispersion_model(y: np.ndarray, X: np.ndarray, Z: np.ndarray, offset: np.ndarray | float = 0.0, *,
                             tol: float = 1e-20, maxiter: int = 300) -> NB2DispersionResult:
    """The MLE of NB2 with log alpha = Z gamma (see the module docstring).

    y: (n,) counts; X: (n, k) mean design with its intercept; Z: (n, q) dispersion design (its first
    column the intercept, or any design whose span holds the constant); offset: (n,) or scalar. Start:
    the one-dispersion fit (`fit_nb2`), gamma the least-squares fit of that log alpha on Z."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    Z = np.asarray(Z, dtype=float)
    off = np.asarray(offset, dtype=float) if np.ndim(offset) else np.full(len(y), float(offset))
    k = X.shape[1]
    lgy1 = gammaln(y + 1.0)
    common = fit_nb2(y, X, off)
    beta = common.beta.copy()
    gamma = np.linalg.lstsq(Z, np.full(len(y), np.log(max(float(common.alpha), 1e-3))), rcond=None)[0]
    ll = _loglik(y, X @ beta + off, Z @ gamma, lgy1)
    dec, it = np.inf, 0
    for it in range(1, maxiter + 1):
        g, H = _derivs(y, X, Z, X @ beta + off, Z @ gamma)
        step, dec = newton_step(g, H)
        if step is not None and dec < tol:
            break
        if step is None:  # not negative definite: beta | gamma Newton step and a scaled gradient step in gamma
            sb, _ = newton_step(g[:k], H[:k, :k])
            hz = np.abs(np.diag(H)[k:])
            step = np.concatenate([sb if sb is not None else np.zeros(k), g[k:] / np.where(hz > 0, hz, 1.0)])
        big = float(np.max(np.abs(step[k:]), initial=0.0))
        if big > 3.0:  # at most a factor e^3 in any alpha per step: scale the whole step (its direction kept)
            step = step * (3.0 / big)
        slack = rounding_slack(ll) if dec < QUADRATIC * max(1.0, abs(ll)) else 0.0
        t = halving_search(lambda t: _loglik(y, X @ (beta + t * step[:k]) + off, Z @ (gamma + t * step[k:]), lgy1), ll, slack)
        if t is None:
            break
        beta, gamma = beta + t * step[:k], gamma + t * step[k:]
        ll = _loglik(y, X @ beta + off, Z @ gamma, lgy1)
    g, H = _derivs(y, X, Z, X @ beta + off, Z @ gamma)
    step, dec = newton_step(g, H)
    if step is None:
        dec = np.inf
    inside = bool(np.all(Z @ gamma > -np.log(THETA_MAX)))
    return NB2DispersionResult(beta, gamma, float(ll), H, float(dec), it, gradient_converged(dec, ll, tol) and inside)


__all__ = ["NB2DispersionResult", "fit_nb2_dispersion_model"]
