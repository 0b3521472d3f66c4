"""Forecast rate ratios at demo scale (6 arms x 8 patients, S in {2, 20}, 20 seeds, oracle forecasts):
no sample can corrupt the estimate (issue 22).

Before: an arm without events in one sample "converged" near -52, was averaged in and became the
warm start of the next sample, which could not recover; later samples were dropped and another arm
read 0.71 against 0.385 from the valid fits. Now one stacked NB2 fit over all samples (mseval.stats.
synthetic): every estimable term lies within its own CI of the mean of the valid cold per-sample
fits, and event-free arm-samples are counted per term."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.design import design_matrix
from mseval.stats.event_free import event_free_terms
from mseval.stats.nb2_mle import fit_nb2
from mseval.stats.synthetic import MAX_FAILED_SHARE, fit_forecast_rate_ratios

DEMO = TrialConfig(patients_per_arm=8)  # the demo's six arms
SEEDS = range(20)


def _allocated(tr) -> np.ndarray:  # noqa: ANN001 - a CountTrial
    wide = tr.counts.merge(tr.table[["patient_id", "arm"]], on=["patient_id", "arm"]).pivot(index="patient_id", columns="sample", values="count")
    return wide.loc[tr.table["patient_id"]].to_numpy(float)


@pytest.mark.parametrize("samples", [2, 20])
def test_no_estimable_term_leaves_its_ci_around_the_valid_cold_fits(samples: int) -> None:
    n_terms = n_estimable = n_event_free = 0
    for seed in SEEDS:
        tr = simulate_count_trial(replace(DEMO, seed=seed), samples=samples, forecast_seed=seed)
        fc = fit_forecast_rate_ratios(tr.table, tr.counts, reference=DEMO.reference_arm).table.set_index("term")
        des = design_matrix(tr.table, "arm", reference=DEMO.reference_arm)
        y = _allocated(tr)
        cold = [fit_nb2(y[:, s], des.X, des.offset) for s in range(samples)]  # every fit from scratch
        for j, term in enumerate(des.names[1:], start=1):
            r = fc.loc[term]
            arm_rows = des.X[:, j] == 1
            event_free = int(np.sum(y[arm_rows].sum(axis=0) == 0))
            assert r["event_free_samples"] == event_free, (seed, term)
            if event_free:
                assert f"{event_free} of {samples} samples hold no event" in r["note"], (seed, term)
                n_event_free += 1
            valid = [f.beta[j] for s, f in enumerate(cold) if f.converged and y[arm_rows, s].sum() > 0]
            n_terms += 1
            if not r["estimable"]:
                assert r["note"], (seed, term)
                continue
            n_estimable += 1
            assert valid, (seed, term)
            half = (np.log(r["ci_high"]) - np.log(r["ci_low"])) / 2
            assert abs(r["coef"] - np.mean(valid)) <= half, (seed, term, r["rate_ratio"], np.exp(np.mean(valid)), r["ci_low"], r["ci_high"])
    assert n_estimable >= 0.95 * n_terms  # the stacked fit does not give up where events exist
    if samples == 20:
        assert n_event_free > 0  # the sparse arm (ocrelizumab, RR ~0.07) goes event-free in some samples


def test_the_seed_of_the_issue_is_not_corrupted() -> None:
    """S = 20, seed 2: 18 of 20 warm-started fits were dropped; now none fails and dimethyl fumarate
    reads what the valid cold fits say, not 0.71."""
    tr = simulate_count_trial(replace(DEMO, seed=2), samples=20, forecast_seed=2)
    fit = fit_forecast_rate_ratios(tr.table, tr.counts, reference=DEMO.reference_arm)
    assert fit.failed == 0
    assert fit.table.set_index("term").loc["dmf", "rate_ratio"] < 0.5
    assert fit.sample_table["converged"].all()


def test_warm_start_at_an_infinite_mle_is_retried_cold() -> None:
    """A warm start at an event-free arm's drifted coefficient (-50) cannot recover; the cold retry does."""
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(48), np.repeat(np.eye(6)[:, 1:], 8, axis=0)])
    y = rng.poisson(np.exp(X @ np.array([1.0, -0.4, -0.7, -1.4, -2.0, -0.5])) * rng.gamma(2.0, 0.5, 48)).astype(float)
    y[X[:, 4] == 1] = np.maximum(y[X[:, 4] == 1], 1.0)
    bad_start = np.array([1.1, -0.4, -0.7, -49.7, -3.2, -0.5])
    fit = fit_nb2(y, X, 0.0, beta0=bad_start, alpha0=0.35)
    cold = fit_nb2(y, X, 0.0)
    assert fit.converged and fit.cold_retry
    np.testing.assert_allclose(fit.beta, cold.beta, rtol=1e-8, atol=1e-10)


def test_event_free_arm_is_an_infinite_mle_for_that_term_only() -> None:
    """An arm with no event in any sample: rate ratio 0, not estimable, and the other terms are the
    fit without that arm (the supremum of the likelihood)."""
    tr = simulate_count_trial(replace(DEMO, seed=5), samples=4, forecast_seed=5)
    counts = tr.counts.copy()
    counts.loc[counts["arm"] == "ocrelizumab", "count"] = 0
    fc = fit_forecast_rate_ratios(tr.table, counts, reference=DEMO.reference_arm).table.set_index("term")
    assert fc.loc["ocrelizumab", "rate_ratio"] == 0 and not fc.loc["ocrelizumab", "estimable"]
    assert "infinite MLE" in fc.loc["ocrelizumab", "note"] and fc.loc["ocrelizumab", "event_free_samples"] == 4
    keep = tr.table["arm"] != "ocrelizumab"
    sub = fit_forecast_rate_ratios(tr.table[keep], counts, reference=DEMO.reference_arm).table.set_index("term")
    for term in sub.index:
        assert fc.loc[term, "coef"] == pytest.approx(sub.loc[term, "coef"], rel=1e-7, abs=1e-9)
        assert fc.loc[term, "estimable"] == sub.loc[term, "estimable"]
        assert fc.loc[term, "ci_low"] == pytest.approx(sub.loc[term, "ci_low"], rel=1e-9)  # the randomization interval too
        assert "permutation" in fc.loc[term, "ci_method"]  # 8 per arm: the SAP's rule picks it


def test_event_free_terms_reduce_until_stable() -> None:
    X = np.column_stack([np.ones(6), [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0.5, 1.0, 2.0, 0.1, 0.2, 0.3]])
    red = event_free_terms(np.array([0, 0, 3, 1, 0, 2.0]), X)
    assert red.infinite.tolist() == [False, True, False, False]
    assert red.keep_rows.tolist() == [False, False, True, True, True, True]


def test_a_term_is_not_estimable_when_more_than_5_percent_of_sample_fits_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    import mseval.stats.synthetic as SY

    tr = simulate_count_trial(replace(DEMO, seed=7), samples=20, forecast_seed=7)
    real = SY.fit_nb2
    calls = {"n": 0}

    def flaky(y, X, off, **kw):  # noqa: ANN001, ANN003 - fail the 2nd and 3rd per-sample fits (10% > 5%)
        calls["n"] += 1
        f = real(y, X, off, **kw)
        return replace(f, converged=False) if calls["n"] in (3, 4) else f

    monkeypatch.setattr(SY, "fit_nb2", flaky)
    fit = SY.fit_forecast_rate_ratios(tr.table, tr.counts, reference=DEMO.reference_arm)
    assert fit.failed == 2 > MAX_FAILED_SHARE * 20
    assert not fit.table["estimable"].any()
    assert fit.table["note"].str.contains("2 of 20 per-sample fits failed").all()
    calls["n"] = 0

    def one_bad(y, X, off, **kw):  # noqa: ANN001, ANN003 - one failure in 20 (5%) is tolerated
        calls["n"] += 1
        f = real(y, X, off, **kw)
        return replace(f, converged=False) if calls["n"] == 3 else f

    monkeypatch.setattr(SY, "fit_nb2", one_bad)
    fit = SY.fit_forecast_rate_ratios(tr.table, tr.counts, reference=DEMO.reference_arm)
    assert fit.failed == 1 and fit.table["estimable"].sum() >= 4
    assert fit.table["note"].str.contains("1 of 20 per-sample fits did not converge").all()
