"""A patsy design matrix with the reference arm first, built once for loops over ensemble samples,
bootstrap resamples and simulated trials; fitted with `mseval.stats.nb2_mle.fit_nb2` (the one NB2
fitter, equal to R's `MASS::glm.nb`) and `nb2_wald` (expected-information Wald covariance, as
`fit_count_model(cov="expected")` reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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
