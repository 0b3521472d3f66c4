"""Draw coherent multi-visit lesion trajectories from the image count model's law (`forecast.image_count`).

The model's count law over the visit schedule is a gamma-mixed Poisson process: given the patient's
frailty G ~ Gamma(shape 1/alpha, scale alpha) (mean 1, variance alpha), the new lesions of interval k
are Poisson(G * (mu_k - mu_{k-1})), independent over intervals, where mu_k is the cumulative mean to
visit k. So the cumulative count to visit k is NB2(mu_k, alpha) -- the marginal law the model was
fitted with -- and one draw of G per member makes its visits one trajectory: the W48 set of lesions
is the W24 set plus the lesions born in (W24, W48].

Each new lesion's centre is drawn from the centre intensity softmax(logits) of the member's arm, in
birth order, each excluding the voxels closer than a distance in mm (`MIN_DISTANCE_MM` by default; per axis, Chebyshev:
`exclusion_radius`) to the centres drawn before (`forecast.centres.draw_centres`, so that lesions stay apart as
connected components; the same millimetres on any grid). That
exclusion is the sampler's, not the fitted law's: location scores are computed on the fitted law
(`bench/image_count_dev.py`), and the exclusion is part of what a rendered forecast is judged on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forecast.centres import draw_centres
from forecast.image_count import SPACING_DECIMALS

MIN_DISTANCE_MM = 22.0
"""Default smallest distance (mm, Chebyshev per axis) between a member's lesion centres: 4 voxels of the 32^3 MNI grid
(5.69 x 6.81 x 5.69 mm), where the simulated world keeps its lesions a voxel apart and the decoder renders lesions of
about 1,100-1,300 mm^3 (`bench/RESULTS_forecast.md` r15); rounded down to whole mm, the same exclusion as 4 voxels
there. At a finer grid lesions are smaller: a checkpoint records its own (`ImageCountMeta.min_distance_mm`)."""


def exclusion_radius(min_distance_mm: float, spacing: Sequence[float]) -> tuple[int, int, int]:
    """Per-axis Chebyshev distance in voxels (`draw_centres`' min_distance) that keeps centres at least
    `min_distance_mm` apart on a grid of voxel size `spacing` (x, y, z mm): ceil(min_distance_mm / spacing), at least 1
    (a voxel is never drawn twice). On the 32^3 MNI grid 22 mm gives (4, 4, 4); at 1 mm, (22, 22, 22)."""
    d = float(min_distance_mm)
    if not (math.isfinite(d) and d >= 0):
        raise ValueError(f"min_distance_mm must be finite and >= 0, got {min_distance_mm!r}")
    # voxel sizes read as `multiscale_geometry` reads them and ratios to 1e-4 (float32 affines: 5.6875 mm may read 5.68750048)
    return tuple(max(1, math.ceil(round(d / round(float(v), SPACING_DECIMALS), 4))) for v in spacing)  # type: ignore[return-value]


@dataclass(frozen=True)
class Trajectory:
    """One member's draw: cumulative counts (V,) int64 (nondecreasing), centres (K, 3) int64 voxel
    indices in birth order, birth (K,) int64 the visit index (0-based) by which each lesion exists.
    The lesions present at visit k are those with birth <= k; K = counts[-1] unless the brain ran out
    of room for centres (then `placed` < counts[-1])."""

    counts: np.ndarray
    centres: np.ndarray
    birth: np.ndarray

    @property
    def placed(self) -> int:
        return int(len(self.centres))

    def at_visit(self, k: int) -> np.ndarray:
        """(m, 3) the centres of the lesions present at visit k."""
        return self.centres[self.birth <= k]


def draw_counts_trajectory(mu: np.ndarray, alpha: float, seed: int) -> np.ndarray:
    """(V,) cumulative counts: one gamma frailty, then Poisson increments of the cumulative means mu (V,)
    (lesions, nondecreasing). A function of (mu, alpha, seed) alone."""
    mu = np.maximum.accumulate(np.asarray(mu, dtype=np.float64))
    if not np.all(np.isfinite(mu)) or mu[0] < 0 or not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"cumulative means must be finite and >= 0 and alpha finite and >= 0, got {mu!r}, {alpha!r}")
    rng = np.random.default_rng([int(seed) % (2**63), 2110])
    g = rng.gamma(1.0 / alpha, alpha) if alpha > 0 else 1.0
    inc = rng.poisson(g * np.diff(mu, prepend=0.0))
    return np.cumsum(inc).astype(np.int64)


def draw_trajectory(mu: np.ndarray, alpha: float, logits: np.ndarray, seed: int, *, min_distance: int | Sequence[int] = 4) -> Trajectory:
    """One member's trajectory: counts from `draw_counts_trajectory`, then counts[-1] centres from
    softmax(logits) (X, Y, Z) in birth order (`draw_centres`; min_distance in voxels, one number or one per axis:
    `exclusion_radius`), each lesion's birth visit from the counts."""
    counts = draw_counts_trajectory(mu, alpha, seed)
    centres = draw_centres(logits, int(counts[-1]), seed, min_distance=min_distance)
    birth = np.searchsorted(counts, np.arange(len(centres)), side="right").astype(np.int64)
    return Trajectory(counts, centres, birth)


__all__ = ["MIN_DISTANCE_MM", "Trajectory", "draw_counts_trajectory", "draw_trajectory", "exclusion_radius"]
