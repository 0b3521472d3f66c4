"""Qini coefficient: Radcliffe's normalisation (perfect = 1, random ~ 0) and ties that do not
depend on patient order."""

from __future__ import annotations

import numpy as np

from mseval.stats.qini import qini_coefficient, qini_points


def _trial(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    treated = rng.permutation(np.r_[np.zeros(n // 2, bool), np.ones(n // 2, bool)])
    rate = rng.gamma(1.0, 7.0, n)
    benefit = rate * (1 - 0.3 ** rng.uniform(0.4, 1.6, n))  # true per-patient reduction
    y = rng.poisson(np.where(treated, rate - benefit, rate)).astype(float)
    return treated, y, benefit


def test_perfect_is_one_and_random_is_about_zero() -> None:
    vals = []
    for s in range(60):
        treated, y, benefit = _trial(s)
        assert qini_coefficient(benefit, treated, y, perfect_score=benefit) == 1.0
        perfect_obs = np.where(treated, 1.0, -1.0) * (y.mean() - y)
        assert qini_coefficient(perfect_obs, treated, y) == 1.0
        vals.append(qini_coefficient(np.random.default_rng(100 + s).random(len(y)), treated, y, perfect_score=benefit))
    v = np.array(vals)
    assert abs(v.mean()) < 3 * v.std(ddof=1) / np.sqrt(len(v))  # random ranking: mean 0 within MC error
    treated, y, benefit = _trial(1)
    assert qini_coefficient(benefit, treated, y, perfect_score=benefit) > qini_coefficient(-benefit, treated, y, perfect_score=benefit)


def test_ties_do_not_depend_on_patient_order() -> None:
    treated, y, benefit = _trial(5)
    tied = np.zeros(len(y))
    assert qini_coefficient(tied, treated, y) == 0.0  # all tied: the random line exactly
    coarse = np.round(benefit / 5)  # a few tie groups
    perm = np.random.default_rng(0).permutation(len(y))
    a = qini_coefficient(coarse, treated, y)
    b = qini_coefficient(coarse[perm], treated[perm], y[perm])
    assert a == np.float64(b) or abs(a - b) < 1e-12
    f, q = qini_points(coarse, treated, y)
    assert len(f) == len(np.unique(coarse)) + 1
