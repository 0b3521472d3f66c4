"""Randomization test of each arm of the NB-GEE (`mseval.stats.gee.fit_gee`) and its inverted confidence interval.

The NB-GEE's Wald CIs (bias-reduced sandwich, normal or t reference) cover about a point short at the world's
20 patients per arm (bench/RESULTS.md, rules R5-R6); the cumulative NB2's permutation CI does not. This is the same
construction for the GEE, with patients (clusters) as the units that randomization exchanges.

For arm j vs the reference, with the full fit's working correlation parameter and NB alpha held fixed:

- null fit: the GEE without arm j's indicator (arm j merged into the reference), offset log(interval years)
  + b d_i on every visit of patient i (d_i = 1 in arm j; b = 0 for the test of no effect), solved by Fisher
  scoring on the GEE estimating equations sum_i D_i' V_i^-1 (y_i - mu_i) = 0, V_i = A_i^1/2 R_i A_i^1/2,
  A_i = diag(mu + alpha mu^2), R_i the working correlation over the patient's observed visits (AR(1): rho^|visit
  index difference|), D_i = diag(mu_i) X_i;
- statistic: the efficient score of beta_j at the null fit, T = U^2 / V, U = sum_i d_i r_i with
  r_i = mu_i' V_i^-1 (y_i - mu_i), V = sum_i d_i w_i - c' I^-1 c (w_i = mu_i' V_i^-1 mu_i, c = sum_i d_i
  X_i' diag(mu_i) V_i^-1 mu_i, I = sum_i D_i' V_i^-1 D_i): the working-model variance of the efficient score
  (the scale phi cancels in the permutation p value);
- reference distribution: d permuted among the arm-j and reference patients (within strata if given) B times,
  the same permutations for every b; p = (1 + #{T* >= T}) / (1 + B);
- CI: {b: the test of beta_j = b does not reject at 5%} (`small_sample.invert_test`), the estimate the GEE's.

Null hypothesis of the test (b = 0): the sharp null that the arm changes no patient's counts at any visit (exact
level under randomization, whatever the working correlation or variance); the interval treats "beta_j = b" as the
sharp null that the arm multiplies every patient's rate by e^b (approximate when patients respond unequally).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mseval.stats.estimability import assess_ratio
from mseval.stats.gee import GeeFit, fit_gee, gee_design
from mseval.stats.small_sample import _perm_p, _permutations, invert_test, score_ratio


def _panel(df: pd.DataFrame, y: np.ndarray, X: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, ...]:
    """Patient x visit arrays padded to the longest patient: Y, OFF, visit index (n, T), X (n, T, k), mask (n, T)."""
    pid = pd.factorize(df["patient_id"])[0]
    pos = df.groupby(pid, sort=False).cumcount().to_numpy()
    n, T, k = int(pid.max()) + 1, int(pos.max()) + 1, X.shape[1]
    Y, O, V = np.zeros((n, T)), np.zeros((n, T)), np.zeros((n, T))
    XX, M = np.zeros((n, T, k)), np.zeros((n, T), dtype=bool)
    Y[pid, pos], O[pid, pos], V[pid, pos], XX[pid, pos], M[pid, pos] = y, off, df["visit_index"].to_numpy(dtype=float), X, True
    return Y, O, V, XX, M


def _corr(vidx: np.ndarray, mask: np.ndarray, corr: str, dep: float) -> np.ndarray:
    """(n, T, T) working correlation over each patient's observed visits (identity rows for padding)."""
    T = vidx.shape[1]
    if corr == "ar1":
        R = dep ** np.abs(vidx[:, :, None] - vidx[:, None, :])
    elif corr == "exchangeable":
        R = np.full((len(vidx), T, T), dep)
    else:
        R = np.zeros((len(vidx), T, T))
    both = mask[:, :, None] & mask[:, None, :]
    R = np.where(both, R, 0.0)
    idx = np.arange(T)
    R[:, idx, idx] = 1.0
    return R


class _NullGee:
    """The null GEE of one arm (its indicator dropped) at fixed working correlation and alpha, on the panel arrays."""

    def __init__(self, Y: np.ndarray, O: np.ndarray, Xr: np.ndarray, M: np.ndarray, R: np.ndarray, alpha: float, beta0: np.ndarray):
        self.Y, self.O, self.Xr, self.M, self.R, self.alpha, self.beta0 = Y, O, Xr, M, R, alpha, beta0

    def parts(self, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(r (n,), w (n,), q (n, p), I (p, p)) at the null fit with offset + extra (n, T)."""
        beta = self.beta0.copy()
        for _ in range(50):
            mu, Vinv = self._mu_vinv(beta, extra)
            D = mu[:, :, None] * self.Xr
            VD = Vinv @ D
            info = np.einsum("ntp,ntq->pq", D, VD)
            step = np.linalg.solve(info, np.einsum("ntp,nt->p", VD, self.Y - mu))
            beta = beta + step
            if np.max(np.abs(step)) < 1e-10:
                break
        mu, Vinv = self._mu_vinv(beta, extra)
        D = mu[:, :, None] * self.Xr
        Vmu = np.einsum("nst,nt->ns", Vinv, mu)
        r = np.einsum("ns,ns->n", Vmu, self.Y - mu)
        w = np.einsum("ns,ns->n", Vmu, mu)
        q = np.einsum("ntp,nt->np", D, Vmu)
        info = np.einsum("ntp,ntq->pq", D, Vinv @ D)
        return r, w, q, info

    def _mu_vinv(self, beta: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = np.where(self.M, np.exp(np.einsum("ntp,p->nt", self.Xr, beta) + self.O + extra), 0.0)
        s = np.where(self.M, np.sqrt(mu + self.alpha * mu * mu), 1.0)
        V = s[:, :, None] * self.R * s[:, None, :]
        return mu, np.linalg.inv(V)


def _stats(D: np.ndarray, r: np.ndarray, w: np.ndarray, q: np.ndarray, info: np.ndarray) -> np.ndarray:
    """Efficient score statistics U^2 / V, one per row of D (B, n) (patient labels)."""
    U = D @ r
    c = D @ q
    V = D @ w - np.einsum("bi,ij,bj->b", c, np.linalg.inv(info), c)
    return score_ratio(U, V, float(np.sum(w)))


def gee_permutation_tests(visits: pd.DataFrame, patients: pd.DataFrame, *, corr: str = "ar1", covariates: Sequence[str] = (),
                          reference: str | None = None, response: str = "net2", arm_col: str = "arm", n_permutations: int = 999,
                          seed: int = 0, conf_level: float = 0.95, strata: str | None = None, file: str | None = None,
                          fit: GeeFit | None = None) -> pd.DataFrame:
    """One row per compared arm of the NB-GEE `fit_gee(visits, patients, corr=corr, covariates=covariates)`
    (bias-reduced sandwich): arm, rate_ratio (the GEE's), ci_low, ci_high (the inverted permutation test),
    p_value (the permutation test of no effect), statistic, n_permutations, estimable, note, and the GEE's Wald
    ci_low_wald / ci_high_wald beside them. `strata`: a per-patient column within which labels are permuted.
    The same seed gives the same numbers (generator `default_rng([seed, j])` for the arm in column j). `fit`: that
    very `fit_gee` result when the caller has it (not refitted)."""
    if fit is None:
        fit = fit_gee(visits, patients, corr=corr, covariates=covariates, reference=reference, response=response, arm_col=arm_col, file=file)
    _, df, y, X, names, _ = gee_design(visits, patients, covariates=covariates, corr=corr, reference=fit.reference, response=response,
                                       arm_col=arm_col, file=file)
    Y, O, VI, XX, M = _panel(df, y, X, np.log(df["years"].to_numpy(dtype=float)))
    R = _corr(VI, M, corr, fit.dep_param)
    first = df.groupby(pd.factorize(df["patient_id"])[0], sort=False).head(1)
    arm = first[arm_col].astype(str).to_numpy()
    st = None if strata is None else pd.factorize(first[strata].astype(str))[0]
    beta, table = fit.params.to_numpy(), fit.table.set_index("term")
    rows = []
    for j, name in enumerate(names):
        if name not in table.index or name == "Intercept" or not np.any(arm == name):
            continue
        keep = np.arange(len(names)) != j
        null = _NullGee(Y, O, XX[:, :, keep], M, R, float(fit.nb_alpha or 0.0), beta[keep])
        d = (arm == name).astype(float)
        pool = (arm == name) | (arm == fit.reference)
        D = _permutations(d, pool, st, n_permutations, np.random.default_rng([seed, j]))

        def p_at(b: float, null: _NullGee = null, d: np.ndarray = d, D: np.ndarray = D) -> float:
            parts = null.parts(b * d[:, None] * M)
            return _perm_p(_stats(D, *parts), float(_stats(d[None, :], *parts)[0]))

        t = table.loc[name]
        b, se = float(np.log(t["rate_ratio"])), float(t["se"])
        parts0 = null.parts(np.zeros_like(Y))
        stat = float(_stats(d[None, :], *parts0)[0])
        p = _perm_p(_stats(D, *parts0), stat)
        lo, hi = invert_test(lambda bb: p_at(bb) > 1.0 - conf_level, b, se)
        with np.errstate(over="ignore"):
            cl, ch = float(np.exp(lo)), float(np.exp(hi))
        why = [] if bool(t["estimable"]) else [str(t["note"])]
        ok, note = assess_ratio(float(t["rate_ratio"]), cl, ch, converged=fit.converged, reasons=why)
        rows.append({"arm": name, "rate_ratio": float(t["rate_ratio"]), "ci_low": cl, "ci_high": ch, "p_value": p,
                     "statistic": stat, "n_permutations": n_permutations,
                     "estimable": ok, "note": note, "ci_low_wald": float(t["ci_low"]), "ci_high_wald": float(t["ci_high"]),
                     "ci_method": f"inverted permutation test of the GEE score ({corr} working correlation and alpha fixed at the fit's)"})
    return pd.DataFrame(rows)


__all__ = ["gee_permutation_tests"]
