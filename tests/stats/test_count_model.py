"""NB2 regression: agreement with R's MASS::glm.nb, recovery of the simulated truth, and bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import fit_count_model, fit_lesion_free

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(Path(__file__).parent))
import r_parity  # noqa: E402


def _r_term(term: str) -> str:
    return "Intercept" if term == "(Intercept)" else term[3:] if term.startswith("arm") else term


def _compare(ref: pd.DataFrame, data: pd.DataFrame) -> None:
    for formula, r in ref.groupby("formula", sort=False):
        fit = fit_count_model(data, formula, offset_years="followup_years", reference="placebo")
        assert fit.converged
        assert fit.alpha == pytest.approx(1.0 / r["theta"].iloc[0], rel=1e-5)
        mine = fit.table.set_index("term")
        for row in r.itertuples():
            term = _r_term(row.term)
            if term == "Intercept":
                continue
            assert np.exp(mine.loc[term, "coef"]) == pytest.approx(np.exp(row.coef), rel=1e-5), (formula, term)
            assert mine.loc[term, "coef"] == pytest.approx(row.coef, rel=1e-5, abs=1e-8), (formula, term)
            # expected-information standard errors are R's
            assert mine.loc[term, "se"] == pytest.approx(row.se, rel=1e-4), (formula, term)


def test_agrees_with_r_glm_nb_stored_reference() -> None:
    """Against R 4.2.2 / MASS 7.3-58.2 output stored in tests/stats/data/nb_trial_r.csv (made by
    make_r_reference.R): rate ratios and coefficients to 1e-5 relative, SEs to 1e-4."""
    _compare(pd.read_csv(DATA / "nb_trial_r.csv"), pd.read_csv(DATA / "nb_trial.csv"))


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R (Rscript with MASS) is not installed here")
def test_agrees_with_r_glm_nb_live(tmp_path: Path) -> None:
    """The stored comparison with R run now, on a fresh data set (installs: r-base-core r-cran-mass)."""
    rng = np.random.default_rng(12)
    n = 300
    d = pd.DataFrame({"arm": rng.choice(["placebo", "a", "b"], n), "age": rng.normal(37, 9, n).round(1),
                      "gd_count": rng.poisson(1.0, n), "t2_volume_mm3": rng.lognormal(7, 0.5, n).round(1),
                      "followup_years": rng.uniform(0.85, 1.0, n).round(5)})
    mu = 6 * np.select([d.arm == "a", d.arm == "b"], [0.6, 0.2], 1.0) * d.followup_years * np.exp(0.3 * d.gd_count)
    d["net2"] = rng.poisson(mu * rng.gamma(1.5, 1 / 1.5, n))
    d["patient_id"] = [f"P{i}" for i in range(n)]
    d.to_csv(tmp_path / "d.csv", index=False)
    out = subprocess.run(["Rscript", str(DATA / "make_r_reference.R"), str(tmp_path / "d.csv")], capture_output=True, text=True, check=True)
    (tmp_path / "r.csv").write_text(out.stdout)
    _compare(pd.read_csv(tmp_path / "r.csv"), d)


def _z(p: float) -> float:
    return float(stats.norm.isf(p / 2))


@pytest.mark.skipif(not r_parity.r_available(), reason="R (Rscript with MASS) is not installed here; CI installs r-base-core r-cran-mass")
def test_mle_matches_r_glm_nb_on_a_sweep_and_r_datasets(tmp_path: Path) -> None:
    """1e-6 relative parity with MASS::glm.nb(control = glm.control(epsilon = 1e-12, maxit = 500)) on 40
    random NB2 trials (2-4 arms, n 20-400, theta 0.3-50, Poisson data, arms without events; each with
    and without a covariate) and on R's MASS::epil (per-patient totals, offset log(8 weeks),
    log(base/4) + age), MASS::quine and MASS::Insurance (offset log(Holders)).

    Compared: every estimable rate ratio and coefficient, SE and p-value (on the z scale: a p of 1e-20
    amplifies a 1e-7 SE difference 100-fold), theta where interior; our log-likelihood is never below
    R's. Where our maximum is at the Poisson boundary (alpha = 0) the reference is R's Poisson GLM
    (glm.nb then either stops with an error or drifts to a huge theta). theta is compared to 1e-6
    relative or, on flat profiles, within 1e-6 of its own standard error on the log scale
    (R's stopping rule leaves it less precise there: our gradient is ~1e-14, R's ~1e-10)."""
    ds = r_parity.export_r_datasets(tmp_path)
    jobs, cases = [], []
    for tid, d in r_parity.sweep_trials():
        path = tmp_path / f"{tid}.csv"
        d.to_csv(path, index=False)
        for f in ("net2 ~ arm", "net2 ~ arm + x"):
            jobs.append((f"{tid}:{f}", path, f + " + offset(log(followup_years))", "arm", "placebo"))
            cases.append((f"{tid}:{f}", d, f, "followup_years", "arm", "placebo"))
    for name, f, off, arm_col, ref, r_formula in r_parity.R_DATASET_MODELS:
        jobs.append((name, tmp_path / f"{name}.csv", r_formula, arm_col, ref))
        cases.append((name, ds[name], f, off, arm_col, ref))
    R = r_parity.run_r(jobs, tmp_path)
    worst = 0.0
    n_boundary = n_zero = 0
    for jid, d, f, off, arm_col, ref in cases:
        fit = fit_count_model(d, f, offset_years=off, reference=ref, arm_col=arm_col)
        assert fit.converged, jid
        rj = R[R["id"] == jid]
        model = "poisson" if fit.boundary else "glm.nb"
        r = rj[rj["model"] == model].set_index("term")
        assert (r["status"] == "ok").all(), (jid, model)
        assert fit.llf >= r["loglik"].iloc[0] - 1e-9 * abs(fit.llf), jid
        n_boundary += fit.boundary
        if not fit.boundary:
            theta, r_theta = 1 / fit.alpha, r["theta"].iloc[0]
            se_log_theta = fit.alpha_se / fit.alpha
            assert abs(np.log(theta / r_theta)) <= 1e-6 * max(1.0, se_log_theta), (jid, theta, r_theta)
        levels = set(d[arm_col].astype(str))
        for row in fit.table.itertuples():
            rr = r.loc[r_parity.r_name(row.term, arm_col, levels)]
            if not row.estimable and "no events" in row.note:
                n_zero += 1  # MLE at -inf: R and we stop wherever the gradient vanishes; flagged, not compared
                continue
            errs = [abs(row.rate_ratio / np.exp(rr["coef"]) - 1), abs(row.coef - rr["coef"]) / max(abs(rr["coef"]), 1e-3),
                    abs(row.se / rr["se"] - 1), abs(_z(row.p_value) / _z(rr["p_value"]) - 1) if rr["p_value"] < 0.999 else 0.0]
            worst = max(worst, *errs)
            assert max(errs) < 1e-6, (jid, row.term, errs)
    assert n_boundary >= 3 and n_zero >= 3  # the sweep does reach the boundary and arms without events
    print(f"worst relative difference from R: {worst:.2g}")


def test_rate_ratio_recovers_simulated_truth() -> None:
    """400 per arm, RR 0.5, NB2 alpha 1: the 95% CI covers 0.5 (a 5% chance of a false failure is
    avoided by a fixed seed; the coverage itself is checked over many trials in tests/validity/test_observed_validity.py)."""
    rng = np.random.default_rng(3)
    n = 800
    arm = np.repeat(["placebo", "drug"], n // 2)
    years = rng.uniform(0.88, 0.96, n)
    mu = 7.0 * np.where(arm == "drug", 0.5, 1.0) * years
    d = pd.DataFrame({"arm": arm, "followup_years": years, "net2": rng.poisson(mu * rng.gamma(1.0, 1.0, n))})
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo")
    rr = fit.rate_ratio("drug")
    assert rr.ci_low < 0.5 < rr.ci_high and abs(fit.alpha - 1.0) < 0.3
    assert fit.arm_means.set_index("arm").loc["drug", "reduction_pct"] == pytest.approx(100 * (1 - rr.rate_ratio), rel=1e-6)
    obs = fit_count_model(d, "net2 ~ arm", reference="placebo", cov="observed")
    assert obs.rate_ratio("drug").rate_ratio == pytest.approx(rr.rate_ratio, rel=1e-6)
    assert obs.rate_ratio("drug").se == pytest.approx(rr.se, rel=0.05)
    lf = fit_lesion_free(d, reference="placebo")
    row = lf.table.set_index("arm").loc["drug"]
    assert row["odds_ratio"] > 1 and row["hazard_ratio"] < 1 and row["risk_difference"] > 0 and row["estimable"]


def test_bad_input() -> None:
    d = pd.read_csv(DATA / "nb_trial.csv")
    with pytest.raises(InputError, match="unknown column 'edss'"):
        fit_count_model(d, "net2 ~ arm + edss", reference="placebo")
    with pytest.raises(InputError, match="only one arm"):
        fit_count_model(d[d.arm == "placebo"], "net2 ~ arm", reference="placebo")
    with pytest.raises(InputError, match="all counts .* are zero"):
        fit_count_model(d.assign(net2=0), "net2 ~ arm", reference="placebo")
    with pytest.raises(InputError, match="reference arm 'aspirin'"):
        fit_count_model(d, "net2 ~ arm", reference="aspirin")
    with pytest.raises(InputError, match="positive years"):
        fit_count_model(d.assign(followup_years=0.0), "net2 ~ arm", reference="placebo")
    zero_arm = d.copy()
    zero_arm.loc[zero_arm.arm == "ocrelizumab", "net2"] = 0
    fit = fit_count_model(zero_arm, "net2 ~ arm", reference="placebo")
    assert any("no events" in n for n in fit.notes)
    t = fit.table.set_index("term")
    assert not t.loc["ocrelizumab", "estimable"] and "no events" in t.loc["ocrelizumab", "note"]
    assert t.drop(index="ocrelizumab")["estimable"].all()  # the other arms keep their numbers
    assert not fit.arm_means.set_index("arm").loc["ocrelizumab", "estimable"]
    zero_ref = d.copy()
    zero_ref.loc[zero_ref.arm == "placebo", "net2"] = 0
    t = fit_count_model(zero_ref, "net2 ~ arm", reference="placebo").table
    assert not t["estimable"].any() and t["note"].str.contains("reference arm 'placebo' has no events").all()


def test_lean_newton_fitter_matches_statsmodels() -> None:
    """The bootstrap's inner fitter reaches statsmodels' maximum (coefficients to 1e-7, alpha to 1e-6)."""
    import statsmodels.api as sm

    from mseval.stats.count_model import nb2_newton

    d = pd.read_csv(DATA / "nb_trial.csv")
    X = sm.add_constant(pd.get_dummies(d["arm"], drop_first=True, dtype=float).assign(gd=d["gd_count"]).to_numpy())
    off = np.log(d["followup_years"].to_numpy())
    ref = sm.NegativeBinomial(d["net2"].to_numpy(), X, offset=off, loglike_method="nb2").fit(method="newton", disp=0, maxiter=300, tol=1e-12)
    beta, alpha, ok = nb2_newton(d["net2"].to_numpy(float), X, off, np.zeros(X.shape[1]), 1.0)
    assert ok
    assert np.allclose(beta, ref.params[:-1], atol=1e-7) and alpha == pytest.approx(ref.params[-1], rel=1e-6)


def test_robust_se_equals_statsmodels_hc0_sandwich() -> None:
    """cov="robust": the patient-level HC0 sandwich at the fitted alpha equals statsmodels'
    GLM(NegativeBinomial(alpha)) with cov_type="HC0" (same coefficients, SEs to 1e-8 relative),
    and differs from the model-based SE (so the option is not inert)."""
    import statsmodels.api as sm

    d = pd.read_csv(DATA / "nb_trial.csv")
    fit = fit_count_model(d, "net2 ~ arm + gd_count", cov="robust", adjusted_means=False)
    model = fit_count_model(d, "net2 ~ arm + gd_count", adjusted_means=False)
    X = sm.add_constant(pd.get_dummies(d["arm"], drop_first=True, dtype=float).assign(gd=d["gd_count"]))
    ref = sm.GLM(d["net2"].to_numpy(), X, family=sm.families.NegativeBinomial(alpha=fit.alpha),
                 offset=np.log(d["followup_years"].to_numpy())).fit(cov_type="HC0", tol=1e-14)
    assert np.allclose(fit.coef, ref.params.to_numpy(), rtol=1e-6, atol=1e-8)
    assert np.allclose(fit.table["se"].to_numpy(), ref.bse.to_numpy()[1:], rtol=1e-8)
    assert not np.allclose(fit.table["se"].to_numpy(), model.table["se"].to_numpy(), rtol=1e-3)


def test_bootstrap_is_seeded_and_worker_invariant() -> None:
    from mseval.stats.count_model import bootstrap_rate_ratios

    d = pd.read_csv(DATA / "nb_trial.csv")
    one = bootstrap_rate_ratios(d, "net2 ~ arm", reference="placebo", n_resamples=300, seed=4)
    two = bootstrap_rate_ratios(d, "net2 ~ arm", reference="placebo", n_resamples=300, seed=4, workers=2)
    pd.testing.assert_frame_equal(one.table, two.table)
    wald = fit_count_model(d, "net2 ~ arm", reference="placebo").table.set_index("term")
    t = one.table.set_index("term")
    assert one.failed == 0 and np.allclose(t["rate_ratio"], wald.loc[t.index, "rate_ratio"], rtol=1e-6)
    # bootstrap and Wald SEs of the log rate ratio agree to within the bootstrap's own noise
    # (relative SE of an SD estimate from 300 replicates ~ 1/sqrt(2 x 299) = 4%; allow 25%)
    assert np.allclose(t["se_log"], wald.loc[t.index, "se"], rtol=0.25)


def _poisson_trial(seed: int, n: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.repeat(["placebo", "a", "b"], n // 3)
    years = rng.uniform(0.8, 1.0, n)
    mu = 4.0 * np.select([arm == "a", arm == "b"], [0.6, 0.4], 1.0) * years
    return pd.DataFrame({"arm": arm, "followup_years": years, "net2": rng.poisson(mu), "patient_id": [f"P{i}" for i in range(n)]})


def test_poisson_boundary_is_reported_and_json_has_no_nan(tmp_path: Path) -> None:
    """Under-dispersed-looking Poisson data: the MLE is alpha = 0 exactly (the score for alpha at the
    Poisson fit is negative), reported with a note; model.json is strict JSON (theta, alpha_se null)."""
    import json

    import statsmodels.api as sm

    from mseval.effects import run_nbreg

    d = _poisson_trial(1)
    mu = sm.GLM(d["net2"], sm.add_constant(pd.get_dummies(d["arm"], drop_first=True, dtype=float)), family=sm.families.Poisson(),
                offset=np.log(d["followup_years"])).fit().fittedvalues
    assert ((d["net2"] - mu) ** 2 - d["net2"]).sum() < 0  # the data are at the boundary
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo")
    assert fit.boundary and fit.alpha == 0.0 and fit.converged and any("Poisson boundary" in n for n in fit.notes)
    pois = sm.GLM(d["net2"], sm.add_constant((d["arm"] == "a").astype(float).to_frame("a").assign(b=(d["arm"] == "b").astype(float))),
                  family=sm.families.Poisson(), offset=np.log(d["followup_years"])).fit(tol=1e-12)
    assert fit.rate_ratio("a").coef == pytest.approx(pois.params["a"], rel=1e-8)
    d.to_csv(tmp_path / "d.csv", index=False)
    run_nbreg(tmp_path / "d.csv", tmp_path / "out", formula="net2 ~ arm", offset_years="followup_years", reference="placebo")
    text = (tmp_path / "out" / "model.json").read_text()
    info = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert info["theta"] is None and info["alpha"] == 0.0 and any("null" in n for n in info["notes"])
    rr = pd.read_csv(tmp_path / "out" / "rate_ratios.csv")
    assert {"estimable", "note"} <= set(rr.columns) and rr["estimable"].all()


def test_dropped_rows_are_counted_and_named() -> None:
    d = pd.read_csv(DATA / "nb_trial.csv").head(30).copy()
    d["patient_id"] = [f"P{i:02d}" for i in range(30)]
    d.loc[[3, 7, 9], "age"] = np.nan
    fit = fit_count_model(d, "net2 ~ arm + age", reference="placebo")
    assert fit.n == 27 and fit.n_dropped == 3 and fit.dropped_rows == [4, 8, 10]
    assert any("3 of 30 rows dropped" in n and "P03" in n and "age: 3" in n for n in fit.notes)
    assert "P07" in fit.summary() and fit.model_info()["n_dropped"] == 3


def test_bootstrap_keeps_boundary_replicates_and_isolates_a_degenerate_arm() -> None:
    """Poisson data: replicates at alpha = 0 are valid and kept (none dropped). An arm without any
    event: its term fails in every replicate (counted, flagged) while the other arms keep their CIs."""
    from mseval.stats.count_model import bootstrap_rate_ratios

    d = _poisson_trial(1)
    b = bootstrap_rate_ratios(d, "net2 ~ arm", reference="placebo", n_resamples=200, seed=2)
    t = b.table.set_index("term")
    assert b.failed == 0 and (t["replicates"] == 200).all() and (t["n_failed"] == 0).all()
    assert t["n_boundary"].iloc[0] > 20 and t["estimable"].all()
    wald = fit_count_model(d, "net2 ~ arm", reference="placebo").table.set_index("term")
    assert np.allclose(t["se_log"], wald.loc[t.index, "se"], rtol=0.25)
    z = d.copy()
    z.loc[z["arm"] == "b", "net2"] = 0
    b = bootstrap_rate_ratios(z, "net2 ~ arm", reference="placebo", n_resamples=200, seed=2)
    t = b.table.set_index("term")
    assert t.loc["b", "n_failed"] == 200 and not t.loc["b", "estimable"] and "no events" in t.loc["b", "note"]
    assert t.loc["a", "estimable"] and t.loc["a", "n_failed"] == 0 and t.loc["a", "ci_low"] < t.loc["a", "rate_ratio"] < t.loc["a", "ci_high"]


def test_converged_only_at_a_verified_optimum() -> None:
    """Stopped after one iteration the fit says so (converged False, a note, every row flagged); run to
    the end its gradient criterion holds, and a warm start anywhere (theta far too small or too large)
    reaches the same maximum."""
    from mseval.stats.count_model import design
    from mseval.stats.nb2_mle import fit_nb2

    d = pd.read_csv(DATA / "nb_trial.csv")
    early = fit_count_model(d, "net2 ~ arm + gd_count", reference="placebo", maxiter=1)
    assert not early.converged and any("did not reach a verified maximum" in n for n in early.notes)
    assert not early.table["estimable"].any()
    full = fit_count_model(d, "net2 ~ arm + gd_count", reference="placebo")
    assert full.converged and full.gradient_decrement < 1e-20
    prep = d.assign(arm=pd.Categorical(d["arm"], categories=["placebo", *sorted(set(d["arm"]) - {"placebo"})]))
    y, X, _ = design("net2 ~ arm + gd_count", prep)
    off = np.log(d["followup_years"].to_numpy())
    for alpha0 in (1e-6, 50.0):
        r = fit_nb2(y, X, off, beta0=np.zeros(X.shape[1]), alpha0=alpha0)
        assert r.converged and r.alpha == pytest.approx(full.alpha, rel=1e-8) and r.llf == pytest.approx(full.llf, rel=1e-12)
