"""Forecast-based treatment effects: each ensemble sample is one imputation of the unobserved
future under the patient's allocated arm; the NB2 fits are combined with Rubin's rules.

For a coefficient: Q = mean of the M estimates, W = mean within-imputation variance,
B = between-imputation variance, T = W + (1 + 1/M) B; degrees of freedom
nu = (M - 1) (1 + W / ((1 + 1/M) B))^2 (Rubin 1987); CI from the t distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import fit_count_model


@dataclass(frozen=True)
class RubinFit:
    """Pooled rate ratios (term, rate_ratio, ci_low, ci_high, p_value, coef, se, df,
    fraction_missing_info) over `imputations` fits; `failed` fits that did not converge are left out."""

    table: pd.DataFrame
    imputations: int
    failed: int
    note: str = ""

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Forecast-based NB2 estimates, Rubin's rules over {self.imputations} imputations ({self.failed} failed fits left out)"]
        for r in self.table.itertuples():
            lines.append(f"  {r.term:28s} RR {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}")
        return "\n".join(lines)


def rubin_combine(estimates: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """estimates, variances: (M, K). Returns pooled estimate, total SE, df, fraction of missing information (K,)."""
    M = estimates.shape[0]
    q = estimates.mean(axis=0)
    w = variances.mean(axis=0)
    b = estimates.var(axis=0, ddof=1) if M > 1 else np.zeros_like(q)
    t = w + (1 + 1 / M) * b
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (1 + 1 / M) * b / w
        df = np.where(b > 0, (M - 1) * (1 + 1 / r) ** 2, np.inf)
        fmi = np.where(t > 0, (1 + 1 / M) * b / t, 0.0)
    return q, np.sqrt(t), df, fmi


def fit_forecast_imputations(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    reference: str,
    offset_years: str = "followup_years",
    response: str = "net2",
) -> RubinFit:
    """Fit `formula` once per ensemble sample, the response replaced by each patient's forecast
    count under the allocated arm (from `counts`), and pool with Rubin's rules."""
    alloc = counts.merge(table[["patient_id", "arm"]], on=["patient_id", "arm"])
    wide = alloc.pivot(index="patient_id", columns="sample", values="count")
    ests, vars_, terms, failed = [], [], None, 0
    reasons: list[str] = []
    for s in wide.columns:
        d = table.drop(columns=[response], errors="ignore").merge(wide[s].rename(response), left_on="patient_id", right_index=True)
        try:
            fit = fit_count_model(d, formula, offset_years=offset_years, reference=reference, adjusted_means=False)
        except InputError as exc:  # e.g. an imputation with no lesion at all: not estimable
            failed += 1
            reasons.append(exc.problem)
            continue
        if not fit.converged:
            failed += 1
            continue
        t = fit.table.set_index("term")
        terms = list(t.index) if terms is None else terms
        ests.append(t.loc[terms, "coef"].to_numpy())
        vars_.append(t.loc[terms, "se"].to_numpy() ** 2)
    if not ests:
        arms = [a for a in pd.unique(table["arm"]) if a != reference]
        nan = np.full(len(arms), np.nan)
        note = f"not estimable: no imputation could be fitted ({reasons[0] if reasons else 'no fit converged'})"
        out = pd.DataFrame({"term": arms, "rate_ratio": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "coef": nan, "se": nan,
                            "df": nan, "fraction_missing_info": nan, "note": note})
        return RubinFit(out, 0, failed, note)
    q, se, df, fmi = rubin_combine(np.array(ests), np.array(vars_))
    crit = stats.t.ppf(0.975, df)
    with np.errstate(over="ignore"):
        out = pd.DataFrame(
            {
                "term": terms, "rate_ratio": np.exp(q), "ci_low": np.exp(q - crit * se), "ci_high": np.exp(q + crit * se),
                "p_value": 2 * stats.t.sf(np.abs(q / se), df), "coef": q, "se": se, "df": df, "fraction_missing_info": fmi,
            }
        )
    return RubinFit(out, len(ests), failed)
