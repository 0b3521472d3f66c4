"""Maximum likelihood of the NB2 (negative binomial, log link) model on plain arrays.

    y_i ~ NB(mu_i, theta),  log mu_i = x_i' beta + offset_i,  Var y_i = mu_i + mu_i^2 / theta  (alpha = 1 / theta)

The answer is the maximum of the likelihood, verified, every time:

1. Newton's method on (beta, log theta) jointly, with the observed Hessian, a Cholesky solve on the
   Jacobi-scaled matrix, and step halving until the log-likelihood rises (NaN/overflow guarded).
   Where the joint Hessian is not negative definite (far from the optimum) the step alternates as
   R's `MASS::glm.nb` does: a Newton step for beta at fixed theta (the NB2 log-likelihood is
   concave in beta for fixed theta) and a safeguarded 1-D step for log theta at fixed beta.
2. Convergence is declared on the gradient, never on an optimiser's say-so: the Newton decrement
   g' (-H)^-1 g is below `tol` (1e-20: every coefficient within ~1e-10 standard errors of the
   stationary point) at a negative definite Hessian.
3. The Poisson boundary (alpha -> 0, theta -> inf): when the score for alpha at the Poisson fit,
   sum((y - mu)^2 - y) / 2, is not positive, or the interior search drives theta past `THETA_MAX`,
   the maximum over alpha >= 0 is the Poisson fit with alpha = 0 exactly; `boundary=True` says so.
   (Whichever of the Poisson and the interior fits has the larger log-likelihood is returned.)

A coefficient whose MLE is infinite (an arm with no events: its rate tends to 0) drifts until its
gradient vanishes to the tolerance (as in R); callers flag such terms as not estimable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from scipy.special import betaln, digamma, gammaln, polygamma

THETA_MAX = 1e8  # beyond: the Poisson boundary (alpha < 1e-8 changes a log rate ratio by < 1e-7)
_ETA_MAX = 700.0


QUADRATIC = 1e-10  # Newton decrement (relative to |llf|) below which a full Newton step is taken within rounding


def rounding_slack(ll: float) -> float:
    """Rounding level of a log-likelihood sum: a step may lose this much and still be an ascent step."""
    return 1e-12 * max(1.0, abs(ll))


def gradient_converged(dec: float, ll: float, tol: float) -> bool:
    """The gradient criterion: Newton decrement below `tol`, or below rounding (1e-20 |llf|) for large sums."""
    return bool(np.isfinite(dec) and (dec < tol or dec < 1e-20 * max(1.0, abs(ll))))


@dataclass(frozen=True)
class NB2Result:
    """beta (k,), alpha = 1 / theta (0 at the Poisson boundary), log-likelihood, the Hessian of the
    log-likelihood in (beta, log theta) ((k+1, k+1); (k, k) at the boundary), the Newton decrement
    at the returned point, iterations, `converged` (gradient criterion met at a negative definite
    Hessian) and `boundary` (alpha = 0 is the maximum)."""

    beta: np.ndarray
    alpha: float
    llf: float
    hessian: np.ndarray
    decrement: float
    iterations: int
    converged: bool
    boundary: bool
    cold_retry: bool = False
    """True when a warm start failed and this is the cold start's answer (see `fit_nb2`)."""

    @property
    def theta(self) -> float:
        return float("inf") if self.alpha == 0 else 1.0 / self.alpha


_CUMSUM_MAX = 100_000  # counts up to this use exact finite sums over j < y; larger ones the special functions


def digamma_sums(y: np.ndarray, theta: float, power: int) -> np.ndarray:
    """sum_{j=0}^{y_i - 1} f(theta, j) for whole counts y: f = log(1 + j / theta) (power 0), 1/(theta + j) (1),
    1/(theta + j)^2 (2).

    Exact finite forms of lgamma(y + theta) - lgamma(theta) - y log(theta), digamma(y + theta) -
    digamma(theta) and trigamma(theta) - trigamma(y + theta), free of the cancellation the special
    functions suffer when theta is large (near the Poisson boundary)."""
    ymax = int(y.max(initial=0))
    if ymax > _CUMSUM_MAX:
        if power == 0:
            out = np.zeros_like(y, dtype=float)
            pos = y > 0
            out[pos] = gammaln(y[pos]) - betaln(theta, y[pos]) - y[pos] * np.log(theta)
            return out
        if power == 1:
            return digamma(y + theta) - digamma(theta)
        return polygamma(1, theta) - polygamma(1, y + theta)
    j = np.arange(ymax, dtype=float)
    x = theta + j
    f = np.log1p(j / theta) if power == 0 else (1.0 / x if power == 1 else 1.0 / (x * x))
    c = np.concatenate(([0.0], np.cumsum(f)))
    return c[y.astype(np.int64)]


def _lgamma_ratio_scaled(y: np.ndarray, theta: float) -> np.ndarray:
    """log Gamma(y + theta) - log Gamma(theta) - y log(theta) = sum_{j<y} log1p(j / theta): O(y^2 / theta), no cancellation."""
    return digamma_sums(y, theta, 0)


def nb2_loglik(y: np.ndarray, eta: np.ndarray, theta: float, lgy1: np.ndarray | None = None) -> float:
    """NB2 log-likelihood (sum over observations) at linear predictor eta (offset included).

    Written in its log1p form, each term accurate to rounding at any theta (1e-12 relative against
    50-digit arithmetic up to theta = 1e8, tests/stats/test_nb2_loglik.py):
        l_i = sum_{j<y} log1p(j / theta) - log y! + y eta - (y + theta) log1p(mu / theta),
    log1p(mu / theta) = softplus(eta - log theta). The textbook form theta (log theta - log(theta + mu))
    + lgamma(y + theta) - lgamma(theta) cancels to about 1e-16 theta: 2.6e-7 at theta = 1e8, enough
    for a fit near the Poisson boundary to climb on rounding noise."""
    if not np.all(eta < _ETA_MAX) or not np.isfinite(theta) or theta <= 0:
        return -np.inf
    lgy1 = gammaln(y + 1.0) if lgy1 is None else lgy1
    l1p = np.logaddexp(0.0, eta - np.log(theta))  # log1p(mu / theta), accurate for tiny and huge mu / theta
    ll = _lgamma_ratio_scaled(y, theta) - lgy1 + y * eta - (y + theta) * l1p
    s = float(np.sum(ll))
    return s if np.isfinite(s) else -np.inf


def poisson_loglik(y: np.ndarray, eta: np.ndarray, lgy1: np.ndarray | None = None) -> float:
    if not np.all(eta < _ETA_MAX):
        return -np.inf
    lgy1 = gammaln(y + 1.0) if lgy1 is None else lgy1
    s = float(np.sum(y * eta - np.exp(eta) - lgy1))
    return s if np.isfinite(s) else -np.inf


@dataclass(frozen=True)
class NB2RowDerivs:
    """Per-observation derivatives of the NB2 log-likelihood at (eta, theta), all (n,):
    d_eta = dl/deta, w = -d2l/deta2, c = d2l/(deta dlog theta), d_theta = dl/dtheta, h_theta = d2l/dtheta2."""

    d_eta: np.ndarray
    w: np.ndarray
    c: np.ndarray
    d_theta: np.ndarray
    h_theta: np.ndarray


def nb2_row_derivs(y: np.ndarray, eta: np.ndarray, theta: float) -> NB2RowDerivs:
    """The per-observation derivative terms of the NB2 log-likelihood (one theta for all rows given)."""
    mu = np.exp(eta)
    tm = theta + mu
    q = mu / tm  # in [0, 1]: the ratios below are written so that no intermediate overflows for huge mu
    d_eta = theta * (y - mu) / tm
    w = theta * q * (y + theta) / tm  # -d2l/deta2
    d_theta = digamma_sums(y, theta, 1) - np.log1p(mu / theta) + (mu - y) / tm
    h_theta = -digamma_sums(y, theta, 2) + 1.0 / theta - 2.0 / tm + ((y + theta) / tm) / tm
    return NB2RowDerivs(d_eta, w, d_eta * q, d_theta, h_theta)  # c = theta (y - mu) mu / (theta + mu)^2


def _nb2_derivs(y: np.ndarray, X: np.ndarray, eta: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (k+1,) and Hessian (k+1, k+1) of the log-likelihood in (beta, t = log theta)."""
    r = nb2_row_derivs(y, eta, theta)
    d_eta, w, c, d_theta, h_theta = r.d_eta, r.w, r.c, r.d_theta, r.h_theta
    k = X.shape[1]
    g = np.empty(k + 1)
    g[:k] = X.T @ d_eta
    gt = float(np.sum(d_theta))
    g[k] = theta * gt
    H = np.empty((k + 1, k + 1))
    H[:k, :k] = -(X.T @ (X * w[:, None]))
    H[:k, k] = H[k, :k] = X.T @ c
    H[k, k] = theta * theta * float(np.sum(h_theta)) + theta * gt
    return g, H


def halving_search(ll_at: Callable[[float], float], ll: float, slack: float, tries: int = 60) -> float | None:
    """The first step length t in 1, 1/2, 1/4, ... (`tries` of them) at which the log-likelihood ll_at(t)
    is at least ll - slack; None if there is none (the search is stuck)."""
    t = 1.0
    for _ in range(tries):
        if ll_at(t) >= ll - slack:
            return t
        t *= 0.5
    return None


def newton_step(g: np.ndarray, H: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Newton step -H^-1 g and decrement g' (-H)^-1 g via Cholesky of the scaled -H; None if -H is not positive definite."""
    d = np.sqrt(np.abs(np.diag(H)))
    d[d == 0] = 1.0
    A = -H / np.outer(d, d)
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return None, np.inf
    gs = g / d
    z = np.linalg.solve(L, gs)
    step = np.linalg.solve(L.T, z) / d
    return step, float(z @ z)


def fit_poisson(y: np.ndarray, X: np.ndarray, offset: np.ndarray | float = 0.0, beta0: np.ndarray | None = None, *, tol: float = 1e-20,
                maxiter: int = 200) -> NB2Result:
    """Poisson log-linear MLE by Newton with step halving (the log-likelihood is concave)."""
    y = np.asarray(y, dtype=float)
    lgy1 = gammaln(y + 1.0)
    if beta0 is None:
        beta = np.linalg.lstsq(X, np.log(y + 0.5) - offset, rcond=None)[0]
    else:
        beta = np.asarray(beta0, dtype=float).copy()
    eta = X @ beta + offset
    ll = poisson_loglik(y, eta, lgy1)
    if not np.isfinite(ll):
        beta = np.zeros(X.shape[1])
        beta[0] = np.log(max(y.mean(), 1e-8)) if X.shape[1] else 0.0
        eta = X @ beta + offset
        ll = poisson_loglik(y, eta, lgy1)
    dec, H, it = np.inf, np.zeros((X.shape[1], X.shape[1])), 0
    for it in range(1, maxiter + 1):
        mu = np.exp(eta)
        g = X.T @ (y - mu)
        H = -(X.T @ (X * mu[:, None]))
        step, dec = newton_step(g, H)
        if step is None:
            break
        if dec < tol:
            break
        t = 1.0
        slack = rounding_slack(ll) if dec < QUADRATIC * max(1.0, abs(ll)) else 0.0
        for _ in range(60):
            nb = beta + t * step
            ne = X @ nb + offset
            nl = poisson_loglik(y, ne, lgy1)
            if nl >= ll - slack:
                break
            t *= 0.5
        else:
            break
        beta, eta, ll = nb, ne, nl
    ok = gradient_converged(dec, ll, tol)
    return NB2Result(beta, 0.0, ll, H, float(dec), it, bool(ok), True)


def fit_nb2(y: np.ndarray, X: np.ndarray, offset: np.ndarray | float = 0.0, *, beta0: np.ndarray | None = None, alpha0: float | None = None,
            tol: float = 1e-20, maxiter: int = 200, check_boundary: bool = True) -> NB2Result:
    """The NB2 MLE over beta and alpha >= 0 (see the module docstring).

    y: (n,) counts; X: (n, k) design (with its intercept column); offset: (n,) or scalar, added to
    the linear predictor (log follow-up years). beta0/alpha0: a warm start (e.g. the full-data fit
    for a bootstrap replicate). check_boundary=False skips the Poisson comparison when the interior
    search converges (faster; used for replicates warm-started at an interior fit).

    A warm start that does not converge is retried cold (`cold_retry=True` on the answer): a start
    far from this sample's maximum (e.g. a previous fit whose arm had no events, coefficient near
    -50) leaves a Hessian that is numerically singular in that direction, from which no ascent step
    is found.
    """
    fit = _fit_nb2(y, X, offset, beta0=beta0, alpha0=alpha0, tol=tol, maxiter=maxiter, check_boundary=check_boundary)
    if fit.converged or beta0 is None:
        return fit
    cold = _fit_nb2(y, X, offset, tol=tol, maxiter=maxiter, check_boundary=True)
    if cold.converged or cold.llf > fit.llf:
        return replace(cold, cold_retry=True)
    return fit


def _fit_nb2(y: np.ndarray, X: np.ndarray, offset: np.ndarray | float = 0.0, *, beta0: np.ndarray | None = None, alpha0: float | None = None,
             tol: float = 1e-20, maxiter: int = 200, check_boundary: bool = True) -> NB2Result:
    """One search from one start (`fit_nb2` adds the cold retry)."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    off = np.asarray(offset, dtype=float) if np.ndim(offset) else float(offset)
    lgy1 = gammaln(y + 1.0)
    k = X.shape[1]
    pois: NB2Result | None = None
    if beta0 is None or alpha0 is None or not np.isfinite(alpha0) or alpha0 <= 0:
        pois = fit_poisson(y, X, off, beta0)
        mu = np.exp(X @ pois.beta + off)
        score_alpha = 0.5 * float(np.sum((y - mu) ** 2 - y))
        if score_alpha <= 0:
            return pois
        beta = pois.beta.copy()
        # moment start for theta, as glm.nb's theta.ml starts: n / sum((y / mu - 1)^2)
        # (a row whose Poisson mean underflowed to 0 -- an arm without events -- has y = 0 and adds (0 - 1)^2 = 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            pearson = np.where(mu > 0, (y / mu - 1.0) ** 2, np.where(y > 0, np.inf, 1.0))
        theta = float(len(y) / max(float(np.sum(pearson)), 1e-12))
    else:
        beta, theta = np.asarray(beta0, dtype=float).copy(), 1.0 / float(alpha0)
    theta = float(np.clip(theta, 1e-6, THETA_MAX / 10))
    eta = X @ beta + off
    ll = nb2_loglik(y, eta, theta, lgy1)
    if not np.isfinite(ll):
        return _fit_nb2(y, X, off, tol=tol, maxiter=maxiter) if beta0 is not None else (pois or fit_poisson(y, X, off))
    dec, H, it, to_boundary = np.inf, np.zeros((k + 1, k + 1)), 0, False
    for it in range(1, maxiter + 1):
        g, H = _nb2_derivs(y, X, eta, theta)
        step, dec = newton_step(g, H)
        if step is not None and dec < tol:
            break
        if step is None:  # not negative definite: alternate (beta | theta Newton, then log theta gradient/Newton step)
            sb, _ = newton_step(g[:k], H[:k, :k])
            step = np.zeros(k + 1)
            if sb is not None:
                step[:k] = sb
            step[k] = -g[k] / H[k, k] if H[k, k] < 0 else np.sign(g[k]) * 1.0
        step[k] = float(np.clip(step[k], -3.0, 3.0))
        t, moved = 1.0, False
        slack = rounding_slack(ll) if dec < QUADRATIC * max(1.0, abs(ll)) else 0.0  # quadratic region: rounding, not ascent, decides
        for _ in range(60):
            nb, nt = beta + t * step[:k], theta * np.exp(t * step[k])
            ne = X @ nb + off
            nl = nb2_loglik(y, ne, nt, lgy1)
            if nl >= ll - slack:
                moved = True
                break
            t *= 0.5
        if not moved:
            break  # no ascent possible within rounding: the gradient decides below
        beta, theta, eta, ll = nb, nt, ne, nl
        if theta > THETA_MAX:
            to_boundary = True
            break
    if not to_boundary:
        g, H = _nb2_derivs(y, X, eta, theta)
        step, dec = newton_step(g, H)
        if step is None:
            dec = np.inf
    interior = NB2Result(beta, 1.0 / theta, ll, H, float(dec), it, gradient_converged(dec, ll, tol) and not to_boundary, False)
    if interior.converged and not check_boundary:
        return interior
    if pois is None:
        pois = fit_poisson(y, X, off, beta)
    if to_boundary or pois.llf >= interior.llf:
        return pois
    return interior


def inv_pd(A: np.ndarray) -> tuple[np.ndarray, bool]:
    """Inverse of a symmetric positive (semi)definite matrix via its Jacobi-scaled form; (pinv, False) when singular."""
    d = np.sqrt(np.abs(np.diag(A)))
    d[d == 0] = 1.0
    S = A / np.outer(d, d)
    try:
        L = np.linalg.cholesky(S)
        Li = np.linalg.inv(L)
        return (Li.T @ Li) / np.outer(d, d), True
    except np.linalg.LinAlgError:
        return np.linalg.pinv(A), False


@dataclass(frozen=True)
class NB2Wald:
    """Wald quantities of an NB2 fit: mu (n,) fitted means (offset included); vcov (k, k) of beta from
    the expected information (X' W X)^-1, W = mu / (1 + alpha mu), at the fitted alpha (what R's
    `summary(glm.nb(...))` reports); ok: False when that information was singular (pinv used)."""

    mu: np.ndarray
    vcov: np.ndarray
    ok: bool

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.vcov), 0.0, None))


def nb2_wald(X: np.ndarray, offset: np.ndarray | float, beta: np.ndarray, alpha: float) -> NB2Wald:
    """Expected-information Wald covariance of beta at (beta, alpha >= 0) for design X (n, k) and offset (n,)."""
    X = np.asarray(X, dtype=float)
    mu = np.exp(np.clip(X @ np.asarray(beta, dtype=float) + offset, -_ETA_MAX, _ETA_MAX))
    w = mu / (1.0 + alpha * mu)
    V, ok = inv_pd(X.T @ (X * w[:, None]))
    return NB2Wald(mu, V, ok)


def nb2_sandwich(y: np.ndarray, X: np.ndarray, mu: np.ndarray, alpha: float) -> tuple[np.ndarray, bool]:
    """Patient-level sandwich (HC0) covariance (k, k) of beta at the fitted alpha, and whether the bread inverted:
    A^-1 B A^-1, A = X' diag(mu (1 + alpha y) / (1 + alpha mu)^2) X (observed information of beta, alpha fixed),
    B = sum_i s_i s_i', s_i = x_i (y_i - mu_i) / (1 + alpha mu_i). y, mu: (n,); X: (n, k)."""
    y, X, mu = np.asarray(y, dtype=float), np.asarray(X, dtype=float), np.asarray(mu, dtype=float)
    bread, ok = inv_pd(X.T @ (X * (mu * (1.0 + alpha * y) / (1.0 + alpha * mu) ** 2)[:, None]))
    s = X * ((y - mu) / (1.0 + alpha * mu))[:, None]
    return bread @ (s.T @ s) @ bread, ok


def nb2_score_hessian(y: np.ndarray, X: np.ndarray, offset: np.ndarray | float, beta: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian in (beta, log theta) at (beta, alpha > 0): for checks and covariances."""
    return _nb2_derivs(np.asarray(y, float), np.asarray(X, float), np.asarray(X, float) @ beta + offset, 1.0 / alpha)
