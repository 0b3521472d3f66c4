"""NB2 with a dispersion per arm (mseval.stats.nb2_by_arm, `fit_count_model(dispersion="by_arm")`):
parity with R's glmmTMB(dispformula = ~ arm, family = nbinom2), live where R has glmmTMB and against a
stored reference elsewhere; recovery of per-arm dispersions; the common model as its special case."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.stats.count_model import design, fit_count_model
from mseval.stats.nb2_by_arm import fit_nb2_by_arm
from mseval.stats.nb2_mle import fit_nb2

DATA = Path(__file__).parent / "data"
R_SCRIPT = DATA / "r_glmmtmb.R"
ARMS = ["placebo", "a", "b", "c", "d", "e"]


def by_arm_trials(seed: int, n_trials: int = 8) -> pd.DataFrame:
    """Random trials (id column): 2-6 arms, 20-60 patients per arm, a per-arm theta log-uniform on [0.3, 5]
    (interior maxima: with larger theta or fewer patients an arm often has its maximum at alpha = 0, where
    glmmTMB stops at some large phi and reports no log-likelihood),
    a covariate x, follow-up 0.5-2 years; counts NB2 given the arm's rate ratio and theta."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_trials):
        m = int(rng.integers(2, 7))
        per = int(rng.integers(20, 61))
        arm = np.repeat(ARMS[:m], per)
        n = len(arm)
        rr = dict(zip(ARMS[:m], [1.0, *np.exp(rng.normal(-0.8, 0.6, m - 1))]))
        theta = dict(zip(ARMS[:m], np.exp(rng.uniform(np.log(0.3), np.log(5.0), m))))
        x = rng.normal(0, 1, n).round(3)
        years = rng.uniform(0.5, 2.0, n).round(4)
        mu = rng.uniform(1.0, 8.0) * np.array([rr[a] for a in arm]) * years * np.exp(0.3 * x)
        th = np.array([theta[a] for a in arm])
        y = rng.poisson(mu * rng.gamma(th, 1.0 / th))
        out.append(pd.DataFrame({"id": f"t{seed}_{t:02d}", "arm": arm, "x": x, "followup_years": years, "net2": y}))
    return pd.concat(out, ignore_index=True)


def r_glmmtmb_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    return subprocess.run(["Rscript", "-e", "quit(status = !requireNamespace('glmmTMB', quietly = TRUE))"], capture_output=True).returncode == 0


def run_glmmtmb(trials: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """One Rscript call: glmmTMB(net2 ~ arm + x + offset(log(followup_years)), dispformula = ~ arm, nbinom2) per trial."""
    jobs = []
    for tid, d in trials.groupby("id", sort=False):
        path = folder / f"{tid}.csv"
        d.drop(columns="id").to_csv(path, index=False)
        jobs.append((tid, str(path), "net2 ~ arm + x + offset(log(followup_years))"))
    pd.DataFrame(jobs, columns=["id", "data", "formula"]).to_csv(folder / "jobs.csv", index=False)
    out = subprocess.run(["Rscript", str(R_SCRIPT), str(folder / "jobs.csv")], check=True, capture_output=True, text=True)
    (folder / "r.csv").write_text(out.stdout)
    return pd.read_csv(folder / "r.csv")


def compare(trials: pd.DataFrame, ref: pd.DataFrame, fit_kind: str) -> dict[str, float]:
    """Assert parity per trial against R's rows of `fit_kind` ("glmmTMB" or "newton", r_glmmtmb.R); return
    the largest relative differences seen.

    Tolerances. glmmTMB's optimiser (nlminb) stops where the largest |gradient| of its log-likelihood is g_R
    (4e-6 to 1.5e-3 on the stored trials, whatever rel.tol is asked), our fit where the Newton decrement is
    < 1e-20: R's point is off the maximum by about V g (first order), so each parameter (beta, log theta)
    must agree within sum_j |V_ij| g_R (a factor 2 for the second-order term) plus 1e-9. The SEs are
    evaluated at the two points and differ by O(|V g|) relative: 1e-5 (seen: 4.8e-6). "newton": glmmTMB's
    own objective polished to g_R < 1e-9, so the bound is ~1e-9 absolute; its SEs come from
    `TMB::sdreport`, whose Hessian is a finite difference of the AD gradient (relative error ~1e-7): 1e-6."""
    worst = {"coef": 0.0, "se": 0.0, "log_theta": 0.0, "boundary_trials": 0}
    ref = ref[ref["fit"] == fit_kind]
    se_rel = 1e-5 if fit_kind == "glmmTMB" else 1e-6
    for tid, d in trials.groupby("id", sort=False):
        r = ref[ref["id"] == tid]
        d = d.drop(columns="id").assign(arm=lambda z: pd.Categorical(z["arm"], categories=[a for a in ARMS if a in set(z["arm"])]))
        y, X, info = design("net2 ~ arm + x", d)
        fit = fit_nb2_by_arm(y, X, d["arm"].cat.codes.to_numpy(), np.log(d["followup_years"].to_numpy()))
        assert fit.converged, tid
        cond, disp = r[r["part"] == "cond"], r[r["part"] == "disp"]
        if fit.poisson_groups.any():  # an arm's maximum at alpha = 0: glmmTMB's phi runs off (> 1e3), nothing more to compare
            dc = disp["coef"].to_numpy()
            assert np.all(np.concatenate([[dc[0]], dc[0] + dc[1:]])[fit.poisson_groups] > np.log(1e3)), tid
            worst["boundary_trials"] += 1
            continue
        V, ok = fit.covariance()
        assert ok
        k = X.shape[1]
        g_r = float(r["max_gradient"].iloc[0])
        bound = 2.0 * np.abs(V).sum(axis=1) * g_r + 1e-9
        assert len(cond) == k and len(disp) == len(d["arm"].cat.categories)
        se = np.sqrt(np.diag(V))
        assert np.all(np.abs(cond["coef"].to_numpy() - fit.beta) <= bound[:k]), tid
        assert cond["se"].to_numpy() == pytest.approx(se[:k], rel=se_rel), tid
        # glmmTMB's dispersion coefficients: log phi_ref, log phi_g - log phi_ref (phi = theta = 1 / alpha)
        dc = disp["coef"].to_numpy()
        log_theta_r = np.concatenate([[dc[0]], dc[0] + dc[1:]])
        log_theta = -np.log(fit.alpha)
        assert np.all(np.abs(log_theta_r - log_theta) <= bound[k] + bound[k:].max()), tid
        # the intercept's SE is gamma_ref's: var(log phi_ref) = var(gamma_ref)
        assert disp["se"].iloc[0] == pytest.approx(fit.gamma_se()[0], rel=se_rel), tid
        assert fit.llf >= float(r["loglik"].iloc[0]) - 1e-9 * abs(fit.llf), tid
        worst["coef"] = max(worst["coef"], float(np.max(np.abs(cond["coef"].to_numpy() - fit.beta) / np.abs(fit.beta))))
        worst["se"] = max(worst["se"], float(np.max(np.abs(cond["se"].to_numpy() - se[:k]) / se[:k])))
        worst["log_theta"] = max(worst["log_theta"], float(np.max(np.abs(log_theta_r - log_theta) / np.abs(log_theta))))
    return worst


def test_agrees_with_glmmtmb_stored_reference() -> None:
    """Against glmmTMB 1.1.5 (R 4.2.2, TMB 1.9.2) output stored in tests/stats/data/nb_by_arm_r.csv for the 8
    trials in nb_by_arm_trials.csv (`by_arm_trials(2026)`: 2-6 arms, 40-360 patients), with the
    tolerances of `compare`. At glmmTMB's polished maximum: coefficients to 1e-8 relative, SEs to 1e-6."""
    trials = pd.read_csv(DATA / "nb_by_arm_trials.csv")
    ref = pd.read_csv(DATA / "nb_by_arm_r.csv")
    compare(trials, ref, "glmmTMB")
    worst = compare(trials, ref, "newton")
    assert worst["coef"] < 1e-8 and worst["log_theta"] < 1e-8 and worst["se"] < 1e-6 and worst["boundary_trials"] == 0


@pytest.mark.skipif(not r_glmmtmb_available(), reason="R with glmmTMB is not installed here; CI installs r-cran-glmmtmb")
def test_agrees_with_glmmtmb_live(tmp_path: Path) -> None:
    """The same comparison with glmmTMB run now on fresh random trials."""
    trials = by_arm_trials(31, n_trials=6)
    ref = run_glmmtmb(trials, tmp_path)
    compare(trials, ref, "glmmTMB")
    worst = compare(trials, ref, "newton")
    assert worst["coef"] < 1e-8 and worst["se"] < 1e-6
    assert worst["boundary_trials"] <= 2  # at least 4 of 6 trials compared in full


def test_recovers_each_arms_dispersion() -> None:
    """10,000 patients per arm, alpha 0.2 / 1.0 / 2.5: each estimate within 4 of its SEs (a 4-sigma
    band: a false failure has probability < 1e-4 per arm); the common fit's alpha lies between them."""
    rng = np.random.default_rng(5)
    alphas = {"placebo": 0.2, "a": 1.0, "b": 2.5}
    arm = np.repeat(list(alphas), 10_000)
    a = np.array([alphas[x] for x in arm])
    y = rng.poisson(3.0 * rng.gamma(1.0 / a, a))
    d = pd.DataFrame({"arm": arm, "net2": y, "followup_years": 1.0})
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo", dispersion="by_arm", cov="observed")
    t = fit.alpha_by_arm.set_index("arm")
    for arm_name, true in alphas.items():
        assert abs(t.loc[arm_name, "alpha"] - true) < 4 * t.loc[arm_name, "alpha_se"], arm_name
    common = fit_count_model(d, "net2 ~ arm", reference="placebo")
    assert 0.2 < common.alpha < 2.5
    # the SE of arm b's log RR: sqrt((1/mu + alpha_b + 1/mu + alpha_placebo) / 10,000) = 0.01835 by arm (mu = 3);
    # within 3% (alpha_b's own SE is 1.5% of the variance); one common alpha (about 1.2) understates it by ~5%
    true_se = np.sqrt((2 / 3 + 2.5 + 0.2) / 10_000)
    assert fit.rate_ratio("b")["se"] == pytest.approx(true_se, rel=0.03)
    assert common.rate_ratio("b")["se"] < 0.97 * fit.rate_ratio("b")["se"]


def test_equal_dispersions_reach_the_common_likelihood_or_more() -> None:
    """The common model is the by-arm model with equal gammas: the by-arm maximum is never below it, and
    with one arm's data (a single group) the two fits coincide to rounding."""
    trials = by_arm_trials(7, n_trials=4)
    for _, d in trials.groupby("id"):
        d = d.assign(arm=pd.Categorical(d["arm"], categories=[a for a in ARMS if a in set(d["arm"])]))
        y, X, _ = design("net2 ~ arm + x", d)
        off = np.log(d["followup_years"].to_numpy())
        by, common = fit_nb2_by_arm(y, X, d["arm"].cat.codes.to_numpy(), off), fit_nb2(y, X, off)
        assert by.llf >= common.llf - 1e-9 * abs(common.llf)
        one = fit_nb2_by_arm(y, X, np.zeros(len(y), dtype=int), off)
        assert one.llf == pytest.approx(common.llf, rel=1e-12)
        assert one.beta == pytest.approx(common.beta, rel=1e-7, abs=1e-9)
        assert one.alpha[0] == pytest.approx(common.alpha, rel=1e-7)


def test_arm_at_its_poisson_boundary() -> None:
    """An arm with Poisson (underdispersed-looking) counts: its alpha goes to 0 and the arm gets the
    Poisson law; the other arm keeps its dispersion; the fit converges."""
    rng = np.random.default_rng(3)
    y = np.concatenate([np.full(40, 3.0) + rng.integers(0, 2, 40), rng.poisson(3.0 * rng.gamma(1.0, 1.0, 40))])
    d = pd.DataFrame({"arm": ["placebo"] * 40 + ["a"] * 40, "net2": y.astype(int), "followup_years": 1.0})
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo", dispersion="by_arm")
    t = fit.alpha_by_arm.set_index("arm")
    assert fit.converged and bool(t.loc["placebo", "poisson_boundary"]) and t.loc["placebo", "alpha"] == 0.0
    assert t.loc["a", "alpha"] > 0.3


def test_by_arm_needs_the_arm_in_the_formula_and_a_known_choice() -> None:
    d = pd.DataFrame({"arm": ["placebo", "a"] * 10, "x": np.arange(20.0), "net2": [1, 2] * 10, "followup_years": 1.0})
    with pytest.raises(InputError, match="dispersion"):
        fit_count_model(d, "net2 ~ x", dispersion="by_arm")
    with pytest.raises(InputError, match="dispersion"):
        fit_count_model(d, "net2 ~ arm", dispersion="per_site")  # type: ignore[arg-type]
