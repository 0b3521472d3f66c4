"""Absolute risk difference of two proportions with the Newcombe (hybrid Wilson score) 95% CI.

Used for the lesion-free endpoint: share of patients free of NET2 lesions in an arm minus the
share under the reference arm, in percentage points (CONSORT item 17b: give absolute effects
beside relative ones for binary outcomes).
"""

from __future__ import annotations

from dataclasses import dataclass

from statsmodels.stats.proportion import confint_proportions_2indep


@dataclass(frozen=True)
class RiskDifference:
    """difference = x1/n1 - x2/n2 (proportion scale, -1..1) with its Newcombe CI at level 1 - alpha."""

    difference: float
    ci_low: float
    ci_high: float
    x1: int
    n1: int
    x2: int
    n2: int


def risk_difference(x1: int, n1: int, x2: int, n2: int, *, alpha: float = 0.05) -> RiskDifference:
    """x1 of n1 patients with the outcome in the arm, x2 of n2 in the reference (n1, n2 >= 1)."""
    if n1 < 1 or n2 < 1 or not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"need 0 <= x <= n and n >= 1, got {x1}/{n1} and {x2}/{n2}")
    lo, hi = confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff", alpha=alpha)
    return RiskDifference(x1 / n1 - x2 / n2, float(lo), float(hi), int(x1), int(n1), int(x2), int(n2))
