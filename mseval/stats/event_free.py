"""Infinite NB2 maximum-likelihood estimates from event-free indicator terms, handled exactly.

When every observation with a 0/1 column j equal to 1 has count 0 (an arm with no events), the
log-likelihood rises without bound as beta_j -> -inf: those observations' means tend to 0 and their
log-likelihood to its maximum, 0. The supremum over the other coefficients is attained by the model
without column j and without those observations, so the MLE is beta_j = -inf with the others (and
alpha) equal to the reduced model's MLE. This module finds such columns (repeatedly: dropping rows
can leave another indicator with no rows or no events) so a caller fits the reduced model and
reports beta_j = -inf for that term only, instead of letting the fitter drift to about -50 and
calling that converged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reduction:
    """keep_cols: (p,) bool, the columns of the reduced model; keep_rows: (n,) bool, its observations;
    infinite: (p,) bool, terms whose MLE is -inf (no events among their observations); empty: (p,)
    bool, terms with no observation left (not identified)."""

    keep_cols: np.ndarray
    keep_rows: np.ndarray
    infinite: np.ndarray
    empty: np.ndarray


def indicator_columns(X: np.ndarray) -> np.ndarray:
    """(p,) bool: columns holding only 0 and 1 that are not all 1 (an intercept is not an indicator)."""
    X = np.asarray(X, dtype=float)
    zero_one = np.all((X == 0.0) | (X == 1.0), axis=0)
    return zero_one & ~np.all(X == 1.0, axis=0)


def event_free_terms(y: np.ndarray, X: np.ndarray) -> Reduction:
    """The reduced model of one count vector y (n,) under design X (n, p): see the module docstring."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    ind = indicator_columns(X)
    keep_cols = np.ones(X.shape[1], dtype=bool)
    keep_rows = np.ones(X.shape[0], dtype=bool)
    infinite = np.zeros(X.shape[1], dtype=bool)
    empty = np.zeros(X.shape[1], dtype=bool)
    changed = True
    while changed:
        changed = False
        for j in np.flatnonzero(ind & keep_cols):
            rows = keep_rows & (X[:, j] == 1.0)
            if not rows.any():
                keep_cols[j], empty[j], changed = False, True, True
            elif y[rows].sum() == 0:
                keep_cols[j], infinite[j], changed = False, True, True
                keep_rows &= ~rows
    return Reduction(keep_cols, keep_rows, infinite, empty)


def event_free_samples(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(p,) int: per term, the number of samples (columns of y (n, M)) with no event among the
    observations whose indicator is 1 (0 for non-indicator terms): their per-sample MLE is -inf."""
    y = np.asarray(y, dtype=float)
    ind = indicator_columns(X)
    out = np.zeros(X.shape[1], dtype=int)
    for j in np.flatnonzero(ind):
        rows = X[:, j] == 1.0
        out[j] = int(np.sum(y[rows].sum(axis=0) == 0))
    return out
