"""Patient-level bootstrap confidence intervals for metrics without a closed form.

Patients are the unit of resampling (never ensemble samples, never lesions): every array passed
in holds one entry per patient, and a resample draws patients with replacement, keeping each
patient's entries together (`scipy.stats.bootstrap(..., paired=True)`).

The interval is BCa (bias-corrected and accelerated, Efron 1987) as computed by
`scipy.stats.bootstrap`. When BCa is degenerate (scipy warns and returns NaN: e.g. a bootstrap
distribution with all replicates equal, or an acceleration that cannot be estimated), the
percentile interval of the same replicates is returned instead and the result says so in
`method` and `note`; when even that is undefined (every replicate NaN) the interval is the point
estimate's and `note` flags it. Seeded: the same seed gives the same interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap CI. `method` is 'BCa' or 'percentile' (fallback); `note` says why when it fell back."""

    estimate: float
    ci_low: float
    ci_high: float
    standard_error: float
    method: str
    confidence_level: float
    n_resamples: int
    n_patients: int
    seed: int | None
    note: str = ""

    def conf_int(self) -> tuple[float, float]:
        return self.ci_low, self.ci_high

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "estimate": self.estimate, "ci_low": self.ci_low, "ci_high": self.ci_high, "standard_error": self.standard_error,
            "method": self.method, "confidence_level": self.confidence_level, "n_resamples": self.n_resamples,
            "n_patients": self.n_patients, "seed": self.seed, "note": self.note,
        }])

    def summary(self) -> str:
        pct = round(100 * self.confidence_level)
        text = (f"{self.estimate:.4g} ({pct}% {self.method} CI {self.ci_low:.4g} to {self.ci_high:.4g}; "
                f"{self.n_resamples} resamples of {self.n_patients} patients)")
        return text + (f" [{self.note}]" if self.note else "")


def patient_bootstrap(
    statistic: Callable[..., float | np.ndarray],
    *data: Sequence | np.ndarray,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    seed: int | None = 0,
    vectorized: bool = False,
    method: str = "BCa",
    batch: int | None = 256,
) -> BootstrapResult:
    """Bootstrap CI of `statistic(*data)` resampling patients.

    data: one or more arrays of equal length n (one entry per patient; a 2D array (n, S) keeps a
    patient's row together). statistic: called as `statistic(*arrays)` on resampled arrays; with
    `vectorized=True` it must accept an extra leading batch axis and an `axis=-1` keyword as
    scipy's vectorized statistics do (then 1D data only). method: 'BCa' (default; percentile
    fallback when degenerate) or 'percentile'. batch: resamples (and jackknife leave-one-out
    samples) evaluated per vectorized call, bounding memory at about batch x n values.
    """
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile', got {method!r}")
    arrays = [np.asarray(d) for d in data]
    if not arrays:
        raise ValueError("no data")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("every data array needs one entry per patient (same length)")
    estimate = float(statistic(*arrays))
    if n < 2 or n_resamples < 1:
        return BootstrapResult(estimate, estimate, estimate, float("nan") if n < 2 else 0.0, "none", confidence_level, 0, n, seed,
                               note="fewer than 2 patients: no interval" if n < 2 else "no resamples requested")

    if vectorized and all(a.ndim == 1 for a in arrays):
        sample: tuple = tuple(arrays)

        def stat(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
            return statistic(*xs, axis=axis)

        vec = True
    else:
        idx = np.arange(n)
        sample = (idx,)

        def stat(i: np.ndarray) -> float:  # type: ignore[misc]
            i = np.asarray(i, dtype=np.int64)
            return float(statistic(*[a[i] for a in arrays]))

        vec = False

    rng = np.random.default_rng(seed)
    note = ""
    used = method
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = stats.bootstrap(
                sample, stat, n_resamples=n_resamples, confidence_level=confidence_level, method=method,
                paired=len(sample) > 1, vectorized=vec, random_state=rng, batch=batch if vec else None,
            )
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
            dist = np.asarray(res.bootstrap_distribution, dtype=float)
        except (ValueError, FloatingPointError, ZeroDivisionError) as exc:  # scipy raises on some degenerate inputs
            low = high = float("nan")
            dist = _percentile_replicates(stat, sample, n, n_resamples, np.random.default_rng(seed), vec)
            note = f"BCa failed ({type(exc).__name__}: {exc})"
    degenerate_warning = any("degenerate" in str(w.message).lower() or "nan" in str(w.message).lower() for w in caught)
    if not (np.isfinite(low) and np.isfinite(high)) or (method == "BCa" and degenerate_warning and not np.isfinite(low + high)):
        finite = dist[np.isfinite(dist)]
        alpha = (1.0 - confidence_level) / 2.0
        if finite.size:
            low, high = (float(v) for v in np.quantile(finite, [alpha, 1.0 - alpha]))
            used = "percentile"
            note = note or "BCa degenerate (scipy returned no interval); percentile interval of the same replicates"
            if finite.size < dist.size:
                note += f"; {dist.size - finite.size} replicates undefined and dropped"
        else:
            low = high = estimate
            used = "none"
            note = "every bootstrap replicate is undefined; interval is the point estimate"
    finite = dist[np.isfinite(dist)]
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return BootstrapResult(estimate, low, high, se, used, confidence_level, int(n_resamples), int(n), seed, note)


def _percentile_replicates(stat: Callable, sample: tuple, n: int, n_resamples: int, rng: np.random.Generator, vec: bool) -> np.ndarray:
    draws = rng.integers(0, n, size=(n_resamples, n))
    if vec:
        return np.asarray(stat(*[s[draws] for s in sample], axis=-1), dtype=float)
    return np.array([stat(d) for d in draws], dtype=float)
