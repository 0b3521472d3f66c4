"""Qini curves and coefficients of a predicted-benefit ranking, on randomized patients.

Patients randomized to the treated arm (t = 1) or the reference (t = 0) are ordered by predicted
benefit, highest first. After the top fraction phi, with N_t, N_c treated / reference patients and
Y_t, Y_c their summed observed annualised NET2 rates, the Qini curve (Radcliffe 2007) is
    Q(phi) = Y_c N_t / N_c - Y_t      (lesions per year prevented among the treated so far),
0 where N_c = 0. The random ranking is the straight line from (0, 0) to (1, Q(1)).

Ties: patients with equal predicted benefit are one group; the curve is evaluated only at group
ends and is linear inside a group (the convention of ROC curves with ties, sklearn's roc_curve),
so the result does not depend on patient order, and an all-tied score gives the random line.

Qini coefficient (Radcliffe 2007; scikit-uplift's `qini_auc_score`): the area between the model's
curve and the random line over the area between a *perfect* curve and the random line; 1 for the
perfect ranking, about 0 for a random one, negative when worse than random.
    qini_coefficient: perfect curve from the observed outcomes, as scikit-uplift builds it
        (score (2t - 1)(mean rate - rate): treated patients with the fewest lesions first,
        reference patients with the most lesions first). The best any ranking could do on these
        noisy outcomes: a ranking by the true effect scores well below 1.
    qini_coefficient_vs_true_ranking (simulated cohorts): perfect = the ranking by the true
        per-patient benefit (truth.csv); 1 for the true ranking, about 0 for a random one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NORMALISATION = ("Radcliffe (2007) / scikit-uplift qini_auc_score: (area model - random) / (area perfect - random); "
                 "perfect from the observed outcomes; ties in predicted benefit averaged (curve linear within ties)")


def qini_points(score: np.ndarray, treated: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction, qini) at 0 and at the end of every tie group of `score` (descending).

    score, treated (bool), y (annualised outcome): (n,) each."""
    score, treated, y = np.asarray(score, dtype=float), np.asarray(treated, dtype=bool), np.asarray(y, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    s, t, yy = score[order], treated[order], y[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(yy * t), np.cumsum(yy * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n_c > 0, y_c * n_t / np.maximum(n_c, 1), 0.0) - y_t
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each tie group
    frac = np.r_[0.0, (ends + 1) / len(s)]
    return frac, np.r_[0.0, q[ends]]


def qini_area(score: np.ndarray, treated: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(area between the curve and the random line, Q(1))."""
    frac, q = qini_points(score, treated, y)
    return float(np.trapezoid(q - frac * q[-1], frac)), float(q[-1])


def qini_coefficient(score: np.ndarray, treated: np.ndarray, y: np.ndarray, perfect_score: np.ndarray | None = None) -> float:
    """Radcliffe's normalised Qini; `perfect_score` None: the observed-outcome perfect ranking."""
    treated = np.asarray(treated, dtype=bool)
    y = np.asarray(y, dtype=float)
    if perfect_score is None:
        perfect_score = np.where(treated, 1.0, -1.0) * (y.mean() - y)
    a, _ = qini_area(score, treated, y)
    p, _ = qini_area(perfect_score, treated, y)
    return a / p if p > 0 else float("nan")


@dataclass(frozen=True)
class QiniResult:
    """curve: (arm, fraction, qini, random); area: per arm qini_area, total_reduction,
    qini_coefficient, [qini_coefficient_vs_true_ranking], normalisation, n, estimable, note."""

    curve: pd.DataFrame
    area: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.area


def qini_table(table: pd.DataFrame, benefit: dict[str, pd.Series], reference: str, *, truth: pd.DataFrame | None = None,
               response: str = "net2", years: str = "followup_years") -> QiniResult:
    """Qini per treated arm. benefit: arm -> predicted benefit by patient_id (higher = more benefit);
    truth (optional, simulated cohorts): truth.csv rows for the true-ranking normalisation."""
    curves, areas = [], []
    t_exp = truth.set_index(["patient_id", "arm"])["expected_count"] if truth is not None else None
    for arm, ben in benefit.items():
        d = table[table["arm"].isin([arm, reference])]
        score = ben.loc[d["patient_id"]].to_numpy(dtype=float)
        treated = (d["arm"] == arm).to_numpy()
        y = d[response].to_numpy(dtype=float) / d[years].to_numpy(dtype=float)
        frac, q = qini_points(score, treated, y)
        curves.append(pd.DataFrame({"arm": arm, "fraction": frac, "qini": q, "random": frac * q[-1]}))
        area, total = qini_area(score, treated, y)
        row = {"arm": arm, "qini_area": area, "total_reduction": total, "qini_coefficient": qini_coefficient(score, treated, y),
               "normalisation": NORMALISATION, "n": int(len(d))}
        if t_exp is not None:
            ids = d["patient_id"].to_numpy()
            true_benefit = (t_exp.loc[list(zip(ids, [reference] * len(ids)))].to_numpy() - t_exp.loc[list(zip(ids, [arm] * len(ids)))].to_numpy())
            row["qini_coefficient_vs_true_ranking"] = qini_coefficient(score, treated, y, perfect_score=true_benefit)
        ok = np.isfinite(row["qini_coefficient"])
        row["estimable"] = bool(ok)
        row["note"] = "" if ok else "not estimable: the perfect ranking has no Qini area (no outcome difference to rank)"
        row["analysis"] = "exploratory"
        areas.append(row)
    return QiniResult(pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["arm", "fraction", "qini", "random"]),
                      pd.DataFrame(areas))
