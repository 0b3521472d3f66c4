"""Multiplicity over the comparisons of several arms with a shared reference (control).

Three procedures, each controlling the family-wise error rate (FWER) over the planned comparisons at
`alpha` (two-sided):

- ``holm``: Holm (1979) step-down on the unadjusted p values (statsmodels `multipletests`); valid
  under any dependence.
- ``dunnett``: single-step Dunnett (1955). The Wald statistics z_j = b_j / se_j of the arm
  coefficients are jointly normal (asymptotically) with correlation R_jk = V_jk / sqrt(V_jj V_kk)
  taken from the fitted model's covariance V (they share the reference arm, so R_jk is about 0.5 with
  equal arms); the adjusted p of arm j is P(max_k |Z_k| >= |z_j|), Z ~ N(0, R) (or a multivariate t
  with `df` degrees of freedom, the ANOVA setting of `scipy.stats.dunnett`). Exact for the max of the
  correlated statistics, so less conservative than Holm's single step (Bonferroni) when R > 0.
  Probabilities from `scipy.stats.multivariate_normal.cdf` / `multivariate_t.cdf` (Genz's
  quasi-Monte Carlo, error below 1e-5), made reproducible by a fixed seed.
- ``fixed_sequence``: a hierarchy in the analysis plan's order, each comparison at the full `alpha`;
  testing stops at the first comparison not rejected and the later ones are *not tested* (their
  adjusted p is left empty, `tested` False, with a note). The adjusted p of a tested comparison is
  the running maximum of the p values so far (rejected exactly when the hierarchy rejects it).

A comparison that is not estimable (e.g. an arm without events) enters Holm with p = 1 (the family
keeps its planned size), stops a fixed sequence, and gets no adjusted p under Dunnett.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

PROCEDURES = ("holm", "dunnett", "fixed_sequence", "none")

_ABSEPS = 1e-6
_MAXPTS_PER_DIM = 200_000


@dataclass(frozen=True)
class Multiplicity:
    """`table`: one row per comparison (arm, p_value, p_adjusted, tested, rejected, note) in the order
    given (fixed sequence: the plan's order); `procedure`, `alpha`, and `description` (words for a report)."""

    table: pd.DataFrame
    procedure: str
    alpha: float
    description: str

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Multiplicity: {self.description}"]
        for r in self.table.itertuples():
            p = f"{r.p_adjusted:.4g}" if np.isfinite(r.p_adjusted) else "-"
            lines.append(f"  {r.arm:24s} p {r.p_value:.4g}  adjusted {p}  {'rejected' if r.rejected else 'not rejected'}"
                         + (f"  ({r.note})" if r.note else ""))
        return "\n".join(lines)


def describe(procedure: str, m: int, alpha: float = 0.05, order: Sequence[str] | None = None) -> str:
    """Words for `procedure` over `m` comparisons with the reference at family-wise `alpha` (fixed sequence: in `order`)."""
    if procedure == "none":
        return f"none: each comparison at two-sided {alpha:g}, no control of the family-wise error"
    if procedure == "holm":
        return f"Holm step-down over {m} comparisons with the reference, family-wise error {alpha:g} (two-sided)"
    if procedure == "dunnett":
        return (f"Dunnett single-step over {m} comparisons with the shared reference (joint normal Wald statistics, correlation "
                f"from the fitted covariance), family-wise error {alpha:g} (two-sided)")
    return (f"fixed-sequence hierarchy {' > '.join(map(str, order or []))}, each at two-sided {alpha:g}; testing stops at the first "
            "comparison not rejected")


def dunnett_pvalues(z: Sequence[float], corr: np.ndarray, *, df: float | None = None, seed: int = 0) -> np.ndarray:
    """Single-step Dunnett adjusted p values (m,) of the statistics z (m,) with correlation `corr` (m, m):
    p_j = 1 - P(|Z_k| < |z_j| for every k), Z ~ N(0, corr) (multivariate t with `df` when given).
    NaN where z_j is not finite. One comparison: the unadjusted two-sided p."""
    z = np.asarray(z, dtype=float)
    R = np.asarray(corr, dtype=float)
    m = z.size
    out = np.full(m, np.nan)
    dist = stats.norm if df is None else stats.t(df)
    for j in np.flatnonzero(np.isfinite(z)):
        c = abs(z[j])
        if m == 1:
            out[j] = float(2 * dist.sf(c))
            continue
        upper = np.full(m, c)
        rng = np.random.default_rng(seed)
        if df is None:
            inside = stats.multivariate_normal.cdf(upper, mean=np.zeros(m), cov=R, lower_limit=-upper, abseps=_ABSEPS, releps=0,
                                                   maxpts=_MAXPTS_PER_DIM * m, rng=rng)
        else:
            inside = stats.multivariate_t.cdf(upper, loc=np.zeros(m), shape=R, df=df, lower_limit=-upper, maxpts=_MAXPTS_PER_DIM * m,
                                              random_state=rng)
        out[j] = float(np.clip(1.0 - inside, 0.0, 1.0))
    return out


def wald_correlation(vcov: pd.DataFrame, terms: Sequence[str]) -> np.ndarray:
    """Correlation (m, m) of the Wald statistics of `terms` from the model covariance `vcov` (terms x terms)."""
    V = vcov.loc[list(terms), list(terms)].to_numpy(dtype=float)
    d = np.sqrt(np.diag(V))
    return V / np.outer(d, d)


def adjust(
    arms: Sequence[str],
    p_values: Sequence[float],
    procedure: str,
    *,
    alpha: float = 0.05,
    estimable: Sequence[bool] | None = None,
    z: Sequence[float] | None = None,
    corr: np.ndarray | None = None,
    order: Sequence[str] | None = None,
    seed: int = 0,
) -> Multiplicity:
    """Adjust the two-sided p values of the comparisons `arms` (each vs the shared reference) by
    `procedure` (one of `PROCEDURES`; "none": unadjusted). Dunnett needs the Wald statistics `z` and
    their correlation `corr`; fixed_sequence the testing `order` (every arm once)."""
    from statsmodels.stats.multitest import multipletests

    if procedure not in PROCEDURES:
        raise ValueError(f"unknown multiplicity procedure {procedure!r} (choose one of {', '.join(PROCEDURES)})")
    arms = [str(a) for a in arms]
    p = np.asarray(p_values, dtype=float)
    ok = np.ones(len(arms), bool) if estimable is None else np.asarray(estimable, bool) & np.isfinite(p)
    notes = ["" if k else "not estimable: no test" for k in ok]
    tested = ok.copy()
    padj = np.full(len(arms), np.nan)
    if procedure == "none":
        padj = np.where(ok, p, np.nan)
    elif procedure == "holm":
        if len(arms):
            padj = multipletests(np.where(ok, p, 1.0), method="holm")[1]
        padj = np.where(ok, padj, np.nan)
    elif procedure == "dunnett":
        if z is None or corr is None:
            raise ValueError("Dunnett needs the Wald statistics z and their correlation")
        zz = np.where(ok, np.asarray(z, dtype=float), np.nan)
        padj = dunnett_pvalues(zz, corr, seed=seed)
    else:
        if order is None or sorted(map(str, order)) != sorted(arms):
            raise ValueError(f"a fixed sequence needs an order naming every compared arm once ({', '.join(arms)})")
        idx = {a: k for k, a in enumerate(arms)}
        running, stopped_at = 0.0, None
        tested[:] = False
        for a in order:
            k = idx[str(a)]
            if stopped_at is not None:
                notes[k] = f"not tested: the hierarchy stopped at {stopped_at!r}"
                continue
            tested[k] = bool(ok[k])
            if not ok[k]:
                stopped_at = str(a)
                continue
            running = max(running, p[k])
            padj[k] = running
            if running > alpha:
                stopped_at = str(a)
        perm = [idx[str(a)] for a in order]
        arms, p, padj, tested, ok = [arms[k] for k in perm], p[perm], padj[perm], tested[perm], ok[perm]
        notes = [notes[k] for k in perm]
    rejected = np.isfinite(padj) & (padj <= alpha) & tested
    table = pd.DataFrame({"arm": arms, "p_value": np.where(ok, p, np.nan), "p_adjusted": padj, "tested": tested,
                          "rejected": rejected, "note": notes})
    return Multiplicity(table, procedure, float(alpha), describe(procedure, len(arms), alpha, order))
