"""Small-sample primary tests (mseval.stats.small_sample): R parity of the LRT, exactness of the
permutation test, the intervals' defining equations, and bad input."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import fit_count_model
from mseval.stats.nb2_mle import fit_nb2
from mseval.stats.small_sample import (_permutations, arm_tests, build_model, primary_tests, recommended_test)
from tests.stats import r_parity

DATA = Path(__file__).parent / "data"
FORMULA = "net2 ~ arm + site + x"


def _trial(n_per_arm: int, seed: int, rr: float = 0.6, arms: tuple[str, ...] = ("placebo", "trt")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_per_arm * len(arms)
    d = pd.DataFrame({"arm": rng.permutation(np.repeat(arms, n_per_arm)), "site": rng.choice(["s1", "s2"], n),
                      "x": rng.normal(0, 1, n), "followup_years": rng.uniform(0.8, 1.0, n)})
    mu = 4.0 * np.where(d["arm"] == arms[0], 1.0, rr) * d["followup_years"] * np.exp(0.4 * d["x"])
    d["net2"] = rng.poisson(mu * rng.gamma(1 / 0.8, 0.8, n))
    return d


def _anova_jobs(trials: pd.DataFrame, folder: Path) -> tuple[list[tuple], list[tuple]]:
    """(R jobs, our cases): per trial and non-reference arm, full 'net2 ~ arm + site + x' vs the arm merged into placebo."""
    jobs, cases = [], []
    for t, d in trials.groupby("trial"):
        d = d.drop(columns="trial").reset_index(drop=True)
        for arm in sorted(set(d["arm"]) - {"placebo"}):
            e = d.assign(arm0=np.where(d["arm"] == arm, "placebo", d["arm"]))
            path = folder / f"t{t}_{arm}.csv"
            e.to_csv(path, index=False)
            off = " + offset(log(followup_years))"
            null_terms = "arm0 + site + x" if e["arm0"].nunique() > 1 else "site + x"
            jobs.append((f"{t}:{arm}", str(path), f"net2 ~ arm + site + x{off}", f"net2 ~ {null_terms}{off}", "arm;arm0", "placebo;placebo"))
            cases.append((f"{t}:{arm}", d, arm))
    return jobs, cases


def _run_r_anova(jobs: list[tuple], folder: Path) -> pd.DataFrame:
    pd.DataFrame(jobs, columns=["id", "data", "full", "null", "factors", "reference"]).to_csv(folder / "jobs.csv", index=False)
    out = subprocess.run(["Rscript", str(DATA / "r_anova_nb.R"), str(folder / "jobs.csv")], check=True, capture_output=True, text=True)
    (folder / "r.csv").write_text(out.stdout)
    return pd.read_csv(folder / "r.csv")


def _compare_lrt(R: pd.DataFrame, cases: list[tuple]) -> int:
    R = R.set_index("id")
    compared = 0
    for cid, d, arm in cases:
        m = build_model(d, FORMULA, "arm", "placebo")
        (row,) = arm_tests(m, arm, ("lrt",), ci=False)
        r = R.loc[cid]
        assert row["statistic"] == pytest.approx(r["lr_stat"], rel=1e-6, abs=1e-6), cid
        # p on the z scale (a tiny p amplifies a 1e-8 statistic difference)
        assert stats.norm.isf(row["p_value"] / 2) == pytest.approx(stats.norm.isf(r["p_value"] / 2), rel=1e-6, abs=1e-6), cid
        assert row["df"] == r["df"] == 1
        compared += 1
    return compared


def test_lrt_equals_r_anova_stored_reference(tmp_path: Path) -> None:
    """Against R 4.2.2 / MASS anova(m0, m1) on glm.nb fits stored in tests/stats/data/nb_anova_r.csv
    (4 trials, 2 and 3 arms, site + covariate + offset; made by r_anova_nb.R): statistic and p to 1e-6."""
    trials = pd.read_csv(DATA / "nb_anova_trials.csv")
    _, cases = _anova_jobs(trials, tmp_path)  # the job files are written but not read here
    assert _compare_lrt(pd.read_csv(DATA / "nb_anova_r.csv"), cases) == 6


@pytest.mark.skipif(not r_parity.r_available(), reason="R (Rscript with MASS) is not installed here; CI installs r-base-core r-cran-mass")
def test_lrt_equals_r_anova_live(tmp_path: Path) -> None:
    """The stored comparison run now, and on fresh small trials (8 and 20 per arm, 2 and 3 arms)."""
    fresh = [_trial(8, 5).assign(trial=10), _trial(20, 6).assign(trial=11), _trial(12, 7, arms=("placebo", "a", "b")).assign(trial=12)]
    trials = pd.concat([pd.read_csv(DATA / "nb_anova_trials.csv"), *fresh], ignore_index=True)
    jobs, cases = _anova_jobs(trials, tmp_path)
    assert _compare_lrt(_run_r_anova(jobs, tmp_path), cases) == len(cases) == 10


def test_wald_and_t_share_the_count_model_fit() -> None:
    d = _trial(10, 1)
    fit = fit_count_model(d, FORMULA, reference="placebo").rate_ratio("trt")
    w = primary_tests(d, FORMULA, "arm", "placebo", method="wald").table.iloc[0]
    t = primary_tests(d, FORMULA, "arm", "placebo", method="t").table.iloc[0]
    assert w["p_value"] == pytest.approx(fit["p_value"], rel=1e-9)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((fit["ci_low"], fit["ci_high"]), rel=1e-9)
    assert t["statistic"] == pytest.approx(w["statistic"], rel=1e-12)
    assert t["df"] == 20 - 4  # n - k: intercept, arm, site s2, x
    assert t["p_value"] > w["p_value"] and t["ci_low"] < w["ci_low"] and t["ci_high"] > w["ci_high"]


@pytest.mark.parametrize("method", ["lrt", "lrt_f"])
def test_profile_interval_solves_its_equation(method: str) -> None:
    """At each bound b the profile deviance 2 (l1 - l_p(b)) equals the method's critical value."""
    d = _trial(10, 2)
    m = build_model(d, FORMULA, "arm", "placebo")
    r = primary_tests(d, FORMULA, "arm", "placebo", method=method).table.iloc[0]
    j = m.arm_cols["trt"]
    Xr, x = np.delete(m.X, j, axis=1), m.X[:, j]
    l1 = fit_nb2(m.y, m.X, m.off).llf
    n, k = m.X.shape
    crit = stats.chi2.ppf(0.95, 1) if method == "lrt" else stats.f.ppf(0.95, 1, n - k)
    for bound in (r["ci_low"], r["ci_high"]):
        lp = fit_nb2(m.y, Xr, m.off + np.log(bound) * x).llf
        assert 2 * (l1 - lp) == pytest.approx(crit, abs=1e-6)
    assert r["ci_low"] < r["rate_ratio"] < r["ci_high"]
    assert (r["p_value"] <= 0.05) == (r["ci_high"] < 1 or r["ci_low"] > 1)


def test_permutation_test_is_exact_under_the_sharp_null() -> None:
    """Counts fixed, labels re-randomized 250 times (the sharp null holds by construction): the
    permutation test rejects at most 5% + 3 binomial SE; the model-based Wald test is not held to it."""
    d = _trial(6, 3, rr=1.0)
    m = build_model(d, FORMULA, "arm", "placebo")
    j = m.arm_cols["trt"]
    rng = np.random.default_rng(0)
    rej = 0
    reps = 250
    for r in range(reps):
        arm = rng.permutation(m.arm)
        X = m.X.copy()
        X[:, j] = arm == "trt"
        (row,) = arm_tests(replace(m, X=X, arm=arm), "trt", ("permutation",), seed=r, n_permutations=99, ci=False)
        rej += row["p_value"] <= 0.05
    assert rej / reps <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps)


def test_permutation_reproducible_and_ci_matches_the_test() -> None:
    for seed in (4, 8, 9):
        d = _trial(10, seed, rr=0.4)
        a = primary_tests(d, FORMULA, "arm", "placebo", method="permutation", seed=1, n_permutations=499).table.iloc[0]
        b = primary_tests(d, FORMULA, "arm", "placebo", method="permutation", seed=1, n_permutations=499).table.iloc[0]
        assert a["p_value"] == b["p_value"] and a["ci_low"] == b["ci_low"]
        assert 1 / 500 <= a["p_value"] <= 1
        assert a["ci_low"] < a["rate_ratio"] < a["ci_high"]
        assert (a["p_value"] <= 0.05) == (a["ci_high"] < 1 or a["ci_low"] > 1), seed


def test_permutations_keep_arm_counts_within_strata() -> None:
    rng = np.random.default_rng(0)
    strata = np.repeat([0, 1, 2], 6)
    d = np.tile([1, 1, 0, 0, 0, 0], 3).astype(float)
    pool = np.ones(18, bool)
    pool[5] = False  # a patient of another arm: never moved
    D = _permutations(d, pool, strata, 50, rng)
    for s in range(3):
        assert np.all(D[:, strata == s].sum(axis=1) == d[strata == s].sum())
    assert np.all(D[:, 5] == d[5])
    assert len({tuple(r) for r in D}) > 10


def test_three_arms_one_row_each_and_summary() -> None:
    d = _trial(8, 11, arms=("placebo", "a", "b"))
    res = primary_tests(d, FORMULA, "arm", "placebo", method="lrt")
    assert list(res.table["arm"]) == ["a", "b"]
    assert set(res.table.columns) >= {"arm", "statistic", "df", "p_value", "method", "estimable", "note", "null_hypothesis"}
    assert "lrt" in res.summary() and res.to_frame() is res.table


def test_recommended_rule_and_auto() -> None:
    assert recommended_test(8) == recommended_test(29) == recommended_test(100) == recommended_test(999) == "permutation"
    assert recommended_test(1000) == "wald"
    small = primary_tests(_trial(8, 1), FORMULA, "arm", "placebo", method="auto", n_permutations=99)
    assert small.method == "permutation" and "8 patients" in small.notes[0]
    assert primary_tests(_trial(30, 1), FORMULA, "arm", "placebo", method="auto", n_permutations=99).method == "permutation"  # rule R10
    assert primary_tests(_trial(1000, 1), FORMULA, "arm", "placebo", method="auto").method == "wald"


@pytest.mark.parametrize("kw, field", [({"method": "score"}, "small_sample_test"), ({"formula": "net2 ~ arm * x"}, "formula"),
                                       ({"formula": "net2 ~ x"}, "formula"), ({"offset_col": "years"}, "years"),
                                       ({"strata": "centre"}, "centre")])
def test_bad_input_names_the_field(kw: dict, field: str) -> None:
    d = _trial(6, 0)
    args = {"formula": FORMULA, "method": "wald", **kw}
    with pytest.raises(InputError) as e:
        primary_tests(d, args.pop("formula"), "arm", "placebo", **args)
    assert e.value.field == field


def test_bootstrap_t_studentizes_refits_within_arms_and_is_seeded() -> None:
    """The bootstrap-t interval: same seed, same numbers; a larger spread of the resampled t (a heavier-tailed
    arm than the NB2 law says) widens it beyond Wald; the estimate is the MLE's; p tests beta = 0."""
    d = _trial(30, 4)
    a = primary_tests(d, FORMULA, "arm", "placebo", method="bootstrap_t", seed=3, n_bootstrap=199).table.iloc[0]
    again = primary_tests(d, FORMULA, "arm", "placebo", method="bootstrap_t", seed=3, n_bootstrap=199).table.iloc[0]
    w = primary_tests(d, FORMULA, "arm", "placebo", method="wald").table.iloc[0]
    assert a.equals(again) and a["estimable"] and a["ci_method"].startswith("studentized bootstrap")
    assert a["rate_ratio"] == pytest.approx(w["rate_ratio"], rel=1e-12)
    assert a["ci_low"] < a["rate_ratio"] < a["ci_high"] and 0 < a["p_value"] <= 1
    # a heavy-tailed treated arm: multiply a few treated counts; the bootstrap-t interval gets wider than Wald's
    heavy = d.copy()
    trt = np.flatnonzero(heavy["arm"].to_numpy() == "trt")[:3]
    heavy.loc[trt, "net2"] = heavy.loc[trt, "net2"] * 8 + 20
    hb = primary_tests(heavy, FORMULA, "arm", "placebo", method="bootstrap_t", seed=3, n_bootstrap=199).table.iloc[0]
    hw = primary_tests(heavy, FORMULA, "arm", "placebo", method="wald").table.iloc[0]
    assert np.log(hb["ci_high"] / hb["ci_low"]) > np.log(hw["ci_high"] / hw["ci_low"])


def test_bootstrap_t_arms_share_one_set_of_resamples() -> None:
    """Three arms: each arm's bootstrap-t interval is b - t*_(q) se from the column of ONE (B, k) replicate matrix
    (one refit per resample for all contrasts), and resampling stays within arms (every replicate refits)."""
    from mseval.stats.nb2_mle import fit_nb2
    from mseval.stats.small_sample import _sandwich_se, bootstrap_t_replicates, build_model

    d = _trial(25, 11, arms=("placebo", "a", "b"))
    res = primary_tests(d, "net2 ~ arm", "arm", "placebo", method="bootstrap_t", seed=5, n_bootstrap=99).table.set_index("arm")
    model = build_model(d, "net2 ~ arm", "arm", "placebo")
    full = fit_nb2(model.y, model.X, model.off)
    boot = bootstrap_t_replicates(model, "common", 99, 5, full)
    assert boot.shape == (99, 3) and np.isfinite(boot).all()
    for arm, j in model.arm_cols.items():
        se = _sandwich_se(model.y, model.X, model.off, full.beta, full.alpha, j)
        lo_q, hi_q = np.quantile(boot[:, j], [0.025, 0.975])
        assert res.loc[arm, "ci_low"] == pytest.approx(np.exp(full.beta[j] - hi_q * se), rel=1e-12)
        assert res.loc[arm, "ci_high"] == pytest.approx(np.exp(full.beta[j] - lo_q * se), rel=1e-12)
    # another seed, other resamples
    assert not np.allclose(bootstrap_t_replicates(model, "common", 99, 6, full), boot)
