"""Power for the planned test and multiplicity, and assurance (mseval.stats.power, issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mseval.stats.power import (analytic_power, assurance, dunnett_critical_value, per_comparison_alpha, planned_assurance, planned_power,
                                planned_sample_size, simulated_power, success_power, wald_power, wald_se_log_rr)


def test_dunnett_k1_is_z_and_matches_tables_and_simulation() -> None:
    assert dunnett_critical_value(1) == pytest.approx(stats.norm.isf(0.025), abs=1e-9)
    # Dunnett's two-sided table, infinite df, 0.05: 2.21 (K = 2), 2.35 (3), 2.44 (4), 2.51 (5)
    for k, c in ((2, 2.21), (3, 2.35), (4, 2.44), (5, 2.51)):
        assert dunnett_critical_value(k) == pytest.approx(c, abs=0.006)
    # simulated family-wise error of the K = 3 critical value (50,000 draws: MC SE 0.001)
    rng = np.random.default_rng(0)
    w, e = rng.standard_normal((50_000, 1)), rng.standard_normal((50_000, 3))
    z = np.sqrt(0.5) * w + np.sqrt(0.5) * e
    fwer = np.mean(np.abs(z).max(axis=1) > dunnett_critical_value(3))
    assert fwer == pytest.approx(0.05, abs=3 * np.sqrt(0.05 * 0.95 / 50_000))
    # between Bonferroni and unadjusted
    assert 0.05 / 3 < per_comparison_alpha("dunnett", 3) < 0.05


def test_per_comparison_levels() -> None:
    assert per_comparison_alpha("bonferroni", 4) == per_comparison_alpha("holm", 4) == pytest.approx(0.0125)
    assert per_comparison_alpha("fixed_sequence", 4) == per_comparison_alpha("none", 4) == 0.05
    with pytest.raises(ValueError):
        per_comparison_alpha("hochberg", 2)


def test_analytic_wald_power_is_statsmodels() -> None:
    for n in (10, 40, 120):
        p = planned_power(5.0, [0.6], n, years=0.9, dispersion=1.7, procedure="none")["power"].iloc[0]
        assert p == pytest.approx(analytic_power(5.0, 3.0, n, years=0.9, dispersion=1.7), rel=1e-10)


def test_bonferroni_power_at_alpha_over_k_and_fixed_sequence_steps() -> None:
    rr = [0.5, 0.6, 0.7]
    bon = planned_power(4.0, rr, 30, dispersion=1.2, procedure="bonferroni")
    se = wald_se_log_rr(4.0, 2.0, 30, dispersion=1.2)
    assert bon["power"].iloc[0] == pytest.approx(wald_power(np.log(0.5), se, 0.05 / 3), rel=1e-12)
    fs = planned_power(4.0, rr, 30, dispersion=1.2, procedure="fixed_sequence")
    unadj = planned_power(4.0, rr, 30, dispersion=1.2, procedure="none")["power"].to_numpy()
    assert fs["power"].iloc[0] == pytest.approx(stats.norm.sf(stats.norm.isf(0.025) - np.log(2) / se), rel=1e-10)
    assert np.all(np.diff(fs["power"]) < 0)  # reaching a later step needs the earlier ones
    assert np.all(fs["power"].to_numpy()[1:] < unadj[1:]) and np.all(fs["power"].to_numpy() > bon["power"].to_numpy())
    # the correlated statistics, simulated: P(steps 1 and 2 both rejected)
    rng = np.random.default_rng(1)
    ses = fs["se_log_rr"].to_numpy()[:2]
    v0 = (1 / 4.0 + 1.2) / 30
    cov = np.array([[ses[0] ** 2, v0], [v0, ses[1] ** 2]])
    b = rng.multivariate_normal(np.log(rr[:2]), cov, 100_000)
    hit = np.mean(np.all(b / ses < -stats.norm.isf(0.025), axis=1))
    assert fs["power"].iloc[1] == pytest.approx(hit, abs=3 * np.sqrt(hit * (1 - hit) / 100_000) + 1e-4)


def test_assurance_limits_and_quadrature() -> None:
    se = wald_se_log_rr(5.0, 3.0, 25, dispersion=1.5)
    ok = success_power(np.log(0.6), se, 0.05)
    assert ok == pytest.approx(planned_power(5.0, [0.6], 25, dispersion=1.5)["power"].iloc[0] - stats.norm.cdf(-1.959964 + np.log(0.6) / se), abs=1e-6)
    assert planned_assurance(5.0, np.log(0.6), 1e-6, 25, dispersion=1.5) == pytest.approx(ok, abs=1e-6)
    assert planned_assurance(5.0, np.log(0.6), 0.0, 25, dispersion=1.5) == pytest.approx(ok, rel=1e-12)
    # against a Monte Carlo average of the success power over the prior (vectorised here)
    rng = np.random.default_rng(2)
    draws = rng.normal(np.log(0.6), 0.3, 20_000)
    ses = np.sqrt((1 / 5.0 + 1 / (5.0 * np.exp(draws)) + 3.0) / 25)
    mc = stats.norm.cdf(-stats.norm.isf(0.025) - draws / ses)
    assert planned_assurance(5.0, np.log(0.6), 0.3, 25, dispersion=1.5) == pytest.approx(mc.mean(), abs=3 * mc.std() / np.sqrt(len(mc)))
    # the prior pulls a high power down and a low one up; its mass on harm caps assurance
    hi = planned_power(5.0, [0.6], 200, dispersion=1.5)["power"].iloc[0]
    assert planned_assurance(5.0, np.log(0.6), 0.3, 200, dispersion=1.5) < hi
    assert planned_assurance(5.0, np.log(0.6), 0.3, 10, dispersion=1.5) > success_power(np.log(0.6), wald_se_log_rr(5.0, 3.0, 10, dispersion=1.5), 0.05)
    assert planned_assurance(5.0, np.log(0.6), 0.5, 1e10, dispersion=1.5) == pytest.approx(stats.norm.cdf(-np.log(0.6) / 0.5), abs=1e-4)
    assert assurance(lambda l: 1.0, 0.0, 2.0) == pytest.approx(1.0, abs=1e-12)


def test_sample_size_reaches_target_and_assurance_needs_more() -> None:
    n = planned_sample_size(5.0, 0.6, target=0.8, dispersion=1.5, k=3, procedure="holm")
    assert planned_power(5.0, [0.6] * 3, n, dispersion=1.5, procedure="holm")["power"].iloc[0] == pytest.approx(0.8, abs=1e-4)
    assert n > planned_sample_size(5.0, 0.6, target=0.8, dispersion=1.5)
    assert planned_sample_size(5.0, 0.6, target=0.8, dispersion=1.5, sd_log_rr=0.2) > planned_sample_size(5.0, 0.6, target=0.8, dispersion=1.5)
    assert np.isnan(planned_sample_size(5.0, 0.9, target=0.8, dispersion=1.5, sd_log_rr=1.0))  # prior mass beyond reach


def test_simulated_wald_power_agrees_with_analytic() -> None:
    sims = 300
    p, se = simulated_power(5.0, 0.6, 40, test="wald", dispersion=1.0, sims=sims, seed=3)
    ana = planned_power(5.0, [0.6], 40, dispersion=1.0, procedure="none")["power"].iloc[0]
    assert p == pytest.approx(ana, abs=3 * np.sqrt(ana * (1 - ana) / sims))
    q, _ = simulated_power(5.0, 0.5, 20, test="permutation", dispersion=1.0, sims=60, seed=3, n_permutations=99)
    assert 0 < q <= 1
