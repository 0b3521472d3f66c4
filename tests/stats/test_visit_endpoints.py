"""Multi-visit endpoints (`mseval.stats.visits`): the cumulative NB2 with offset log(observed years), Gd+
per scan, and the discrete-time cloglog for the first new/enlarging lesion (live parity with R's
glm(binomial(link = "cloglog")) to 1e-8)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import WEEKS_PER_YEAR, TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.visits import fit_cumulative_nb2, fit_first_lesion_cloglog, fit_gd_per_scan, patient_totals, person_periods
from tests.stats.r_parity import r_name
from tests.stats.visit_data import trial_with_missing

R_SCRIPT = Path(__file__).parent / "data" / "r_visits.R"


@pytest.fixture(scope="module")
def trial() -> tuple[pd.DataFrame, pd.DataFrame]:
    return trial_with_missing(seed=5, patients_per_arm=12)


def test_cumulative_nb2_without_missing_visits_is_the_patient_level_fit() -> None:
    tr = simulate_count_trial(TrialConfig(patients_per_arm=10, seed=7), samples=1)
    tot = patient_totals(tr.visits, tr.table)
    assert tot["net2"].astype(int).tolist() == tr.table["net2"].tolist()
    assert np.allclose(tot["followup_years"].to_numpy(dtype=float), tr.table["followup_years"].to_numpy(), rtol=1e-12)
    assert (tot["scans"] == 3).all()
    a = fit_cumulative_nb2(tr.visits, tr.table, covariates=["age"], reference="placebo")
    b = fit_count_model(tr.table, "net2 ~ arm + age", reference="placebo")
    assert np.allclose(a.table["coef"], b.table["coef"], rtol=1e-8) and a.alpha == pytest.approx(b.alpha, rel=1e-10)
    # default SEs: Mancl-DeRouen with one cluster per patient, r_i / (1 - h_i), at the NB2 fit's alpha (by hand)
    import patsy

    X = np.asarray(patsy.dmatrix("C(arm, Treatment('placebo')) + age", tr.table))
    coef = pd.Series(b.coef, index=list(b.vcov.index))
    mu = np.exp(X @ coef.to_numpy() + np.log(tr.table["followup_years"].to_numpy()))
    var = mu + b.alpha * mu ** 2
    Ainv = np.linalg.inv((X * (mu ** 2 / var)[:, None]).T @ X)
    h = (mu ** 2 / var) * np.einsum("ij,jk,ik->i", X, Ainv, X)
    s = X * ((tr.table["net2"].to_numpy() - mu) * mu / var / (1 - h))[:, None]
    V = Ainv @ (s.T @ s) @ Ainv
    assert a.cov == "bias_reduced" and np.allclose(a.table["se"], np.sqrt(np.diag(V))[1:], rtol=1e-5)


def test_cumulative_exposure_is_the_observed_follow_up(trial) -> None:  # noqa: ANN001
    visits, patients = trial
    v = visits.copy()
    gone = patients["patient_id"].iloc[0]
    v.loc[v["patient_id"] == gone, ["net2", "gd_count"]] = pd.NA
    v.loc[v["patient_id"] == gone, "missing"] = "dropout"
    tot = patient_totals(v, patients).set_index("patient_id")
    obs = v[v["missing"] == ""]
    last = obs.groupby("patient_id")["end_weeks"].max() / WEEKS_PER_YEAR
    assert np.allclose(tot.loc[last.index, "followup_years"].to_numpy(dtype=float), last.to_numpy(), rtol=1e-12)
    assert tot.loc[last.index, "net2"].astype(int).tolist() == obs.groupby("patient_id")["net2"].sum().astype(int).tolist()
    assert pd.isna(tot.loc[gone, "net2"]) and pd.isna(tot.loc[gone, "followup_years"])
    fit = fit_cumulative_nb2(v, patients, reference="placebo")
    assert fit.n == len(last) < len(patients) and fit.n_dropped == len(patients) - len(last) and gone in fit.notes[0]


def test_gd_per_scan(trial) -> None:  # noqa: ANN001
    visits, patients = trial
    nb2 = fit_gd_per_scan(visits, patients, reference="placebo")
    scans = visits[visits["missing"] == ""].groupby("patient_id").size()
    assert nb2.offset_years == "scans" and nb2.arm_counts["exposure_years"].sum() == scans.sum()
    assert nb2.formula == "gd_count ~ arm"
    gee = fit_gd_per_scan(visits, patients, reference="placebo", method="gee")
    assert gee.offset is None and gee.response == "gd_count" and gee.n_obs == scans.sum()
    with pytest.raises(InputError) as e:
        fit_gd_per_scan(visits, patients, method="glmm")
    assert e.value.field == "method"


def test_person_periods_stop_at_the_first_lesion_and_span_missed_visits() -> None:
    v = pd.DataFrame({"patient_id": ["A"] * 3 + ["B"] * 3 + ["C"] * 3, "visit": ["w24", "w48", "w96"] * 3,
                      "visit_index": [1, 2, 3] * 3, "start_weeks": [0, 24, 48, 0, 24, 24, 0, 0, 0],
                      "end_weeks": [24, 48, 96, 24, 48, 96, 24, 48, 96],
                      "net2": pd.array([0, 2, 1, 0, None, 0, None, None, None], dtype="Int64"),
                      "missing": ["", "", "", "", "missed", "", "dropout", "dropout", "dropout"]})
    p = pd.DataFrame({"patient_id": ["A", "B", "C"], "arm": ["placebo", "x", "x"], "net2": [3, 0, 0]})
    pp = person_periods(v, p)
    assert pp[["patient_id", "visit", "event"]].values.tolist() == [["A", "w24", 0], ["A", "w48", 1], ["B", "w24", 0], ["B", "w96", 0]]
    assert np.allclose(pp["years"], np.array([24, 24, 24, 72]) / WEEKS_PER_YEAR)
    assert list(pp["interval"].cat.categories) == ["w24", "w48", "w96"]


def _rscript() -> bool:
    return shutil.which("Rscript") is not None


@pytest.mark.skipif(not _rscript(), reason="R (Rscript) is not installed here")
def test_cloglog_equals_r_glm_binomial_cloglog(trial, tmp_path: Path) -> None:  # noqa: ANN001
    visits, patients = trial
    fit = fit_first_lesion_cloglog(visits, patients, covariates=["age"], reference="placebo")
    pp = person_periods(visits, patients)
    assert fit.n_periods == len(pp) and fit.events == int(pp["event"].sum()) >= 20 and fit.converged
    pp[["patient_id", "arm", "age", "visit_index", "interval", "years", "event"]].to_csv(tmp_path / "pp.csv", index=False)
    out = subprocess.run(["Rscript", str(R_SCRIPT), "cloglog", str(tmp_path / "pp.csv")], capture_output=True, text=True, check=True)
    r = pd.read_csv(io.StringIO(out.stdout)).set_index("term")
    arms = set(patients["arm"])
    assert len(fit.params) == len(r) == 9
    for term, coef in fit.params.items():
        rt = "intervalw48" if term == "interval[T.w48]" else "intervalw96" if term == "interval[T.w96]" else r_name(term, "arm", arms)
        assert coef == pytest.approx(r.loc[rt, "coef"], rel=1e-8, abs=1e-12), term
        assert float(np.sqrt(fit.vcov.loc[term, term])) == pytest.approx(r.loc[rt, "se"], rel=1e-8), term


def test_cloglog_flags_separation_and_states_its_assumptions(trial) -> None:  # noqa: ANN001
    visits, patients = trial
    v = visits.copy()
    v.loc[v["patient_id"].isin(patients.loc[patients["arm"] == "dmf", "patient_id"]) & v["net2"].notna(), "net2"] = 0
    fit = fit_first_lesion_cloglog(v, patients, reference="placebo")
    row = fit.table.set_index("term").loc["dmf"]
    assert not row["estimable"] and "separation" in row["note"]
    assert fit.table.set_index("term").loc["laquinimod", "estimable"]
    # the other arms' HRs are the limit of the full MLE: the fit without the separated arm's patients
    others = patients[patients["arm"] != "dmf"]
    ref = fit_first_lesion_cloglog(v[v["patient_id"].isin(others["patient_id"])], others, reference="placebo")
    assert np.allclose(fit.table.set_index("term").loc[ref.table["term"], "coef"], ref.table["coef"], rtol=1e-10)
    s = fit.summary()
    assert "not estimable" in s and "proportional" in s and "interval censoring" in s
    with pytest.raises(InputError, match="bmi"):
        fit_first_lesion_cloglog(visits, patients, covariates=["bmi"])


def test_cumulative_nb2_with_a_leverage_one_patient_falls_back_with_a_note(trial) -> None:  # noqa: ANN001
    """A patient alone at a covariate level has leverage 1: the bias-reduced sandwich's (I - H_i)^-1 does not exist.
    The fit is still returned, with expected-information SEs, and says so (it raised LinAlgError before)."""
    visits, patients = trial
    p = patients.assign(lonely=(np.arange(len(patients)) == 0).astype(float))
    f = fit_cumulative_nb2(visits, p, covariates=["lonely"], reference="placebo")
    e = fit_cumulative_nb2(visits, p, covariates=["lonely"], reference="placebo", cov="expected")
    assert f.cov == "expected" and any("leverage is 1" in n for n in f.notes)
    pd.testing.assert_frame_equal(f.table, e.table)
