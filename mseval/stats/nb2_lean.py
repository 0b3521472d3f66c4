"""A lean NB2 fit on a design matrix, for loops over ensemble samples and simulated trials.

`fit_count_model` (statsmodels, formula interface) is the primary fitter of the observed analysis;
this module builds the same design matrix once (patsy, the reference arm as the first level) and
fits NB2 by alternating Fisher scoring for beta and a bounded one-dimensional maximisation of
the likelihood in log alpha (the glm.nb scheme; convergence judged on beta and the
log-likelihood, so a dispersion at the Poisson boundary still converges), falling back to statsmodels' `NegativeBinomial`
when that does not converge. Wald covariance: the expected information (X' W X)^-1 with
W = mu / (1 + alpha mu), as `fit_count_model(cov="expected")` and R's `glm.nb` report.
tests/stats/test_nb2_lean.py checks agreement with `fit_count_model`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scipy import optimize
from scipy.special import gammaln

LOG_ALPHA_BOUNDS = (-12.0, 5.0)  # alpha in [6e-6, 148]; the lower end is the Poisson boundary


@dataclass(frozen=True)
class Design:
    """X: (n, p) design matrix; names: p column names (arm columns named by the arm); offset: (n,)
    log follow-up years; rows: the table's row positions kept (complete cases)."""

    X: np.ndarray
    names: list[str]
    offset: np.ndarray
    rows: np.ndarray


def design_matrix(table: pd.DataFrame, rhs: str, *, reference: str | None = None, arm_col: str = "arm",
                  years: str = "followup_years") -> Design:
    """The right-hand side `rhs` (e.g. "arm + age", "arm * score") as a patsy design matrix with
    `reference` the first level of `arm_col`; columns `arm[T.x]` are renamed `x`, `arm[T.x]:s` to `x:s`."""
    import patsy

    d = table.reset_index(drop=True)
    if arm_col in d.columns:
        levels = list(pd.unique(d[arm_col].astype(str)))
        levels = sorted(levels)
        if reference is not None and reference in levels:
            levels.remove(reference)
            levels.insert(0, reference)
        d[arm_col] = pd.Categorical(d[arm_col].astype(str), categories=levels)
    X = patsy.dmatrix(rhs, d, return_type="dataframe", NA_action="drop")
    rows = X.index.to_numpy()
    names = [c.replace(f"{arm_col}[T.", "").replace("]", "") for c in X.columns]
    off = np.log(pd.to_numeric(table[years]).to_numpy(dtype=float)[rows])
    return Design(X.to_numpy(dtype=float), names, off, rows)


@dataclass(frozen=True)
class LeanFit:
    """beta (p,), alpha, vcov (p, p) from the expected information, mu (n,), converged."""

    beta: np.ndarray
    alpha: float
    vcov: np.ndarray
    mu: np.ndarray
    converged: bool

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.vcov), 0.0, None))


def fit_nb2(y: np.ndarray, X: np.ndarray, offset: np.ndarray | None = None, *, start: np.ndarray | None = None,
            alpha0: float = 1.0) -> LeanFit:
    """Maximum-likelihood NB2 of counts y (n,) on X (n, p) with `offset` (n,) = log exposure."""
    y = np.asarray(y, dtype=float)
    off = np.zeros(len(y)) if offset is None else np.asarray(offset, dtype=float)
    if start is None:
        start = np.zeros(X.shape[1])
        start[0] = np.log(max(y.sum(), 0.5) / np.exp(off).sum())
    with np.errstate(all="ignore"):
        beta, alpha, ok = _alternating(y, X, off, np.asarray(start, dtype=float), alpha0)
    if not ok or not np.all(np.isfinite(beta)):
        from statsmodels.discrete.discrete_model import NegativeBinomial

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = NegativeBinomial(y, X, offset=off, loglike_method="nb2").fit(method="newton", maxiter=200, disp=0)
                beta, alpha = np.asarray(res.params[:-1], dtype=float), float(res.params[-1])
                ok = bool(res.mle_retvals.get("converged", False)) and np.all(np.isfinite(beta))
            except (np.linalg.LinAlgError, ValueError, OverflowError):
                ok = False
    mu = np.exp(np.clip(X @ beta + off, -30, 30))
    w = mu / (1.0 + alpha * mu)
    info = X.T @ (X * w[:, None])
    try:
        V = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        V = np.linalg.pinv(info)
        ok = False
    return LeanFit(beta, float(alpha), V, mu, bool(ok))


def nb2_loglik(y: np.ndarray, mu: np.ndarray, alpha: float) -> float:
    """NB2 log-likelihood of counts y (n,) with means mu (n,) and dispersion alpha."""
    r = 1.0 / alpha
    return float(np.sum(gammaln(y + r) - gammaln(r) - gammaln(y + 1) + r * np.log(r / (r + mu)) + y * np.log(mu / (r + mu))))


def _alternating(y: np.ndarray, X: np.ndarray, off: np.ndarray, beta: np.ndarray, alpha: float, *, tol: float = 1e-8,
                 maxiter: int = 100) -> tuple[np.ndarray, float, bool]:
    la = float(np.clip(np.log(max(alpha, 1e-8)), *LOG_ALPHA_BOUNDS))
    llf_old = -np.inf
    for _ in range(maxiter):
        a = np.exp(la)
        step_max = np.inf
        for _inner in range(25):  # Fisher scoring for beta at fixed alpha
            mu = np.exp(np.clip(X @ beta + off, -30, 30))
            w = mu / (1.0 + a * mu)
            try:
                step = np.linalg.solve(X.T @ (X * w[:, None]), X.T @ ((y - mu) / (1.0 + a * mu)))
            except np.linalg.LinAlgError:
                return beta, a, False
            beta = beta + step
            step_max = float(np.max(np.abs(step)))
            if step_max < tol:
                break
        mu = np.exp(np.clip(X @ beta + off, -30, 30))
        res = optimize.minimize_scalar(lambda v: -nb2_loglik(y, mu, float(np.exp(v))), bounds=LOG_ALPHA_BOUNDS, method="bounded",
                                       options={"xatol": 1e-7})
        la = float(res.x)
        llf = -float(res.fun)
        if step_max < tol and abs(llf - llf_old) < 1e-9 * (1.0 + abs(llf)):
            return beta, float(np.exp(la)), bool(np.all(np.isfinite(beta)))
        llf_old = llf
    return beta, float(np.exp(la)), False
