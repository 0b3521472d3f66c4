"""New and enlarging lesion events of one patient in continuous time (weeks from baseline).

Under placebo, events arise as a Poisson process of rate lambda_i per year. Each event has a
pre-lesional phase: a latency L ~ Uniform(prelesion_months) before it appears, during which the
tissue at its future site changes (WORLD_FACTS 4: MTR, diffusion, faintly PD/FLAIR/T1). An event is
*enlarging* with probability `p_enlarging` (it grows a baseline lesion) and otherwise *new*. A new
event whose change has begun by baseline (L > its birth time) is *visible* at baseline with
probability `prelesion_fraction`. Treatment thins: under arm a the event appears iff its uniform
`thin` < rho_ia (so every arm's events are a subset of placebo's, coupled through `thin`).

Events are drawn on (0, H], H = max(last visit, longest latency), so that every pre-lesional site
visible at baseline is known. The expected number of visible sites is
lambda_i * prelesion_fraction * (1 - p_enlarging) * E[L] (L in years): the observable oracle's
likelihood term; `prelesion_integral` gives the share of them that appear in a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mseval.simulate.model import WEEKS_PER_MONTH, WEEKS_PER_YEAR, TrialConfig


@dataclass(frozen=True)
class Events:
    """One patient's events under placebo, sorted by birth. Arrays (n,): birth and latency in
    weeks; enlarging, visible (pre-lesional change visible at baseline) flags; thin in [0, 1)."""

    birth: np.ndarray
    latency: np.ndarray
    enlarging: np.ndarray
    visible: np.ndarray
    thin: np.ndarray

    def under(self, rho: float) -> np.ndarray:
        """bool (n,): the events that appear under an arm of rate ratio rho."""
        return self.thin < rho

    def counts(self, rho: float, edges_weeks: np.ndarray) -> np.ndarray:
        """NET2 events per interval (edges[k-1], edges[k]] under rate ratio rho; edges start at 0."""
        b = self.birth[self.under(rho)]
        return np.histogram(b, bins=np.asarray(edges_weeks, dtype=float))[0].astype(np.int64) if len(edges_weeks) > 1 else np.zeros(0, np.int64)


def draw_events(rate_per_year: float, horizon_weeks: float, cfg: TrialConfig, rng: np.random.Generator) -> Events:
    lo, hi = (m * WEEKS_PER_MONTH for m in cfg.prelesion_months)
    h = max(float(horizon_weeks), hi)
    n = int(rng.poisson(rate_per_year * h / WEEKS_PER_YEAR))
    birth = np.sort(rng.uniform(0.0, h, n))
    latency = rng.uniform(lo, hi, n)
    enlarging = rng.random(n) < cfg.p_enlarging
    visible = (~enlarging) & (rng.random(n) < cfg.prelesion_fraction) & (latency > birth)
    thin = rng.random(n)
    return Events(birth, latency, enlarging, visible, thin)


def prelesion_integral(a_weeks: float, b_weeks: float, cfg: TrialConfig) -> float:
    """integral over r in (a, b] of P(L > r) dr, in years: the expected number of baseline-visible
    sites appearing in (a, b] is lambda * prelesion_fraction * (1 - p_enlarging) times this."""
    lo, hi = (m * WEEKS_PER_MONTH for m in cfg.prelesion_months)

    def big_f(r: float) -> float:  # integral_0^r P(L > s) ds (weeks)
        r = min(max(r, 0.0), hi)
        if r <= lo:
            return r
        return lo + ((hi - lo) ** 2 - (hi - r) ** 2) / (2.0 * (hi - lo))

    return (big_f(b_weeks) - big_f(a_weeks)) / WEEKS_PER_YEAR


def mean_latency_years(cfg: TrialConfig) -> float:
    lo, hi = cfg.prelesion_months
    return 0.5 * (lo + hi) / 12.0
