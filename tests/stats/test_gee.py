"""NB-GEE / Poisson GEE of per-visit counts (`mseval.stats.gee.fit_gee`): live parity with R's
geepack::geeglm (Poisson, exchangeable and AR(1), coefficients and robust SEs to 1e-6 relative, with
missing visits), the NB variance checked against statsmodels' clustered GLM, and bad input."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.stats.gee import fit_gee, long_table
from tests.stats.r_parity import r_name
from tests.stats.visit_data import trial_with_missing

R_SCRIPT = Path(__file__).parent / "data" / "r_visits.R"


def _geepack() -> bool:
    if shutil.which("Rscript") is None:
        return False
    return subprocess.run(["Rscript", "-e", "suppressMessages(library(geepack))"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def trial() -> tuple[pd.DataFrame, pd.DataFrame]:
    return trial_with_missing(seed=3, patients_per_arm=12)


@pytest.fixture(scope="module")
def geepack_fits(trial, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:  # noqa: ANN001
    """R's geeglm on the trial's observed visits, exchangeable and AR(1), in one Rscript call."""
    visits, patients = trial
    folder = tmp_path_factory.mktemp("geepack")
    long_table(visits, patients, response="net2")[["patient_id", "arm", "age", "visit_index", "years", "net2"]].to_csv(folder / "d.csv", index=False)
    out = subprocess.run(["Rscript", str(R_SCRIPT), "gee", str(folder / "d.csv"), "exchangeable,ar1"], capture_output=True, text=True, check=True)
    return pd.read_csv(io.StringIO(out.stdout))


@pytest.mark.skipif(not _geepack(), reason="R (Rscript with geepack) is not installed here; CI installs r-cran-geepack")
@pytest.mark.parametrize("corr", ["exchangeable", "ar1"])
def test_poisson_gee_equals_r_geepack(trial, geepack_fits: pd.DataFrame, corr: str) -> None:  # noqa: ANN001
    visits, patients = trial
    assert (visits["missing"] != "").sum() >= 10, "missing visits make the AR(1) distances (waves) matter"
    fit = fit_gee(visits, patients, covariates=["age"], corr=corr, family="poisson", reference="placebo", se="robust")
    r = geepack_fits[geepack_fits["corstr"] == corr].set_index("term")
    arms = set(patients["arm"])
    assert fit.converged and len(fit.params) == 7
    for term, coef in fit.params.items():
        rt = r_name(term, "arm", arms)
        assert coef == pytest.approx(r.loc[rt, "coef"], rel=1e-6, abs=1e-9), term
        se = float(np.sqrt(fit.vcov.loc[term, term]))
        assert se == pytest.approx(r.loc[rt, "se"], rel=1e-6), term
    assert np.array_equal(fit.vcov.to_numpy(), fit.vcov_liang_zeger.to_numpy())
    assert fit.dep_param == pytest.approx(r.loc["alpha", "coef"], rel=1e-6)
    assert fit.scale == pytest.approx(r.loc["scale", "coef"], rel=1e-6)


def test_nb_gee_under_independence_is_the_nb_glm_with_a_clustered_sandwich(trial) -> None:  # noqa: ANN001
    """With an independence working correlation the NB-GEE's estimating equations are the NB(alpha)
    GLM's score (same coefficients as statsmodels' GLM), and its robust variance is the Liang-Zeger
    sandwich A^-1 B A^-1 with A = X' diag(mu^2 / V) X (expected information, V = mu + alpha mu^2) and
    B the sum over patients of their summed score's outer product, computed here by hand."""
    import statsmodels.api as sm

    visits, patients = trial
    fit = fit_gee(visits, patients, covariates=["age"], corr="independence", family="nb", nb_alpha=0.8, reference="placebo", se="robust")
    long = long_table(visits, patients, response="net2")
    long["arm"] = pd.Categorical(long["arm"], categories=["placebo", *sorted(set(long["arm"]) - {"placebo"})])
    X = pd.get_dummies(long[["arm"]], drop_first=True, dtype=float).assign(age=long["age"])
    X.insert(0, "Intercept", 1.0)
    y, off = long["net2"].to_numpy(dtype=float), np.log(long["years"].to_numpy())
    res = sm.GLM(y, X, family=sm.families.NegativeBinomial(alpha=0.8), offset=off).fit(tol=1e-13)
    assert np.allclose(fit.params.to_numpy(), res.params.to_numpy(), rtol=1e-7)
    Xm = X.to_numpy()
    mu = np.exp(Xm @ fit.params.to_numpy() + off)
    var = mu + 0.8 * mu ** 2
    A = (Xm * (mu ** 2 / var)[:, None]).T @ Xm
    scores = np.zeros((long["patient_id"].nunique(), Xm.shape[1]))
    np.add.at(scores, pd.factorize(long["patient_id"])[0], Xm * ((y - mu) * mu / var)[:, None])
    Ainv = np.linalg.inv(A)
    assert np.allclose(fit.vcov.to_numpy(), Ainv @ (scores.T @ scores) @ Ainv, rtol=1e-6)
    # Mancl-DeRouen: each patient's residuals scaled by (I - H_i)^-1, H_i = D_i A^-1 D_i' V_i^-1 (D = diag(mu) X)
    md = fit_gee(visits, patients, covariates=["age"], corr="independence", family="nb", nb_alpha=0.8, reference="placebo")
    assert np.allclose(md.vcov_liang_zeger.to_numpy(), fit.vcov.to_numpy(), rtol=1e-10)
    B = np.zeros_like(A)
    for g in pd.unique(long["patient_id"]):
        i = (long["patient_id"] == g).to_numpy()
        D = Xm[i] * mu[i][:, None]
        H = D @ Ainv @ D.T / var[i][None, :]
        s = D.T @ (np.linalg.solve(np.eye(i.sum()) - H, y[i] - mu[i]) / var[i])
        B += np.outer(s, s)
    assert np.allclose(md.vcov.to_numpy(), Ainv @ B @ Ainv, rtol=1e-6)
    assert (np.diag(md.vcov) > np.diag(fit.vcov)).all()
    assert fit.nb_alpha == 0.8 and fit.nb_alpha_source == "given"


def test_nb_alpha_comes_from_the_cumulative_nb2_fit(trial) -> None:  # noqa: ANN001
    from mseval.stats.visits import fit_cumulative_nb2

    visits, patients = trial
    fit = fit_gee(visits, patients, corr="exchangeable", family="nb", reference="placebo")
    cum = fit_cumulative_nb2(visits, patients, reference="placebo")
    assert fit.nb_alpha == pytest.approx(cum.alpha, rel=1e-12) and "cumulative" in fit.nb_alpha_source
    assert 0 < fit.dep_param < 1 and fit.converged
    assert set(fit.table["term"]) == set(patients["arm"]) - {"placebo"}
    assert "population-averaged" in fit.summary()


def test_bad_input_and_non_estimable_arms(trial) -> None:  # noqa: ANN001
    visits, patients = trial
    one = visits[visits["visit_index"] == 1]
    for corr in ("exchangeable", "ar1"):
        with pytest.raises(InputError, match="two or more observed visits") as e:
            fit_gee(one, patients, corr=corr, reference="placebo")
        assert e.value.field == "corr"
    assert fit_gee(one, patients, corr="independence", family="poisson", reference="placebo").n_obs == int(one["net2"].notna().sum())
    with pytest.raises(InputError) as e:
        fit_gee(visits, patients, corr="unstructured")
    assert e.value.field == "corr"
    with pytest.raises(InputError) as e:
        fit_gee(visits, patients, family="gamma")
    assert e.value.field == "family"
    with pytest.raises(InputError, match="bmi") as e:
        fit_gee(visits, patients, covariates=["np.log1p(bmi)"], reference="placebo")
    assert e.value.field == "covariates"
    # an arm without events: flagged, not printed as a number
    v = visits.copy()
    v.loc[v["patient_id"].isin(patients.loc[patients["arm"] == "dmf", "patient_id"]) & v["net2"].notna(), "net2"] = 0
    fit = fit_gee(v, patients, corr="exchangeable", family="poisson", reference="placebo")
    row = fit.rate_ratio("dmf")
    assert not row["estimable"] and "no events" in row["note"] and "not estimable" in fit.summary()
    assert fit.rate_ratio("laquinimod")["estimable"]


def test_leverage_one_patient_falls_back_to_the_liang_zeger_sandwich(trial) -> None:  # noqa: ANN001
    """A patient alone at a covariate level: Mancl-DeRouen's (I - H_i)^-1 does not exist (statsmodels raises
    LinAlgError). The fit returns with the Liang-Zeger sandwich, se_type 'robust', and a note."""
    visits, patients = trial
    p = patients.assign(lonely=(np.arange(len(patients)) == 0).astype(float))
    f = fit_gee(visits, p, corr="exchangeable", covariates=["lonely"], reference="placebo")
    r = fit_gee(visits, p, corr="exchangeable", covariates=["lonely"], reference="placebo", se="robust")
    assert f.se_type == "robust" and any("leverage is 1" in n for n in f.notes)
    pd.testing.assert_frame_equal(f.table, r.table)
