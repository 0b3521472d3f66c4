"""NB2 with a dispersion model (mseval.stats.nb2_dispersion_model): parity with R's glmmTMB(dispformula = ~ z + x,
nbinom2), live where R has glmmTMB and against a stored reference elsewhere; the one-dispersion and per-arm
models as its special cases; recovery of the dispersion coefficients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.stats.nb2_by_arm import fit_nb2_by_arm
from mseval.stats.nb2_dispersion_model import fit_nb2_dispersion_model
from mseval.stats.nb2_mle import fit_nb2
from tests.stats.test_nb2_by_arm import r_glmmtmb_available

DATA = Path(__file__).parent / "data"
R_SCRIPT = DATA / "r_glmmtmb.R"
MEAN, DISP = "net2 ~ x + offset(log(followup_years))", "~ z + x"


def disp_trials(seed: int, n_trials: int = 6) -> pd.DataFrame:
    """Random data sets (id column) of 150-600 rows: x, z standard normal (3 decimals), follow-up 0.5-2 y;
    log mu = b0 + b1 x + log(years), log alpha = g0 + g1 z + g2 x with g0 in [-1, 0.7], |g1|, |g2| < 0.6."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_trials):
        n = int(rng.integers(150, 601))
        x, z = rng.normal(0, 1, n).round(3), rng.normal(0, 1, n).round(3)
        years = rng.uniform(0.5, 2.0, n).round(4)
        b, g = (rng.uniform(0.3, 1.8), rng.uniform(-0.6, 0.6)), (rng.uniform(-1.0, 0.7), *rng.uniform(-0.6, 0.6, 2))
        mu = np.exp(b[0] + b[1] * x) * years
        alpha = np.exp(g[0] + g[1] * z + g[2] * x)
        y = rng.poisson(mu * rng.gamma(1.0 / alpha, alpha))
        out.append(pd.DataFrame({"id": f"d{seed}_{t:02d}", "x": x, "z": z, "followup_years": years, "net2": y}))
    return pd.concat(out, ignore_index=True)


def run_glmmtmb(trials: pd.DataFrame, folder: Path) -> pd.DataFrame:
    import subprocess

    jobs = []
    for tid, d in trials.groupby("id", sort=False):
        path = folder / f"{tid}.csv"
        d.drop(columns="id").to_csv(path, index=False)
        jobs.append((tid, str(path), MEAN, DISP))
    pd.DataFrame(jobs, columns=["id", "data", "formula", "dispformula"]).to_csv(folder / "jobs.csv", index=False)
    out = subprocess.run(["Rscript", str(R_SCRIPT), str(folder / "jobs.csv")], check=True, capture_output=True, text=True)
    (folder / "r.csv").write_text(out.stdout)
    return pd.read_csv(folder / "r.csv")


def ours(d: pd.DataFrame):
    X = np.column_stack([np.ones(len(d)), d["x"]])
    Z = np.column_stack([np.ones(len(d)), d["z"], d["x"]])
    return fit_nb2_dispersion_model(d["net2"].to_numpy(), X, Z, np.log(d["followup_years"].to_numpy()))


def compare(trials: pd.DataFrame, ref: pd.DataFrame) -> dict[str, float]:
    """Against glmmTMB's own objective polished to |gradient| < 1e-9 (fit = "newton" rows of r_glmmtmb.R):
    coefficients agree to ~1e-9 absolute (the polished point is a maximum within 1e-9 in gradient), SEs to
    1e-6 relative (TMB::sdreport's Hessian is a finite difference of its AD gradient). glmmTMB's dispersion
    coefficients are those of log theta = -log alpha. Returns the largest relative differences."""
    worst = {"coef": 0.0, "se": 0.0}
    ref = ref[ref["fit"] == "newton"]
    for tid, d in trials.groupby("id", sort=False):
        r = ref[ref["id"] == tid]
        fit = ours(d)
        assert fit.converged, tid
        V, ok = fit.covariance()
        assert ok, tid
        se = np.sqrt(np.diag(V))
        cond, disp = r[r["part"] == "cond"], r[r["part"] == "disp"]
        theirs = np.concatenate([cond["coef"].to_numpy(), -disp["coef"].to_numpy()])
        mine = np.concatenate([fit.beta, fit.gamma])
        assert np.all(np.abs(theirs - mine) <= 1e-7 * np.maximum(1.0, np.abs(mine))), tid
        theirs_se = np.concatenate([cond["se"].to_numpy(), disp["se"].to_numpy()])
        assert theirs_se == pytest.approx(se, rel=1e-5), tid
        assert fit.llf == pytest.approx(float(r["loglik"].iloc[0]), rel=1e-12, abs=1e-9), tid
        worst["coef"] = max(worst["coef"], float(np.max(np.abs(theirs - mine) / np.maximum(1.0, np.abs(mine)))))
        worst["se"] = max(worst["se"], float(np.max(np.abs(theirs_se - se) / se)))
    return worst


def test_agrees_with_glmmtmb_stored_reference() -> None:
    """Against glmmTMB 1.1.5 (R 4.2.2) output stored in tests/stats/data/nb_disp_r.csv for `disp_trials(2027)`
    (nb_disp_trials.csv): coefficients to 1e-8, SEs to 1e-6."""
    trials = pd.read_csv(DATA / "nb_disp_trials.csv")
    worst = compare(trials, pd.read_csv(DATA / "nb_disp_r.csv"))
    assert worst["coef"] < 1e-8 and worst["se"] < 1e-6


@pytest.mark.skipif(not r_glmmtmb_available(), reason="R with glmmTMB is not installed here; CI installs r-cran-glmmtmb")
def test_agrees_with_glmmtmb_live(tmp_path: Path) -> None:
    """The same comparison with glmmTMB run now on fresh random data sets."""
    trials = disp_trials(33, n_trials=4)
    worst = compare(trials, run_glmmtmb(trials, tmp_path))
    assert worst["coef"] < 1e-8 and worst["se"] < 1e-6


def test_one_dispersion_and_one_per_arm_are_special_cases() -> None:
    """Z = 1 is `fit_nb2` and Z = arm indicators is `fit_nb2_by_arm`: same maximum, same coefficients."""
    rng = np.random.default_rng(4)
    n = 900
    arm = np.repeat([0, 1, 2], n // 3)
    x = rng.normal(size=n)
    alpha = np.array([0.4, 1.0, 2.0])[arm]
    y = rng.poisson(np.exp(1.0 + 0.4 * x - 0.5 * (arm > 0)) * rng.gamma(1 / alpha, alpha)).astype(float)
    X = np.column_stack([np.ones(n), x, arm == 1, arm == 2]).astype(float)
    one, common = fit_nb2_dispersion_model(y, X, np.ones((n, 1))), fit_nb2(y, X)
    assert one.converged and one.llf == pytest.approx(common.llf, rel=1e-12)
    assert one.beta == pytest.approx(common.beta, rel=1e-7, abs=1e-9) and np.exp(one.gamma[0]) == pytest.approx(common.alpha, rel=1e-7)
    per, by = fit_nb2_dispersion_model(y, X, np.eye(3)[arm]), fit_nb2_by_arm(y, X, arm)
    assert per.converged and per.llf == pytest.approx(by.llf, rel=1e-12)
    assert np.exp(per.gamma) == pytest.approx(by.alpha, rel=1e-7)


def test_recovers_the_dispersion_coefficients() -> None:
    """20,000 rows, log alpha = -0.3 + 0.6 z: each coefficient within 4 of its SEs (a false failure has
    probability < 1e-4 per coefficient), and the likelihood beats the one-dispersion fit's by far."""
    rng = np.random.default_rng(8)
    n = 20_000
    x, z = rng.normal(size=n), rng.normal(size=n)
    alpha = np.exp(-0.3 + 0.6 * z)
    y = rng.poisson(np.exp(1.0 + 0.5 * x) * rng.gamma(1 / alpha, alpha)).astype(float)
    X, Z = np.column_stack([np.ones(n), x]), np.column_stack([np.ones(n), z])
    fit = fit_nb2_dispersion_model(y, X, Z)
    se = np.sqrt(np.diag(fit.covariance()[0]))
    truth = np.array([1.0, 0.5, -0.3, 0.6])
    assert np.all(np.abs(np.concatenate([fit.beta, fit.gamma]) - truth) < 4 * se)
    assert fit.llf - fit_nb2(y, X).llf > 100.0
    assert fit.alpha(Z) == pytest.approx(np.exp(Z @ fit.gamma))


def test_log_likelihood_is_accurate_near_the_poisson_law() -> None:
    """At theta up to 1e8 (alpha 1e-8) the row log-likelihood equals `nb2_mle.nb2_loglik` (its accurate forms) to
    1e-9 absolute over 300 rows: the line search compares values that differ by less than the rounding of a plain
    gammaln difference (1e-5 at theta 1e7)."""
    from scipy.special import gammaln

    from mseval.stats.nb2_dispersion_model import _loglik
    from mseval.stats.nb2_mle import nb2_loglik

    rng = np.random.default_rng(1)
    y = rng.poisson(3.0, 300).astype(float)
    eta = np.log(rng.uniform(1.0, 6.0, 300))
    for theta in (1.0, 1e3, 1e5, 1e7, 1e8):
        ours_ll = _loglik(y, eta, np.full(300, -np.log(theta)), gammaln(y + 1.0))
        assert abs(ours_ll - nb2_loglik(y, eta, theta)) < 1e-9, theta
