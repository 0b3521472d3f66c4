"""Absolute effects by marginal standardisation, with delta-method CIs (CONSORT 17b: absolute and relative).

Count endpoint (`standardised_rates`): from a fitted NB2 model (log link, offset log(follow-up years)),
each arm's adjusted rate is the mean over the analysed patients of their predicted rate per year had
they all received the arm,
    r_a = (1/n) sum_i exp(x_i(a)' beta),
and the rate difference vs the reference is r_a - r_ref. Variances by the delta method with the
model's covariance V of beta: grad r_a = (1/n) sum_i exp(x_i(a)' beta) x_i(a); Var = g' V g. The rate's
CI is built on the log scale (exp(log r_a -/+ z se / r_a)), the difference's on the natural scale.
The intervals condition on the analysed patients' covariates (the standardisation population is the
analysed sample, held fixed). Without arm x covariate interactions the ratio r_a / r_ref equals
exp(beta_arm): the adjusted rate ratio is the same marginal and conditional.

Binary endpoint (`standardised_risks`): the same for a logistic model, p_a = (1/n) sum_i expit(x_i(a)' b),
grad = (1/n) sum_i p_i (1 - p_i) x_i(a); the CI of p_a on the logit scale, the difference's on the
natural scale. Unlike the rate ratio, the conditional odds ratio exp(b_arm) is not the marginal one
(non-collapsible); the standardised risk difference is a marginal quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def arm_designs(design_info: Any, data: pd.DataFrame, arm_col: str, arms: Sequence[str]) -> dict[str, np.ndarray]:
    """Design matrix (n, k) of every row of `data` set to each arm in turn (categories `arms`, reference first)."""
    import patsy

    out = {}
    for arm in arms:
        alt = data.copy()
        alt[arm_col] = pd.Categorical([arm] * len(alt), categories=list(arms))
        (X,) = patsy.build_design_matrices([design_info], alt)
        out[arm] = np.asarray(X, dtype=float)
    return out


def _contrasts(level: dict[str, float], grad: dict[str, np.ndarray], V: np.ndarray, arms: Sequence[str], *, log_ci: bool,
               logit_ci: bool = False) -> pd.DataFrame:
    ref = arms[0]
    rows = []
    for a in arms:
        g = grad[a]
        var = float(g @ V @ g)
        se = np.sqrt(var) if var >= 0 else np.nan
        v = level[a]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if log_ci:
                s = se / v
                lo, hi = v * np.exp(-Z95 * s), v * np.exp(Z95 * s)
            elif logit_ci:
                s = se / (v * (1 - v))
                lg = np.log(v / (1 - v))
                lo, hi = 1 / (1 + np.exp(-(lg - Z95 * s))), 1 / (1 + np.exp(-(lg + Z95 * s)))
            else:
                lo, hi = v - Z95 * se, v + Z95 * se
        dg = g - grad[ref]
        dvar = float(dg @ V @ dg)
        dse = np.sqrt(dvar) if dvar >= 0 else np.nan
        d = v - level[ref]
        rows.append({"arm": a, "level": v, "level_se": se, "level_ci_low": lo, "level_ci_high": hi,
                     "difference": d if a != ref else np.nan, "difference_se": dse if a != ref else np.nan,
                     "difference_ci_low": d - Z95 * dse if a != ref else np.nan, "difference_ci_high": d + Z95 * dse if a != ref else np.nan})
    return pd.DataFrame(rows)


def standardised_rates(design_info: Any, beta: np.ndarray, vcov: np.ndarray, data: pd.DataFrame, arm_col: str,
                       arms: Sequence[str]) -> pd.DataFrame:
    """Per arm (reference first): adjusted rate per year (`rate`, `rate_se`, `rate_ci_low`, `rate_ci_high`) and
    the rate difference vs the reference (`rate_difference`, its se and CI; NaN on the reference row).

    design_info, beta (k,), vcov (k, k): the fitted NB2 model (log scale, intercept included);
    data: the analysed rows (n); arms: the arm categories, reference first. Lesions per patient-year."""
    Xs = arm_designs(design_info, data, arm_col, arms)
    level, grad = {}, {}
    for a, X in Xs.items():
        with np.errstate(over="ignore"):
            m = np.exp(X @ beta)
        level[a] = float(m.mean())
        grad[a] = (X * m[:, None]).mean(axis=0)
    t = _contrasts(level, grad, np.asarray(vcov, dtype=float), arms, log_ci=True)
    return t.rename(columns={"level": "rate", "level_se": "rate_se", "level_ci_low": "rate_ci_low", "level_ci_high": "rate_ci_high",
                             "difference": "rate_difference", "difference_se": "rate_difference_se",
                             "difference_ci_low": "rate_difference_ci_low", "difference_ci_high": "rate_difference_ci_high"})


def standardised_risks(design_info: Any, beta: np.ndarray, vcov: np.ndarray, data: pd.DataFrame, arm_col: str,
                       arms: Sequence[str]) -> pd.DataFrame:
    """Per arm (reference first): standardised probability of the event of a logistic model (`risk`, se, CI
    on the logit scale) and the risk difference vs the reference (`risk_difference`, se, CI). Proportions (0-1)."""
    Xs = arm_designs(design_info, data, arm_col, arms)
    level, grad = {}, {}
    for a, X in Xs.items():
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        level[a] = float(p.mean())
        grad[a] = (X * (p * (1 - p))[:, None]).mean(axis=0)
    t = _contrasts(level, grad, np.asarray(vcov, dtype=float), arms, log_ci=False, logit_ci=True)
    return t.rename(columns={"level": "risk", "level_se": "risk_se", "level_ci_low": "risk_ci_low", "level_ci_high": "risk_ci_high",
                             "difference": "risk_difference", "difference_se": "risk_difference_se",
                             "difference_ci_low": "risk_difference_ci_low", "difference_ci_high": "risk_difference_ci_high"})
