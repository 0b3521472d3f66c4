"""Newcombe CI of a risk difference: Newcombe (1998) Table II example and simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from mseval.stats.risk_difference import risk_difference


def test_newcombe_1998_example():
    # Newcombe 1998 (Stat Med 17:873), method 10, example (a): 56/70 vs 48/80 -> 0.2000 (0.0524 to 0.3339)
    rd = risk_difference(56, 70, 48, 80)
    assert rd.difference == pytest.approx(0.2)
    assert rd.ci_low == pytest.approx(0.0524, abs=5e-4) and rd.ci_high == pytest.approx(0.3339, abs=5e-4)


def test_coverage_is_near_95_percent():
    """2,000 simulated pairs (n = 40, 30; p = 0.4, 0.25): coverage within 3 binomial SEs of 95%
    (Newcombe 1998: near-nominal at these sizes)."""
    rng = np.random.default_rng(7)
    n1, n2, p1, p2, reps = 40, 30, 0.4, 0.25, 2000
    x1, x2 = binom.rvs(n1, p1, size=reps, random_state=rng), binom.rvs(n2, p2, size=reps, random_state=rng)
    hits = sum(r.ci_low <= p1 - p2 <= r.ci_high for r in (risk_difference(int(a), n1, int(b), n2) for a, b in zip(x1, x2)))
    se = np.sqrt(0.95 * 0.05 / reps)
    assert abs(hits / reps - 0.95) < 3 * se, hits / reps


def test_bad_counts_raise():
    with pytest.raises(ValueError):
        risk_difference(5, 4, 1, 10)
