"""The NB-GEE's randomization test and inverted CI (`mseval.stats.gee_permutation`): its GEE equations are
statsmodels' (via `fit_gee`), the test at b = 0 and the CI agree, labels permute between patients only, and
the permutation p value is exact under the sharp null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mseval.stats.gee import fit_gee, gee_design
from mseval.stats.gee_permutation import _corr, _NullGee, _panel, gee_permutation_tests
from tests.stats.visit_data import trial_with_missing


@pytest.fixture(scope="module")
def trial() -> tuple[pd.DataFrame, pd.DataFrame]:
    return trial_with_missing(seed=5, patients_per_arm=15)


@pytest.mark.parametrize("corr", ["ar1", "exchangeable", "independence"])
def test_fixed_correlation_gee_equations_are_statsmodels(trial, corr: str) -> None:  # noqa: ANN001
    """Solving the GEE equations with the fit's working correlation parameter and alpha held fixed, all
    columns kept, gives `fit_gee`'s coefficients (statsmodels GEE; missing visits, AR(1) by visit index)."""
    visits, patients = trial
    fit = fit_gee(visits, patients, corr=corr, covariates=["age"])
    _, df, y, X, names, _ = gee_design(visits, patients, corr=corr, covariates=["age"])
    Y, O, VI, XX, M = _panel(df, y, X, np.log(df["years"].to_numpy(dtype=float)))
    assert M.sum() == len(y) < M.size  # some patients miss visits
    full = _NullGee(Y, O, XX, M, _corr(VI, M, corr, fit.dep_param), float(fit.nb_alpha), np.zeros(X.shape[1]))
    beta = full.beta0.copy()
    for _ in range(60):  # the same Fisher scoring as `_NullGee.parts`, on every column
        mu, Vinv = full._mu_vinv(beta, np.zeros_like(Y))
        D = mu[:, :, None] * XX
        VD = Vinv @ D
        beta = beta + np.linalg.solve(np.einsum("ntp,ntq->pq", D, VD), np.einsum("ntp,nt->p", VD, Y - mu))
    assert np.allclose(beta, fit.params[names].to_numpy(), rtol=0, atol=1e-8)
    r, w, q, info = full.parts(np.zeros_like(Y))  # at the solution every score is zero
    assert abs(float(np.sum(r))) < 1e-6 * float(np.sum(w))


def test_test_and_interval_agree_and_are_seeded(trial) -> None:  # noqa: ANN001
    visits, patients = trial
    a = gee_permutation_tests(visits, patients, corr="ar1", reference="placebo", n_permutations=199, seed=3)
    again = gee_permutation_tests(visits, patients, corr="ar1", reference="placebo", n_permutations=199, seed=3)
    pd.testing.assert_frame_equal(a, again)
    fit = fit_gee(visits, patients, corr="ar1", reference="placebo").table.set_index("term")
    assert set(a["arm"]) == set(fit.index)
    for r in a.itertuples():
        assert r.rate_ratio == pytest.approx(fit.loc[r.arm, "rate_ratio"], rel=1e-12)
        assert r.ci_low < r.rate_ratio < r.ci_high and 0 < r.p_value <= 1 and r.estimable
        assert (r.p_value <= 0.05) == (not r.ci_low <= 1.0 <= r.ci_high)  # the CI inverts this very test
    other = gee_permutation_tests(visits, patients, corr="ar1", reference="placebo", n_permutations=199, seed=4)
    assert not np.allclose(other["p_value"], a["p_value"]) or not np.allclose(other["ci_low"], a["ci_low"])


def test_sharp_null_p_values_are_exact() -> None:
    """Under the sharp null (arm labels assigned at random to fixed per-visit counts) the p value is uniform on
    the permutation grid: with the observed labelling one of B + 1 equally likely ones, P(p <= 0.2) <= 0.2. Checked
    by re-randomizing one trial's labels 60 times (binomial: 12 expected, 0.1% upper tail 22)."""
    visits, patients = trial_with_missing(seed=11, patients_per_arm=10)
    two = patients[patients["arm"].isin(["placebo", patients["arm"].unique()[1]])].reset_index(drop=True)
    v = visits[visits["patient_id"].isin(two["patient_id"])]
    rng = np.random.default_rng(0)
    ps = []
    for k in range(60):
        lab = two.assign(arm=rng.permutation(two["arm"].to_numpy()))
        ps.append(float(gee_permutation_tests(v, lab, corr="ar1", reference="placebo", n_permutations=99, seed=k)["p_value"].iloc[0]))
    assert sum(p <= 0.2 for p in ps) <= 22
    assert min(ps) >= 1 / 100
