"""Trajectories of the image count model: NB2 marginals per visit, nested visits, seeded."""

from __future__ import annotations

import numpy as np
from scipy import stats

from forecast.image_count_sampling import draw_counts_trajectory, draw_trajectory


def test_each_visit_has_the_fitted_nb2_marginal_and_visits_nest() -> None:
    mu, alpha, n = np.array([0.8, 2.0, 4.5]), 0.9, 4000
    draws = np.stack([draw_counts_trajectory(mu, alpha, s) for s in range(n)])
    assert np.all(np.diff(draws, axis=1) >= 0)
    r = 1 / alpha
    for k in range(3):
        law = stats.nbinom(r, r / (r + mu[k]))
        # mean within 4 Monte Carlo SEs (SD of the NB2 law / sqrt(n))
        assert abs(draws[:, k].mean() - mu[k]) < 4 * law.std() / np.sqrt(n), k
        p0 = law.pmf(0)  # P(no lesion) within 4 binomial SEs
        assert abs((draws[:, k] == 0).mean() - p0) < 4 * np.sqrt(p0 * (1 - p0) / n), k
    # the increments share one frailty: positively correlated (independent Poisson increments would give ~0)
    inc = np.diff(draws, axis=1, prepend=0)
    assert np.corrcoef(inc[:, 0], inc[:, 2])[0, 1] > 4 / np.sqrt(n)


def test_trajectory_centres_are_nested_by_birth_and_seeded() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 12, 12))
    t = draw_trajectory(np.array([1.0, 3.0, 6.0]), 0.5, logits, seed=7, min_distance=2)
    assert t.placed == t.counts[-1] and np.all(np.diff(t.birth) >= 0)
    for k in range(3):
        assert len(t.at_visit(k)) == t.counts[k]
        assert np.array_equal(t.at_visit(k), t.centres[: t.counts[k]])
    again = draw_trajectory(np.array([1.0, 3.0, 6.0]), 0.5, logits, seed=7, min_distance=2)
    assert np.array_equal(t.centres, again.centres) and np.array_equal(t.counts, again.counts)
    other = [draw_trajectory(np.array([1.0, 3.0, 6.0]), 0.5, logits, seed=s, min_distance=2).counts[-1] for s in range(8, 30)]
    assert len(set(other)) > 1


def test_no_dispersion_is_a_poisson_process() -> None:
    draws = np.stack([draw_counts_trajectory(np.array([2.0, 5.0]), 0.0, s) for s in range(3000)])
    inc = np.diff(draws, axis=1, prepend=0)
    assert abs(np.corrcoef(inc[:, 0], inc[:, 1])[0, 1]) < 4 / np.sqrt(3000)
    # relative SE of a Poisson(5) sample variance: sqrt((2 + 1 / mu) / n) (excess kurtosis 1 / mu)
    assert abs(draws[:, 1].var() / 5.0 - 1) < 4 * np.sqrt((2 + 1 / 5.0) / 3000)


def test_centres_stay_the_given_millimetres_apart_on_an_anisotropic_grid() -> None:
    """`exclusion_radius` turns a distance in mm into voxels per axis: 22 mm is the historical 4 voxels on the 32^3 MNI
    grid and 22 voxels at 1 mm; centres drawn with it on an anisotropic grid are at least that many mm apart along some
    axis (Chebyshev distance in mm), and a smaller distance lets some pair come closer."""
    from itertools import combinations

    from forecast.image_count_sampling import MIN_DISTANCE_MM, exclusion_radius
    from mseval.simulate.anatomy import default_spacing

    assert exclusion_radius(MIN_DISTANCE_MM, default_spacing((32, 32, 32))) == (4, 4, 4)
    assert exclusion_radius(22.0, (1.0, 1.0, 1.0)) == (22, 22, 22) and exclusion_radius(0.0, (1.0, 1.0, 1.0)) == (1, 1, 1)
    spacing = np.array([1.0, 2.5, 4.0])
    logits = np.zeros((40, 24, 16))

    def closest(distance_mm: float) -> float:
        t = draw_trajectory(np.array([10.0, 20.0, 30.0]), 0.1, logits, seed=3, min_distance=exclusion_radius(distance_mm, spacing))
        mm = t.centres * spacing
        return min(float(np.abs(a - b).max()) for a, b in combinations(mm, 2))

    assert closest(10.0) >= 10.0 and closest(4.0) >= 4.0
    assert closest(4.0) < 10.0
