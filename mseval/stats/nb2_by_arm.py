"""NB2 regression with a dispersion per group (per arm): heterogeneous overdispersion, by maximum likelihood.

    y_i ~ NB(mu_i, theta_g(i)),  log mu_i = x_i' beta + offset_i,
    Var y_i = mu_i + alpha_g mu_i^2,  log alpha_g = gamma_g = -log theta_g

(counts y in lesions, offset = log follow-up years, mu in lesions over the follow-up, alpha
dimensionless). One dispersion per arm is the model when treated arms are more overdispersed than
placebo (a per-patient response to treatment: the simulated world's `response_sd`); one alpha for all
arms then understates the treated arms' variance and the model-based CI under-covers
(bench/RESULTS.md, "Validity benches rerun on the multi-visit default world").

Fit: Newton on (beta, log theta_1..m) jointly, with the observed Hessian and step halving
(`mseval.stats.nb2_mle.newton_step`); where the Hessian is not negative definite, a Newton step for
beta at fixed thetas and a safeguarded 1-D step for each log theta (as `fit_nb2`). Convergence on the
gradient: Newton decrement g' (-H)^-1 g < 1e-20 at a negative definite Hessian. A group whose theta
passes `THETA_MAX` during the search is at its Poisson boundary (alpha_g = 0): its rows get the Poisson
law and its dispersion leaves the parameter vector (`poisson_groups`).

Standard errors: the inverse of the observed information of the joint (beta, gamma) -- what R's
`glmmTMB(y ~ arm + ... + offset(log(years)), dispformula = ~ arm, family = nbinom2)` reports (its
`sdreport` inverts the Hessian of all fixed effects, dispersion included). glmmTMB's nbinom2 writes
Var = mu + mu^2 / phi with log phi = the dispersion formula's linear predictor: phi_g = theta_g, so
its dispersion coefficients are log theta_ref and log theta_g - log theta_ref (treatment contrasts),
and gamma_g = -log phi_g. Parity: tests/stats/test_nb2_by_arm.py (live with R + glmmTMB, and a stored
reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from mseval.stats.nb2_mle import (
    QUADRATIC,
    THETA_MAX,
    fit_nb2,
    fit_poisson,
    gradient_converged,
    inv_pd,
    nb2_loglik,
    nb2_row_derivs,
    newton_step,
    poisson_loglik,
    rounding_slack,
)

_THETA_START_MAX = 1e4  # a group starting beyond this (common fit near Poisson) starts here


@dataclass(frozen=True)
class NB2ByArmResult:
    """beta (k,); alpha (m,) per group (0 for a group at its Poisson boundary); llf; the Hessian of the
    log-likelihood in (beta, log theta of the groups not at the boundary) ((k + m_free) square);
    `poisson_groups` (m,) bool; Newton decrement, iterations, `converged` (gradient criterion met at a
    negative definite Hessian)."""

    beta: np.ndarray
    alpha: np.ndarray
    llf: float
    hessian: np.ndarray
    decrement: float
    iterations: int
    converged: bool
    poisson_groups: np.ndarray

    @property
    def boundary(self) -> bool:
        """Every group at its Poisson boundary: the fit is the Poisson fit."""
        return bool(np.all(self.poisson_groups))

    def covariance(self) -> tuple[np.ndarray, bool]:
        """Inverse observed information of (beta, gamma_free) ((k + m_free) square; gamma = log alpha = -log theta,
        so the beta-gamma covariances are the beta-log theta ones with their sign flipped), and whether -H inverted."""
        V, ok = inv_pd(-self.hessian)
        k = len(self.beta)
        V = V.copy()
        V[:k, k:] *= -1.0
        V[k:, :k] *= -1.0
        return V, ok

    def gamma_se(self) -> np.ndarray:
        """(m,) standard error of gamma_g = log alpha_g (NaN for a group at its Poisson boundary)."""
        V, _ = self.covariance()
        k = len(self.beta)
        out = np.full(len(self.alpha), np.nan)
        out[~self.poisson_groups] = np.sqrt(np.clip(np.diag(V)[k:], 0.0, None))
        return out


def _loglik(y: np.ndarray, eta: np.ndarray, groups: np.ndarray, theta: np.ndarray, lgy1: np.ndarray) -> float:
    """Sum of the groups' NB2 (Poisson where theta is infinite) log-likelihoods."""
    total = 0.0
    for g, th in enumerate(theta):
        s = groups == g
        total += poisson_loglik(y[s], eta[s], lgy1[s]) if not np.isfinite(th) else nb2_loglik(y[s], eta[s], th, lgy1[s])
    return total


def _derivs(y: np.ndarray, X: np.ndarray, eta: np.ndarray, groups: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian in (beta, log theta_g for the finite thetas)."""
    k = X.shape[1]
    free = np.flatnonzero(np.isfinite(theta))
    d_eta, w = np.empty(len(y)), np.empty(len(y))
    g_t, h_t, c_t = np.zeros(len(free)), np.zeros(len(free)), np.zeros((k, len(free)))
    pos = {int(gi): j for j, gi in enumerate(free)}
    for gi, th in enumerate(theta):
        s = groups == gi
        if not np.isfinite(th):
            mu = np.exp(eta[s])
            d_eta[s], w[s] = y[s] - mu, mu
            continue
        r = nb2_row_derivs(y[s], eta[s], th)
        d_eta[s], w[s] = r.d_eta, r.w
        j = pos[gi]
        gt = float(np.sum(r.d_theta))
        g_t[j] = th * gt
        h_t[j] = th * th * float(np.sum(r.h_theta)) + th * gt
        c_t[:, j] = X[s].T @ r.c
    g = np.concatenate([X.T @ d_eta, g_t])
    H = np.zeros((k + len(free), k + len(free)))
    H[:k, :k] = -(X.T @ (X * w[:, None]))
    H[:k, k:] = c_t
    H[k:, :k] = c_t.T
    H[k:, k:] = np.diag(h_t)
    return g, H


def fit_nb2_by_arm(y: np.ndarray, X: np.ndarray, groups: np.ndarray, offset: np.ndarray | float = 0.0, *, tol: float = 1e-20,
                   maxiter: int = 300) -> NB2ByArmResult:
    """The MLE of the NB2 model with one dispersion per group (see the module docstring).

    y: (n,) counts; X: (n, k) design with its intercept; groups: (n,) integer group codes 0..m-1 (the arm
    of each row); offset: (n,) or scalar (log follow-up years). Start: the common-dispersion fit's beta
    and, per group, the moment estimate n_g / sum_g (y / mu - 1)^2 of theta at its means."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    groups = np.asarray(groups, dtype=int)
    off = np.asarray(offset, dtype=float) if np.ndim(offset) else np.full(len(y), float(offset))
    m, k = int(groups.max()) + 1, X.shape[1]
    lgy1 = gammaln(y + 1.0)
    common = fit_nb2(y, X, off)
    beta = common.beta.copy()
    mu = np.exp(X @ beta + off)
    theta = np.empty(m)
    for gi in range(m):
        s = groups == gi
        theta[gi] = np.clip(s.sum() / max(float(np.sum((y[s] / mu[s] - 1.0) ** 2)), 1e-12), 1e-3, _THETA_START_MAX)
    eta = X @ beta + off
    ll = _loglik(y, eta, groups, theta, lgy1)
    dec, it = np.inf, 0
    g, H = _derivs(y, X, eta, groups, theta)
    for it in range(1, maxiter + 1):
        g, H = _derivs(y, X, eta, groups, theta)
        step, dec = newton_step(g, H)
        if step is not None and dec < tol:
            break
        nt = H.shape[0] - k
        if step is None:  # not negative definite: beta | theta Newton step, then a 1-D step per log theta
            sb, _ = newton_step(g[:k], H[:k, :k])
            step = np.zeros(k + nt)
            if sb is not None:
                step[:k] = sb
            ht = np.diag(H)[k:]
            step[k:] = np.where(ht < 0, -g[k:] / np.where(ht < 0, ht, -1.0), np.sign(g[k:]))
        step[k:] = np.clip(step[k:], -3.0, 3.0)
        free = np.isfinite(theta)
        t, moved = 1.0, False
        slack = rounding_slack(ll) if dec < QUADRATIC * max(1.0, abs(ll)) else 0.0
        for _ in range(60):
            nb = beta + t * step[:k]
            nth = theta.copy()
            nth[free] = theta[free] * np.exp(t * step[k:])
            ne = X @ nb + off
            nl = _loglik(y, ne, groups, nth, lgy1)
            if nl >= ll - slack:
                moved = True
                break
            t *= 0.5
        if not moved:
            break
        beta, theta, eta, ll = nb, nth, ne, nl
        theta[theta > THETA_MAX] = np.inf  # that group's Poisson boundary
    g, H = _derivs(y, X, eta, groups, theta)
    step, dec = newton_step(g, H)
    if step is None:
        dec = np.inf
    with np.errstate(divide="ignore"):
        alpha = np.where(np.isfinite(theta), 1.0 / theta, 0.0)
    return NB2ByArmResult(beta, alpha, float(ll), H, float(dec), it, gradient_converged(dec, ll, tol), ~np.isfinite(theta))


def fit_beta_fixed_dispersions(y: np.ndarray, X: np.ndarray, groups: np.ndarray, alpha: np.ndarray, offset: np.ndarray | float,
                               beta0: np.ndarray, *, maxiter: int = 200) -> np.ndarray:
    """beta (k,) of the NB2 model with each group's dispersion fixed at alpha (m,) (0: the Poisson law):
    Newton on beta with step halving (the log-likelihood is concave in beta at fixed dispersions; a
    coefficient whose MLE is infinite drifts, as in `fit_nb2`). For tests inverted into intervals."""
    y = np.asarray(y, dtype=float)
    groups = np.asarray(groups, dtype=int)
    off = np.asarray(offset, dtype=float) if np.ndim(offset) else np.full(len(y), float(offset))
    with np.errstate(divide="ignore"):
        theta = np.where(np.asarray(alpha) > 0, 1.0 / np.asarray(alpha, dtype=float), np.inf)
    lgy1 = gammaln(y + 1.0)
    k = X.shape[1]
    beta = np.asarray(beta0, dtype=float).copy()
    ll = _loglik(y, X @ beta + off, groups, theta, lgy1)
    if not np.isfinite(ll):  # a start that overflows: from the Poisson fit
        beta = fit_poisson(y, X, off).beta
        ll = _loglik(y, X @ beta + off, groups, theta, lgy1)
    for _ in range(maxiter):
        g, H = _derivs(y, X, X @ beta + off, groups, theta)
        step, dec = newton_step(g[:k], H[:k, :k])
        if step is None or dec < 1e-20 * max(1.0, abs(ll)):
            break
        t = 1.0
        for _ in range(60):
            nb = beta + t * step
            nl = _loglik(y, X @ nb + off, groups, theta, lgy1)
            if nl >= ll - rounding_slack(ll):
                break
            t *= 0.5
        else:
            break
        beta, ll = nb, nl
    return beta


__all__ = ["NB2ByArmResult", "fit_beta_fixed_dispersions", "fit_nb2_by_arm"]
