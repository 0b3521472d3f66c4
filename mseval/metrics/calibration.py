"""Calibration of forecast ensembles: P(active) and lesion counts (voxels: `mseval.metrics.voxel`).

P(active) (binary):
- `reliability_table`: quantile bins (or uniform ones) with closed edges: bin b holds
  edge_b <= p < edge_{b+1}, the last bin also p = its upper edge, so p = 0 and p = 1 are always
  counted. Tied quantiles merge (fewer bins, never empty ones). Observed rate with a Wilson CI.
- `brier_decomposition`: Brier score = reliability - resolution + uncertainty (Murphy 1973), by
  distinct forecast values when there are at most `max_distinct` of them (exact: an S-member
  ensemble gives at most S + 1 values), else over the reliability bins with the within-bin
  remainder reported (`within_bin`) so the parts add up to the score.
- `expected_calibration_error`: sum over bins of n_b / n * |observed rate - mean forecast|.
- `logistic_recalibration`: logit P(y) = a + b logit(p) (slope b, Cox 1958) and, with b fixed at 1,
  the calibration intercept a ("calibration in the large"); statsmodels GLM, Wald CIs and
  p-values against a = 0 and b = 1. Ensemble probabilities of exactly 0 or 1 have no logit: p is
  clipped to [eps, 1 - eps], eps = 0.5 / (S + 1) for an S-member ensemble (the Jeffreys-style
  continuity correction; stated in the result).

Counts (discrete forecasts as ensembles, matrix (n, S)):
- `randomized_pit`: the randomized PIT of the observation y against the empirical CDF G of the
  ensemble *augmented with y* (S + 1 points): u = G(y-) + V (G(y) - G(y-)), V ~ U(0, 1), i.e.
  u = (#{x < y} + V (#{x = y} + 1)) / (S + 1). This is the continuous version of the verification
  rank histogram, exactly U(0, 1) whenever y and the S members are exchangeable (a calibrated
  ensemble), for any S and for discrete counts. `kind="ensemble"` gives the plain randomized PIT
  against the S-member empirical CDF, u = (#{x < y} + V #{x = y}) / S, uniform only as S grows.
- `pit_uniformity`: histogram, chi-square and Kolmogorov-Smirnov tests of uniformity, the share of
  PIT values in the outer tails (u < 0.1 or u > 0.9; 0.2 when calibrated) with a two-sided exact
  binomial test: too few = hump (ensemble too wide), too many = U shape (too narrow).
- `crps_ensemble_fair`: the fair CRPS estimator, mean |x - y| - sum_{j,k} |x_j - x_k| / (2 S (S - 1))
  (Ferro 2014; agrees with scoringrules' `crps_ensemble(..., estimator="fair")`).
- `ranked_probability_score`: sum over k = 0, 1, ... of (F(k) - 1{y <= k})^2 with F the ensemble's
  empirical CDF (unnormalised; for integer counts it equals the ensemble CRPS with the plain
  energy estimator).
- `interval_coverage`: central intervals at 50/80/95% from sample quantiles, numpy
  `method="inverted_cdf"` (Hyndman-Fan type 1: bounds are ensemble members, so counts stay
  integers), closed [lower, upper]. Because counts are discrete a closed interval holds *at least*
  the nominal mass; `implied` is the mass the forecast itself puts inside, by the ensemble-rank
  (leave-one-out) construction, and `coverage_loo` the observed coverage of the same intervals:
  equal in expectation for a calibrated ensemble (`implied_plugin`, the share of members inside the
  interval they define, is biased upward and kept only for comparison). `randomized` is the coverage of the
  central PIT interval, |u - 1/2| <= level / 2, exactly nominal for a calibrated ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mseval.metrics.activity import TIDY_COLUMNS, wilson

LEVELS = (0.5, 0.8, 0.95)


# -- P(active) ------------------------------------------------------------------------------
def bin_edges(p: np.ndarray, n_bins: int = 10, strategy: str = "quantile") -> np.ndarray:
    """Bin edges over [min p, max p] (quantile) or [0, 1] (uniform); ties merged."""
    p = np.asarray(p, dtype=float)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        if edges.size == 1:
            edges = np.array([edges[0], edges[0]])
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    return edges


def assign_bins(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each p: edge_b <= p < edge_{b+1}; the last bin is closed (p = last edge counts)."""
    nb = edges.size - 1
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, nb - 1)


def reliability_table(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10, strategy: str = "quantile", level: float = 0.95) -> pd.DataFrame:
    """Reliability-diagram data: bin, p_low, p_high, n, mean_predicted, observed_rate, ci_low, ci_high, events."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=bool)
    edges = bin_edges(p, n_bins, strategy)
    b = assign_bins(p, edges)
    nb = edges.size - 1
    n = np.bincount(b, minlength=nb)
    sp = np.bincount(b, weights=p, minlength=nb)
    sy = np.bincount(b, weights=y.astype(float), minlength=nb)
    rows = []
    for i in range(nb):
        lo, hi = wilson(int(sy[i]), int(n[i]), level)
        rows.append({"bin": i, "p_low": edges[i], "p_high": edges[i + 1], "n": int(n[i]),
                     "mean_predicted": sp[i] / n[i] if n[i] else np.nan, "observed_rate": sy[i] / n[i] if n[i] else np.nan,
                     "ci_low": lo, "ci_high": hi, "events": int(sy[i])})
    df = pd.DataFrame(rows)
    return df[df["n"] > 0].reset_index(drop=True) if strategy == "uniform" else df


def expected_calibration_error(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10, strategy: str = "quantile", edges: np.ndarray | None = None,
                               axis: int = -1) -> np.ndarray | float:
    """ECE over reliability bins (works on a batch: p, y of shape (B, n) with fixed `edges`)."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=float)
    if edges is None:
        edges = bin_edges(p.ravel() if p.ndim == 1 else p[0], n_bins, strategy)
    nb = edges.size - 1
    b = assign_bins(p, edges)
    if p.ndim == 1:
        n = np.bincount(b, minlength=nb)
        gap = np.abs(np.bincount(b, weights=y - p, minlength=nb))
        return float(gap.sum() / n.sum())
    B, m = p.shape
    flat = (np.arange(B)[:, None] * nb + b).ravel()
    gap = np.abs(np.bincount(flat, weights=(y - p).ravel(), minlength=B * nb)).reshape(B, nb)
    return gap.sum(axis=1) / m


def debiased_calibration_error(p: np.ndarray, y: np.ndarray, *, edges: np.ndarray) -> np.ndarray | float:
    """Debiased squared calibration error (Kumar, Liang and Ma 2019), p, y of shape (n,) or (B, n):

        D = sum_b n_b / n [ (ybar_b - pbar_b)^2 - ybar_b (1 - ybar_b) / (n_b - 1) ]

    (a bin of one patient uses pbar_b (1 - pbar_b) / 1 instead). The subtracted term removes the
    binomial noise that makes the plain ECE positive for perfectly calibrated forecasts: E[D] is
    about 0 when y ~ Bernoulli(p), and estimates sum_b n_b/n (E[y | bin b] - pbar_b)^2 otherwise.
    Squared-probability units; may be negative by chance."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=float)
    nb = edges.size - 1
    b = assign_bins(p, edges)
    one = p.ndim == 1
    if one:
        p, y, b = p[None], y[None], b[None]
    B, m = p.shape
    flat = (np.arange(B)[:, None] * nb + b).ravel()
    cnt = np.bincount(flat, minlength=B * nb).reshape(B, nb).astype(float)
    sy = np.bincount(flat, weights=y.ravel(), minlength=B * nb).reshape(B, nb)
    sp = np.bincount(flat, weights=p.ravel(), minlength=B * nb).reshape(B, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        yb, pb = sy / cnt, sp / cnt
        var = np.where(cnt >= 2, yb * (1 - yb) / (cnt - 1), pb * (1 - pb))
        term = np.where(cnt > 0, cnt / m * ((yb - pb) ** 2 - var), 0.0)
    out = term.sum(axis=1)
    return float(out[0]) if one else out


def ece_if_calibrated(p: np.ndarray, *, edges: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Expected plain ECE of perfectly calibrated forecasts with these p (y ~ Bernoulli(p)), same bins:
    the value the observed ECE is to be read against (Monte Carlo over `draws` outcome sets, seeded)."""
    p = np.asarray(p, dtype=float)
    ys = np.random.default_rng(seed).random((draws, p.size)) < p[None, :]
    return float(np.mean(expected_calibration_error(np.broadcast_to(p, ys.shape), ys, edges=edges)))


def brier_decomposition(p: np.ndarray, y: np.ndarray, *, n_bins: int = 10, max_distinct: int = 101) -> dict[str, float]:
    """Brier score and its Murphy decomposition: brier = reliability - resolution + uncertainty + within_bin."""
    p = np.asarray(p, dtype=float)
    yf = np.asarray(y, dtype=float)
    n = p.size
    bs = float(np.mean((p - yf) ** 2))
    vals, groups = np.unique(p, return_inverse=True)
    grouping = "distinct forecast values"
    if vals.size > max_distinct:
        groups = assign_bins(p, bin_edges(p, n_bins))
        grouping = f"{n_bins} quantile bins"
    ng = int(groups.max()) + 1
    nk = np.bincount(groups, minlength=ng)
    ok = nk > 0
    pk = np.bincount(groups, weights=p, minlength=ng)[ok] / nk[ok]
    ok_ = np.bincount(groups, weights=yf, minlength=ng)[ok] / nk[ok]
    ybar = yf.mean()
    rel = float(np.sum(nk[ok] * (pk - ok_) ** 2) / n)
    res = float(np.sum(nk[ok] * (ok_ - ybar) ** 2) / n)
    unc = float(ybar * (1 - ybar))
    return {"brier": bs, "reliability": rel, "resolution": res, "uncertainty": unc, "within_bin": bs - (rel - res + unc), "grouping": grouping}


@dataclass(frozen=True)
class Recalibration:
    """Logistic recalibration: intercept (slope fixed at 1) and slope, Wald CIs, tests of a = 0 and b = 1."""

    intercept: float
    intercept_ci: tuple[float, float]
    intercept_p: float
    slope: float
    slope_ci: tuple[float, float]
    slope_p: float
    eps: float
    converged: bool
    note: str = ""


def logistic_recalibration(p: np.ndarray, y: np.ndarray, *, samples: int | None = None, eps: float | None = None,
                           confidence_level: float = 0.95) -> Recalibration:
    """Calibration intercept and slope of P(active) p (n,) against observed y (n,) bool."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    if eps is None:
        eps = 0.5 / (samples + 1) if samples else 1e-3
    pc = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    lp = np.log(pc / (1 - pc))
    yf = np.asarray(y, dtype=float)
    nan2 = (float("nan"), float("nan"))
    if yf.min() == yf.max():
        return Recalibration(float("nan"), nan2, float("nan"), float("nan"), nan2, float("nan"), eps, False,
                             "undefined: every patient is observed " + ("active" if yf.max() == 1 else "inactive"))
    if np.ptp(lp) == 0:
        note_slope = "slope undefined: P(active) is the same for every patient"
    else:
        note_slope = ""
    alpha = 1 - confidence_level
    converged = True
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit_a = sm.GLM(yf, np.ones((yf.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
            a, a_ci, a_p = float(fit_a.params[0]), tuple(float(v) for v in fit_a.conf_int(alpha)[0]), float(fit_a.pvalues[0])
            converged &= bool(fit_a.converged)
        except Exception as exc:  # noqa: BLE001 - perfect separation, singular fit: flagged, never silent
            a, a_ci, a_p = float("nan"), nan2, float("nan")
            converged = False
            notes.append(f"intercept fit failed ({type(exc).__name__})")
        if note_slope:
            b, b_ci, b_p = float("nan"), nan2, float("nan")
            notes.append(note_slope)
        else:
            try:
                fit_b = sm.GLM(yf, sm.add_constant(lp, has_constant="add"), family=sm.families.Binomial()).fit()
                b = float(fit_b.params[1])
                se = float(fit_b.bse[1])
                z = float(stats.norm.ppf(1 - alpha / 2))
                b_ci = (b - z * se, b + z * se)
                b_p = float(2 * stats.norm.sf(abs(b - 1.0) / se))
                converged &= bool(fit_b.converged)
            except Exception as exc:  # noqa: BLE001
                b, b_ci, b_p = float("nan"), nan2, float("nan")
                converged = False
                notes.append(f"slope fit failed ({type(exc).__name__})")
    if not converged and not notes:
        notes.append("logistic fit did not converge")
    return Recalibration(a, a_ci, a_p, b, b_ci, b_p, float(eps), converged, "; ".join(notes))


@dataclass(frozen=True)
class BinaryCalibration:
    """Calibration of P(active): reliability table, Brier score and decomposition, ECE, recalibration."""

    n: int
    reliability: pd.DataFrame
    brier: dict
    brier_ci: tuple[float, float]
    ece: float
    ece_ci: tuple[float, float]
    ece_method: str
    recalibration: Recalibration
    notes: tuple[str, ...] = field(default_factory=tuple)
    ece_expected_if_calibrated: float = float("nan")
    ce_sq_debiased: float = float("nan")
    ce_sq_debiased_ci: tuple[float, float] = (float("nan"), float("nan"))

    def to_frame(self) -> pd.DataFrame:
        r = self.recalibration
        rows = [
            {"metric": "brier", "value": self.brier["brier"], "ci_low": self.brier_ci[0], "ci_high": self.brier_ci[1], "note": "t CI"},
            *[{"metric": f"brier_{k}", "value": self.brier[k], "ci_low": np.nan, "ci_high": np.nan, "note": f"Murphy decomposition over {self.brier['grouping']}"}
              for k in ("reliability", "resolution", "uncertainty", "within_bin")],
            {"metric": "ece", "value": self.ece, "ci_low": self.ece_ci[0], "ci_high": self.ece_ci[1],
             "note": f"{self.ece_method}; plain ECE is biased upward: {self.ece_expected_if_calibrated:.4f} expected if perfectly calibrated "
                     "(same p, same bins)"},
            {"metric": "ece_expected_if_calibrated", "value": self.ece_expected_if_calibrated, "ci_low": np.nan, "ci_high": np.nan,
             "note": "mean ECE of y ~ Bernoulli(p) for these p and bins (200 simulated outcome sets)"},
            {"metric": "calibration_error_debiased", "value": float(np.sqrt(max(self.ce_sq_debiased, 0.0))),
             "ci_low": float(np.sqrt(max(self.ce_sq_debiased_ci[0], 0.0))), "ci_high": float(np.sqrt(max(self.ce_sq_debiased_ci[1], 0.0))),
             "note": "root of the debiased squared calibration error over the ECE bins (Kumar et al. 2019), 0 when calibrated; "
                     "CI: estimate +- 1.96 patient-bootstrap SE on the squared scale, bounds below 0 shown as 0"},
            {"metric": "calibration_error_sq_debiased", "value": self.ce_sq_debiased, "ci_low": self.ce_sq_debiased_ci[0],
             "ci_high": self.ce_sq_debiased_ci[1], "note": "squared-probability units; unbiased around 0 for calibrated forecasts (may be < 0)"},
            {"metric": "calibration_intercept", "value": r.intercept, "ci_low": r.intercept_ci[0], "ci_high": r.intercept_ci[1],
             "note": r.note or f"slope fixed at 1; Wald; p(a=0) = {r.intercept_p:.3g}; logit clipped at eps = {r.eps:.4g}"},
            {"metric": "calibration_slope", "value": r.slope, "ci_low": r.slope_ci[0], "ci_high": r.slope_ci[1],
             "note": r.note or f"Wald; p(b=1) = {r.slope_p:.3g}; logit clipped at eps = {r.eps:.4g}"},
        ]
        df = pd.DataFrame(rows)
        df["threshold"] = np.nan
        df["n"] = self.n
        return df[TIDY_COLUMNS]

    def summary(self) -> str:
        r = self.recalibration
        b = self.brier
        lines = [f"P(active) calibration ({self.n} patients): Brier {b['brier']:.4f} = REL {b['reliability']:.4f} - RES {b['resolution']:.4f} "
                 f"+ UNC {b['uncertainty']:.4f} (+ {b['within_bin']:.2g} within bins); ECE {self.ece:.4f} ({self.ece_ci[0]:.4f} to {self.ece_ci[1]:.4f})",
                 f"  calibration intercept {r.intercept:+.3f} ({r.intercept_ci[0]:+.3f} to {r.intercept_ci[1]:+.3f}), "
                 f"slope {r.slope:.3f} ({r.slope_ci[0]:.3f} to {r.slope_ci[1]:.3f})"]
        lines += [f"  note: {n}" for n in (*self.notes, *([r.note] if r.note else []))]
        return "\n".join(lines)


def binary_calibration(p: np.ndarray, y: np.ndarray, *, samples: int | None = None, n_bins: int = 10, strategy: str = "quantile",
                       n_boot: int = 1000, seed: int = 0, confidence_level: float = 0.95) -> BinaryCalibration:
    """Everything about the calibration of P(active) p (n,) against observed activity y (n,) bool.

    The ECE CI is a patient bootstrap (BCa, percentile fallback; bin edges fixed at the full
    sample's); n_boot = 0 skips it (CI reported as NaN with a note). The plain ECE is biased upward
    (binomial noise within bins), so it comes with its expectation under perfect calibration for
    the same p, and with the debiased squared calibration error, whose interval (estimate +- 1.96
    bootstrap SEs: percentile intervals of a debiased statistic centre on the biased plug-in)
    contains 0 for calibrated forecasts (bench/validity_calibration.py: coverage of 0 over 100 data sets).
    """
    from mseval.stats.bootstrap import patient_bootstrap

    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=bool)
    edges = bin_edges(p, n_bins, strategy)
    ece = float(expected_calibration_error(p, y, edges=edges))
    if n_boot > 0 and p.size >= 2:
        def stat(pp: np.ndarray, yy: np.ndarray, axis: int = -1) -> np.ndarray:
            return expected_calibration_error(pp, yy, edges=edges)

        bt = patient_bootstrap(stat, p, y.astype(float), n_resamples=n_boot, seed=seed, vectorized=True, confidence_level=confidence_level)
        ece_ci, how = (bt.ci_low, bt.ci_high), f"patient bootstrap, {bt.method}, {n_boot} resamples" + (f" ({bt.note})" if bt.note else "")
    else:
        ece_ci, how = (float("nan"), float("nan")), "no bootstrap requested"
    d = float(debiased_calibration_error(p, y, edges=edges))
    d_ci = (float("nan"), float("nan"))
    if n_boot > 0 and p.size >= 2:
        def dstat(pp: np.ndarray, yy: np.ndarray, axis: int = -1) -> np.ndarray:
            return debiased_calibration_error(pp, yy, edges=edges)

        se = patient_bootstrap(dstat, p, y.astype(float), n_resamples=n_boot, seed=seed, vectorized=True, method="percentile").standard_error
        zq = float(stats.norm.ppf(0.5 + confidence_level / 2))
        d_ci = (d - zq * se, d + zq * se)
    ece0 = ece_if_calibrated(p, edges=edges, seed=seed)
    sq = (p - y) ** 2
    from mseval.metrics.activity import _t_ci

    return BinaryCalibration(p.size, reliability_table(p, y, n_bins=n_bins, strategy=strategy, level=confidence_level),
                             brier_decomposition(p, y, n_bins=n_bins), _t_ci(sq, confidence_level), ece, ece_ci, how,
                             logistic_recalibration(p, y, samples=samples, confidence_level=confidence_level),
                             ece_expected_if_calibrated=ece0, ce_sq_debiased=d, ce_sq_debiased_ci=d_ci)


# -- counts ---------------------------------------------------------------------------------
def _less_equal(ensemble: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ensemble)
    yy = np.asarray(y)[:, None]
    return (x < yy).sum(axis=1), (x == yy).sum(axis=1)


def randomized_pit(ensemble: np.ndarray, y: np.ndarray, *, seed: int = 0, kind: str = "augmented") -> np.ndarray:
    """Randomized PIT (n,) of observations y (n,) against ensembles (n, S); see the module docstring."""
    x = np.asarray(ensemble)
    S = x.shape[1]
    less, eq = _less_equal(x, y)
    v = np.random.default_rng(seed).random(x.shape[0])
    if kind == "augmented":
        return (less + v * (eq + 1)) / (S + 1)
    if kind == "ensemble":
        return (less + v * eq) / S
    raise ValueError(f"kind must be 'augmented' or 'ensemble', got {kind!r}")


@dataclass(frozen=True)
class PitTest:
    histogram: pd.DataFrame
    chi2: float
    chi2_p: float
    ks: float
    ks_p: float
    tail_share: float
    tail_expected: float
    tail_p: float
    mean: float
    variance: float


def pit_uniformity(u: np.ndarray, *, n_bins: int = 10, tail: float = 0.1) -> PitTest:
    """Histogram (bin, lower, upper, n, expected) and tests of uniformity of PIT values u in [0, 1]."""
    u = np.asarray(u, dtype=float)
    n = u.size
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(assign_bins(u, edges), minlength=n_bins)
    expected = n / n_bins
    hist = pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "n": counts, "expected": expected})
    chi2, chi2_p = stats.chisquare(counts) if n else (np.nan, np.nan)
    ks = stats.kstest(u, "uniform") if n else None
    tails = int(((u < tail) | (u > 1 - tail)).sum())
    tail_p = float(stats.binomtest(tails, n, 2 * tail).pvalue) if n else float("nan")
    return PitTest(hist, float(chi2), float(chi2_p), float(ks.statistic) if ks else np.nan, float(ks.pvalue) if ks else np.nan,
                   tails / n if n else np.nan, 2 * tail, tail_p, float(u.mean()) if n else np.nan, float(u.var(ddof=1)) if n > 1 else np.nan)


def crps_ensemble_fair(ensemble: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fair CRPS (n,) of ensembles (n, S >= 2) for observations y (n,)."""
    x = np.sort(np.asarray(ensemble, dtype=float), axis=1)
    S = x.shape[1]
    if S < 2:
        raise ValueError("the fair CRPS needs at least 2 ensemble members")
    yy = np.asarray(y, dtype=float)[:, None]
    term1 = np.abs(x - yy).mean(axis=1)
    k = np.arange(1, S + 1)
    pair_sum = 2.0 * (x * (2 * k - S - 1)).sum(axis=1)  # sum over all ordered pairs j, k of |x_j - x_k|
    return term1 - pair_sum / (2.0 * S * (S - 1))


def ranked_probability_score(ensemble: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RPS (n,): sum over k >= 0 of (F(k) - 1{y <= k})^2, F the empirical CDF of the ensemble (n, S) of counts."""
    x = np.asarray(ensemble, dtype=np.int64)
    yy = np.asarray(y, dtype=np.int64)
    n, S = x.shape
    K = int(max(x.max(initial=0), yy.max(initial=0))) + 1
    out = np.zeros(n)
    step = max(1, 2_000_000 // max(K, 1))
    ks = np.arange(K)
    for a in range(0, n, step):  # chunks of patients bound the (chunk, K) matrix; vectorised within
        xs, ys = x[a:a + step], yy[a:a + step]
        m = xs.shape[0]
        hist = np.bincount((np.arange(m)[:, None] * K + xs).ravel(), minlength=m * K).reshape(m, K)
        F = np.cumsum(hist, axis=1) / S
        ind = (ys[:, None] <= ks[None, :]).astype(float)
        out[a:a + step] = ((F - ind) ** 2).sum(axis=1)
    return out


def _leave_one_out_mass(x: np.ndarray, y: np.ndarray, lo_q: float, hi_q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per patient (n,): forecast-implied and observed mass of the closed sample-quantile interval built
    from S - 1 members, averaged over the member left out (the ensemble-rank construction):

        implied_i  = mean_j 1{x_ij in I(x_i,-j)},    observed_i = mean_j 1{y_i in I(x_i,-j)}.

    When y_i is exchangeable with the S members (a calibrated ensemble) swapping y_i and x_ij shows
    E[observed_i] = E[implied_i] exactly, for any S, ties and discrete counts. (The plug-in share of
    members inside the interval built from those same members is biased upward: the members at the
    bounds are inside by construction.)"""
    s = np.sort(np.asarray(x, dtype=float), axis=1)
    n, S = s.shape
    if S < 2:
        nan = np.full(n, np.nan)
        return nan, nan
    m = S - 1
    j = np.arange(S)

    def kth(q: float) -> np.ndarray:  # value at numpy's inverted_cdf index of the S - 1 members without member j
        k = max(int(np.ceil(q * m)) - 1, 0)
        return np.where(k < j[None, :], s[:, [k]], s[:, [min(k + 1, S - 1)]])

    lo, hi = kth(lo_q), kth(hi_q)
    implied = ((s >= lo) & (s <= hi)).mean(axis=1)
    observed = ((np.asarray(y, dtype=float)[:, None] >= lo) & (np.asarray(y, dtype=float)[:, None] <= hi)).mean(axis=1)
    return implied, observed


def interval_coverage(ensemble: np.ndarray, y: np.ndarray, *, levels: tuple[float, ...] = LEVELS, pit: np.ndarray | None = None,
                      confidence_level: float = 0.95) -> pd.DataFrame:
    """Central prediction-interval coverage: level, lower_q, upper_q, covered, coverage, ci_low, ci_high,
    implied, randomized, randomized_ci_low, randomized_ci_high, mean_width, n (see the module docstring)."""
    x = np.asarray(ensemble)
    yy = np.asarray(y)
    n = x.shape[0]
    rows = []
    for lv in levels:
        lo_q, hi_q = (1 - lv) / 2, (1 + lv) / 2
        lo, hi = np.quantile(x, [lo_q, hi_q], axis=1, method="inverted_cdf")
        inside = (yy >= lo) & (yy <= hi)
        k = int(inside.sum())
        c_lo, c_hi = wilson(k, n, confidence_level)
        implied, observed_loo = _leave_one_out_mass(x, yy, lo_q, hi_q)
        d = observed_loo - implied
        row = {"level": lv, "lower_q": lo_q, "upper_q": hi_q, "covered": k, "coverage": k / n if n else np.nan, "ci_low": c_lo, "ci_high": c_hi,
               "implied": float(implied.mean()), "coverage_loo": float(observed_loo.mean()),
               "implied_diff_se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
               "implied_plugin": float(((x >= lo[:, None]) & (x <= hi[:, None])).mean()),
               "mean_width": float((hi - lo).mean()), "n": n}
        if pit is not None:
            kr = int((np.abs(np.asarray(pit) - 0.5) <= lv / 2).sum())
            r_lo, r_hi = wilson(kr, n, confidence_level)
            row.update({"randomized": kr / n if n else np.nan, "randomized_ci_low": r_lo, "randomized_ci_high": r_hi})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CountCalibration:
    """Calibration of count forecasts: PIT and its tests, CRPS, RPS, interval coverage (per-patient arrays kept)."""

    n: int
    samples: int
    pit: np.ndarray
    pit_test: PitTest
    crps: np.ndarray
    rps: np.ndarray
    coverage: pd.DataFrame
    pit_kind: str
    seed: int
    confidence_level: float = 0.95

    def to_frame(self) -> pd.DataFrame:
        t = self.pit_test
        ci = lambda v: _mean_ci(v, self.confidence_level)  # noqa: E731
        rows = [
            {"metric": "pit_chi2", "value": t.chi2, "ci_low": np.nan, "ci_high": np.nan, "note": f"p = {t.chi2_p:.4g} ({len(t.histogram)} bins; uniformity)"},
            {"metric": "pit_chi2_p", "value": t.chi2_p, "ci_low": np.nan, "ci_high": np.nan, "note": ""},
            {"metric": "pit_ks", "value": t.ks, "ci_low": np.nan, "ci_high": np.nan, "note": f"p = {t.ks_p:.4g}"},
            {"metric": "pit_ks_p", "value": t.ks_p, "ci_low": np.nan, "ci_high": np.nan, "note": ""},
            {"metric": "pit_tail_share", "value": t.tail_share, "ci_low": wilson(round(t.tail_share * self.n), self.n)[0],
             "ci_high": wilson(round(t.tail_share * self.n), self.n)[1],
             "note": f"share with u < 0.1 or u > 0.9; {t.tail_expected:g} when calibrated; binomial p = {t.tail_p:.4g}"},
            {"metric": "pit_mean", "value": t.mean, "ci_low": np.nan, "ci_high": np.nan, "note": "0.5 when calibrated"},
            {"metric": "pit_variance", "value": t.variance, "ci_low": np.nan, "ci_high": np.nan, "note": "1/12 when calibrated; less = too wide"},
            {"metric": "crps_fair", "value": float(self.crps.mean()), "ci_low": ci(self.crps)[0], "ci_high": ci(self.crps)[1], "note": "t CI"},
            {"metric": "rps", "value": float(self.rps.mean()), "ci_low": ci(self.rps)[0], "ci_high": ci(self.rps)[1], "note": "unnormalised; t CI"},
        ]
        for rec in self.coverage.to_dict("records"):
            pct = round(100 * rec["level"])
            rows.append({"metric": f"coverage_{pct}", "value": rec["coverage"], "ci_low": rec["ci_low"], "ci_high": rec["ci_high"],
                         "note": f"closed sample-quantile interval (inverted_cdf); its leave-one-out coverage {rec['coverage_loo']:.3f} is to be "
                                 f"read against the forecast-implied {rec['implied']:.3f} (same construction; SE of the difference "
                                 f"{rec['implied_diff_se']:.3f})"})
            if "randomized" in rec:
                rows.append({"metric": f"coverage_randomized_{pct}", "value": rec["randomized"], "ci_low": rec["randomized_ci_low"],
                             "ci_high": rec["randomized_ci_high"], "note": f"central PIT interval; nominal {rec['level']:g}"})
        df = pd.DataFrame(rows)
        df["threshold"] = np.nan
        df["n"] = self.n
        return df[TIDY_COLUMNS]

    def summary(self) -> str:
        t = self.pit_test
        lines = [f"Count calibration ({self.n} patients, {self.samples} samples each): PIT chi-square p = {t.chi2_p:.3g}, KS p = {t.ks_p:.3g}, "
                 f"tail share {t.tail_share:.3f} (0.2 expected, p = {t.tail_p:.3g}); fair CRPS {self.crps.mean():.3f}, RPS {self.rps.mean():.3f}"]
        for rec in self.coverage.to_dict("records"):
            lines.append(f"  {100 * rec['level']:.0f}% interval: coverage {rec['coverage']:.3f}; leave-one-out {rec['coverage_loo']:.3f} vs "
                         f"forecast-implied {rec['implied']:.3f}"
                         + (f", randomized {rec['randomized']:.3f}" if "randomized" in rec else ""))
        return "\n".join(lines)


def _mean_ci(v: np.ndarray, level: float) -> tuple[float, float]:
    from mseval.metrics.activity import _t_ci

    return _t_ci(np.asarray(v, dtype=float), level)


def count_calibration(ensemble: np.ndarray, y: np.ndarray, *, levels: tuple[float, ...] = LEVELS, pit_bins: int = 10, seed: int = 0,
                      pit_kind: str = "augmented", confidence_level: float = 0.95) -> CountCalibration:
    """PIT, CRPS, RPS and coverage of ensembles (n, S) of counts against observed counts y (n,)."""
    x = np.asarray(ensemble)
    yy = np.asarray(y)
    if x.ndim != 2 or yy.shape != (x.shape[0],):
        raise ValueError(f"ensemble must be (n, S) and y (n,), got {x.shape} and {yy.shape}")
    u = randomized_pit(x, yy, seed=seed, kind=pit_kind)
    crps = crps_ensemble_fair(x, yy) if x.shape[1] >= 2 else np.full(x.shape[0], np.nan)
    return CountCalibration(x.shape[0], x.shape[1], u, pit_uniformity(u, n_bins=pit_bins), crps, ranked_probability_score(x, yy),
                            interval_coverage(x, yy, levels=levels, pit=u, confidence_level=confidence_level), pit_kind, seed, confidence_level)
