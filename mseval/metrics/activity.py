"""Activity classification and count error from forecast ensembles.

An ensemble of S sampled NET2 masks per patient gives S lesion counts. From them:
P(active) = share of samples with at least k lesions (k = 1: "active" = at least one NET2
lesion); the expected count = the ensemble mean. Against the observed NET2 count:

- `activity_metrics`: AUC with its DeLong standard error and a normal 95% CI clipped to [0, 1]
  (as pROC does), and at each operating point (0.5 and a chosen one: Youden's J or a given
  threshold) the confusion matrix, sensitivity and specificity (Wilson CIs), balanced accuracy
  (normal CI from the two independent binomial variances), PPV and NPV. A patient is predicted
  active when P(active) >= threshold.
- `count_error`: MAE of the ensemble mean (t CI), bias = mean(predicted - observed) (t CI), RMSE,
  Spearman correlation (Fisher-z CI with the Bonett-Wright variance, p-value from scipy).

Undefined quantities (AUC with only one observed class, Spearman of a constant) are returned as
NaN *with a note* in the result's `notes` and in the tidy frame's `note` column, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError

Z95 = float(stats.norm.ppf(0.975))
TIDY_COLUMNS = ["metric", "value", "ci_low", "ci_high", "threshold", "n", "note"]


# -- the ensemble as a matrix ----------------------------------------------------------------
def ensemble_matrix(counts: pd.DataFrame, *, file: str | Path | None = None, column: str = "count") -> tuple[pd.DataFrame, np.ndarray]:
    """Reshape a counts table (patient_id, arm, sample, count) to one row per (patient, arm).

    Returns keys (patient_id, arm, samples; sorted) and the (n_blocks, S) integer matrix of counts,
    row r = keys row r, columns in sample order. Every block must hold the same S samples
    0..S-1 once each; otherwise InputError (naming the first patient and arm at fault).
    """
    need = ["patient_id", "arm", "sample", column]
    missing = [c for c in need if c not in counts.columns]
    if missing:
        raise InputError(file, f"counts table lacks column {missing[0]!r}", field=missing[0])
    if len(counts) == 0:
        raise InputError(file, "counts table is empty")
    df = counts[need]
    vals = pd.to_numeric(df[column], errors="coerce")
    bad = vals.isna().to_numpy() | (vals.to_numpy(dtype=float, na_value=np.nan) < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise InputError(file, f"count must be a non-negative number, got {df[column].iloc[row - 1]!r}", row=row, field=column)
    df = df.assign(**{column: vals.to_numpy()}).sort_values(["patient_id", "arm", "sample"], kind="stable")
    dup = df.duplicated(["patient_id", "arm", "sample"]).to_numpy()
    if dup.any():
        r = df.iloc[int(np.flatnonzero(dup)[0])]
        raise InputError(file, f"patient {r['patient_id']!r} under arm {r['arm']!r} has sample {int(r['sample'])} twice", field="sample")
    sizes = df.groupby(["patient_id", "arm"], sort=True).size()
    S = int(sizes.max())
    short = sizes[sizes != S]
    if len(short):
        (pid, arm), got = short.index[0], int(short.iloc[0])
        raise InputError(file, f"patient {pid!r} under arm {arm!r} has {got} samples, other blocks have {S} (missing samples)", field="sample")
    samples = df["sample"].to_numpy().reshape(len(sizes), S)
    if not (samples == np.arange(S)).all():
        r = int(np.flatnonzero((samples != np.arange(S)).any(axis=1))[0])
        pid, arm = sizes.index[r]
        raise InputError(file, f"patient {pid!r} under arm {arm!r}: samples are not numbered 0..{S - 1} (missing samples)", field="sample")
    mat = df[column].to_numpy().reshape(len(sizes), S)
    keys = sizes.index.to_frame(index=False)
    keys["samples"] = S
    return keys, mat


def p_active(ensemble: np.ndarray, k: int = 1) -> np.ndarray:
    """Share of samples with at least k lesions, per row of an (n, S) count matrix."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return (np.asarray(ensemble) >= k).mean(axis=1)


# -- AUC ------------------------------------------------------------------------------------
def delong_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong standard error (DeLong et al. 1988, midrank algorithm of Sun & Xu 2014).

    scores: (n,) higher = more likely positive; labels: (n,) bool. Ties count one half.
    Returns (nan, nan) when a class is empty.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    x, z = s[y], s[~y]
    m, n = x.size, z.size
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    tz = stats.rankdata(np.concatenate([x, z]))
    tx, ty = stats.rankdata(x), stats.rankdata(z)
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    s10 = v10.var(ddof=1) if m > 1 else 0.0
    s01 = v01.var(ddof=1) if n > 1 else 0.0
    return float(auc), float(np.sqrt(s10 / m + s01 / n))


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n ((nan, nan) when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass(frozen=True)
class OperatingPoint:
    """Classification at one threshold (predicted active when P(active) >= threshold)."""

    name: str
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        return (self.sensitivity + self.specificity) / 2.0

    @property
    def ppv(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def npv(self) -> float:
        return self.tn / (self.tn + self.fn) if self.tn + self.fn else float("nan")

    def rows(self, level: float = 0.95) -> list[dict]:
        npos, nneg = self.tp + self.fn, self.tn + self.fp
        se_lo, se_hi = wilson(self.tp, npos, level)
        sp_lo, sp_hi = wilson(self.tn, nneg, level)
        z = float(stats.norm.ppf(0.5 + level / 2))
        if npos and nneg:
            sd = np.sqrt(self.sensitivity * (1 - self.sensitivity) / npos + self.specificity * (1 - self.specificity) / nneg) / 2.0
            ba_lo, ba_hi = max(0.0, self.balanced_accuracy - z * sd), min(1.0, self.balanced_accuracy + z * sd)
        else:
            ba_lo = ba_hi = float("nan")
        pv_lo, pv_hi = wilson(self.tp, self.tp + self.fp, level)
        nv_lo, nv_hi = wilson(self.tn, self.tn + self.fn, level)
        note_pos = "" if npos else "no observed active patient"
        note_neg = "" if nneg else "no observed inactive patient"
        t = self.threshold
        return [
            {"metric": f"sensitivity@{self.name}", "value": self.sensitivity, "ci_low": se_lo, "ci_high": se_hi, "threshold": t, "n": npos, "note": note_pos},
            {"metric": f"specificity@{self.name}", "value": self.specificity, "ci_low": sp_lo, "ci_high": sp_hi, "threshold": t, "n": nneg, "note": note_neg},
            {"metric": f"balanced_accuracy@{self.name}", "value": self.balanced_accuracy, "ci_low": ba_lo, "ci_high": ba_hi, "threshold": t,
             "n": npos + nneg, "note": note_pos or note_neg},
            {"metric": f"ppv@{self.name}", "value": self.ppv, "ci_low": pv_lo, "ci_high": pv_hi, "threshold": t, "n": self.tp + self.fp,
             "note": "" if self.tp + self.fp else "no patient predicted active"},
            {"metric": f"npv@{self.name}", "value": self.npv, "ci_low": nv_lo, "ci_high": nv_hi, "threshold": t, "n": self.tn + self.fn,
             "note": "" if self.tn + self.fn else "no patient predicted inactive"},
        ]


def _confusion(p: np.ndarray, y: np.ndarray, name: str, t: float) -> OperatingPoint:
    pred = p >= t
    return OperatingPoint(name, float(t), int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & ~y).sum()), int((~pred & y).sum()))


def youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """Threshold (one of the observed P(active) values) maximising sensitivity + specificity - 1;
    the smallest such threshold on ties. 0.5 when a class is empty."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=bool)
    if y.all() or (~y).all():
        return 0.5
    cand = np.unique(p)
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    sens = 1.0 - np.searchsorted(pos, cand, side="left") / pos.size
    spec = np.searchsorted(neg, cand, side="left") / neg.size
    return float(cand[int(np.argmax(sens + spec - 1.0))])


@dataclass(frozen=True)
class ActivityResult:
    """Activity classification of P(active) against the observed activity (statsmodels-style results)."""

    n: int
    n_active: int
    k: int
    auc: float
    auc_se: float
    auc_ci_low: float
    auc_ci_high: float
    operating_points: tuple[OperatingPoint, ...]
    confidence_level: float = 0.95
    notes: tuple[str, ...] = field(default_factory=tuple)

    def conf_int(self) -> tuple[float, float]:
        return self.auc_ci_low, self.auc_ci_high

    def confusion_matrix(self) -> pd.DataFrame:
        """One row per operating point: name, threshold, tp, fp, tn, fn."""
        return pd.DataFrame([{"operating_point": o.name, "threshold": o.threshold, "tp": o.tp, "fp": o.fp, "tn": o.tn, "fn": o.fn}
                             for o in self.operating_points])

    def to_frame(self) -> pd.DataFrame:
        """Tidy: metric, value, ci_low, ci_high, threshold, n, note."""
        note = "; ".join(self.notes)
        rows = [
            {"metric": "prevalence", "value": self.n_active / self.n if self.n else np.nan, "ci_low": wilson(self.n_active, self.n)[0],
             "ci_high": wilson(self.n_active, self.n)[1], "threshold": np.nan, "n": self.n, "note": ""},
            {"metric": "auc", "value": self.auc, "ci_low": self.auc_ci_low, "ci_high": self.auc_ci_high, "threshold": np.nan, "n": self.n,
             "note": note or "DeLong SE, normal CI clipped to [0, 1]"},
            {"metric": "auc_se", "value": self.auc_se, "ci_low": np.nan, "ci_high": np.nan, "threshold": np.nan, "n": self.n, "note": note},
        ]
        for op in self.operating_points:
            rows += op.rows(self.confidence_level)
        return pd.DataFrame(rows, columns=TIDY_COLUMNS)

    def summary(self) -> str:
        lines = [f"Activity (>= {self.k} lesion{'s' if self.k > 1 else ''}): {self.n} patients, {self.n_active} observed active",
                 f"  AUC {self.auc:.3f} (95% CI {self.auc_ci_low:.3f} to {self.auc_ci_high:.3f}, DeLong)"]
        for op in self.operating_points:
            lines.append(f"  @{op.name} (P >= {op.threshold:.3f}): sensitivity {op.sensitivity:.3f}, specificity {op.specificity:.3f}, "
                         f"balanced accuracy {op.balanced_accuracy:.3f}; TP {op.tp} FP {op.fp} TN {op.tn} FN {op.fn}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def activity_metrics(
    p: np.ndarray,
    observed_active: np.ndarray,
    *,
    k: int = 1,
    operating_point: str | float = "youden",
    confidence_level: float = 0.95,
) -> ActivityResult:
    """Score P(active) (n,) against observed activity (n,) bool.

    operating_point: 'youden' (threshold maximising Youden's J, chosen on these same patients, so
    optimistic) or a threshold in [0, 1]; 0.5 is always reported as well.
    """
    p = np.asarray(p, dtype=float)
    y = np.asarray(observed_active, dtype=bool)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError("p and observed_active must be 1D of the same length")
    if np.isnan(p).any():
        raise ValueError("P(active) holds NaN")
    notes: list[str] = []
    auc, se = delong_auc(p, y)
    if not np.isfinite(auc):
        notes.append("AUC undefined: every patient is observed " + ("active" if y.all() else "inactive"))
        lo = hi = float("nan")
    else:
        z = float(stats.norm.ppf(0.5 + confidence_level / 2))
        lo, hi = max(0.0, auc - z * se), min(1.0, auc + z * se)
    if isinstance(operating_point, str):
        if operating_point != "youden":
            raise ValueError(f"operating_point must be 'youden' or a number, got {operating_point!r}")
        name, t = "youden", youden_threshold(p, y)
    else:
        name, t = f"{float(operating_point):g}", float(operating_point)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {t}")
    ops = [_confusion(p, y, "0.5", 0.5)]
    if not (name != "youden" and t == 0.5):
        ops.append(_confusion(p, y, name, t))
    return ActivityResult(len(p), int(y.sum()), k, auc, se, lo, hi, tuple(ops), confidence_level, tuple(notes))


# -- count error ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CountErrorResult:
    """Error of the predicted (ensemble-mean) count against the observed count."""

    n: int
    mae: float
    mae_ci: tuple[float, float]
    bias: float
    bias_ci: tuple[float, float]
    rmse: float
    spearman: float
    spearman_ci: tuple[float, float]
    spearman_p: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_frame(self) -> pd.DataFrame:
        note = "; ".join(self.notes)
        rows = [
            {"metric": "count_mae", "value": self.mae, "ci_low": self.mae_ci[0], "ci_high": self.mae_ci[1], "note": "t CI"},
            {"metric": "count_bias", "value": self.bias, "ci_low": self.bias_ci[0], "ci_high": self.bias_ci[1], "note": "predicted - observed; t CI"},
            {"metric": "count_rmse", "value": self.rmse, "ci_low": np.nan, "ci_high": np.nan, "note": ""},
            {"metric": "spearman", "value": self.spearman, "ci_low": self.spearman_ci[0], "ci_high": self.spearman_ci[1],
             "note": note or f"Fisher-z CI (Bonett-Wright); p = {self.spearman_p:.3g}"},
        ]
        df = pd.DataFrame(rows)
        df["threshold"] = np.nan
        df["n"] = self.n
        return df[TIDY_COLUMNS]

    def summary(self) -> str:
        lines = [f"Count error ({self.n} patients): MAE {self.mae:.3f} ({self.mae_ci[0]:.3f} to {self.mae_ci[1]:.3f}), "
                 f"bias {self.bias:+.3f} ({self.bias_ci[0]:+.3f} to {self.bias_ci[1]:+.3f}), RMSE {self.rmse:.3f}, "
                 f"Spearman {self.spearman:.3f} ({self.spearman_ci[0]:.3f} to {self.spearman_ci[1]:.3f})"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _t_ci(x: np.ndarray, level: float) -> tuple[float, float]:
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    m, s = x.mean(), x.std(ddof=1) / np.sqrt(n)
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return float(m - q * s), float(m + q * s)


def count_error(predicted: np.ndarray, observed: np.ndarray, *, confidence_level: float = 0.95) -> CountErrorResult:
    """MAE, bias, RMSE and Spearman correlation of predicted (n,) vs observed (n,) counts."""
    pr = np.asarray(predicted, dtype=float)
    ob = np.asarray(observed, dtype=float)
    err = pr - ob
    notes: list[str] = []
    n = pr.size
    if n >= 3 and np.ptp(pr) > 0 and np.ptp(ob) > 0:
        rho, pval = stats.spearmanr(pr, ob)
        rho = float(rho)
        z = float(stats.norm.ppf(0.5 + confidence_level / 2))
        if abs(rho) < 1 and n > 3:
            se = np.sqrt((1 + rho * rho / 2) / (n - 3))
            ci = (float(np.tanh(np.arctanh(rho) - z * se)), float(np.tanh(np.arctanh(rho) + z * se)))
        else:
            ci = (rho, rho)
    else:
        rho, pval, ci = float("nan"), float("nan"), (float("nan"), float("nan"))
        notes.append("Spearman undefined: " + ("fewer than 3 patients" if n < 3 else
                     "predicted counts are constant" if np.ptp(pr) == 0 else "observed counts are constant"))
    return CountErrorResult(n, float(np.abs(err).mean()), _t_ci(np.abs(err), confidence_level), float(err.mean()),
                            _t_ci(err, confidence_level), float(np.sqrt((err ** 2).mean())), rho, ci, float(pval), tuple(notes))
