"""The analysis plan: schema and loader, covariate transforms, the adjusted primary table (marginal
standardisation, delta method), multiplicity (Holm, Dunnett, fixed sequence), the adjusted lesion-free
endpoint, and the adjusted NB2's parity with R's MASS::glm.nb."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mseval.errors import InputError
from mseval.sap.covariates import derive, full_rank_terms
from mseval.sap.default import default_sap, default_sap_text
from mseval.sap.runner import run_sap
from mseval.sap.schema import check_against, load_sap, parse_sap
from mseval.sap.text import plan_lines
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.lesion_free_adjusted import fit_lesion_free_adjusted
from mseval.stats.multiplicity import adjust, dunnett_pvalues
from mseval.stats.standardised import standardised_rates

sys.path.insert(0, str(Path(__file__).parent))
import r_parity  # noqa: E402

ARMS = ["placebo", "laquinimod", "ifnb1a_im", "ifnb1a_sc", "dmf", "ocrelizumab"]


@pytest.fixture(scope="module")
def trial() -> pd.DataFrame:
    return simulate_count_trial(TrialConfig(patients_per_arm=20, seed=3), samples=1).table


# -- multiplicity -------------------------------------------------------------------------------------
def test_dunnett_equals_scipy_dunnett_and_hand_computable_cases() -> None:
    """With the pooled-variance t statistics of 3 groups vs a control and their correlation (0.5, equal
    groups), our multivariate-t Dunnett p equals scipy.stats.dunnett (both quasi-Monte Carlo, error ~1e-5);
    independent statistics give the Sidak p 1 - (1 - p)^m; one comparison gives the unadjusted p."""
    rng = np.random.default_rng(1)
    ctrl = rng.normal(0, 1, 10)
    groups = [rng.normal(m, 1, 10) for m in (0.8, 0.3, 1.0)]
    ref = stats.dunnett(*groups, control=ctrl, rng=0).pvalue
    s2 = sum(((x - x.mean()) ** 2).sum() for x in [ctrl, *groups]) / (40 - 4)
    t = [(x.mean() - ctrl.mean()) / np.sqrt(s2 * 0.2) for x in groups]
    R = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    assert np.allclose(dunnett_pvalues(t, R, df=36), ref, atol=5e-4)
    p1 = 2 * stats.norm.sf(2.0)
    assert np.allclose(dunnett_pvalues([2.0, 1.0], np.eye(2)), [1 - (1 - p1) ** 2, 1 - (1 - 2 * stats.norm.sf(1.0)) ** 2], atol=1e-5)
    assert dunnett_pvalues([2.0], np.eye(1))[0] == pytest.approx(p1, rel=1e-12)
    # positive correlation: Dunnett lies between the unadjusted p and Bonferroni (= Holm's first step)
    d = dunnett_pvalues([2.5, 0.3, -0.2], R)[0]
    p = 2 * stats.norm.sf(2.5)
    assert p < d < 3 * p


def test_holm_and_fixed_sequence() -> None:
    arms = ["a", "b", "c"]
    h = adjust(arms, [0.01, 0.04, 0.03], "holm").table
    assert np.allclose(h["p_adjusted"], [0.03, 0.06, 0.06]) and list(h["rejected"]) == [True, False, False]
    # a non-estimable comparison keeps its place in the family (p = 1 there), gets no adjusted p
    h2 = adjust(arms, [0.01, np.nan, 0.03], "holm", estimable=[True, False, True]).table
    assert np.allclose(h2["p_adjusted"][[0, 2]], [0.03, 0.06]) and np.isnan(h2["p_adjusted"][1])
    fs = adjust(arms, [0.01, 0.20, 0.001], "fixed_sequence", order=["c", "a", "b"]).table
    assert list(fs["arm"]) == ["c", "a", "b"] and list(fs["rejected"]) == [True, True, False] and fs["tested"].all()
    assert np.allclose(fs["p_adjusted"], [0.001, 0.01, 0.20])
    stop = adjust(arms, [0.01, 0.20, 0.001], "fixed_sequence", order=["b", "a", "c"]).table.set_index("arm")
    assert not stop.loc["b", "rejected"] and not stop.loc["a", "tested"] and not stop.loc["c", "tested"]
    assert np.isnan(stop.loc["c", "p_adjusted"]) and "not tested: the hierarchy stopped at 'b'" in stop.loc["c", "note"]
    assert not stop.loc["c", "rejected"]  # p = 0.001 but never tested


# -- plan file ----------------------------------------------------------------------------------------
def test_default_plan_reads_as_an_ms_trial_and_json_loads_the_same(tmp_path: Path) -> None:
    sap = default_sap()
    covs = [(c["column"], c["transform"]) for c in sap.primary["covariates"]]
    assert covs == [("site", "factor"), ("gd_count", "any_vs_none"), ("t2_volume_mm3", "log1p"), ("edss", "at_least")]
    assert sap.primary["offset"] == "log_followup_years" and [s["name"] for s in sap.resolved["sensitivity"]] == ["unadjusted", "robust_se", "mnar_tipping_point"]
    assert sap.resolved["sensitivity"][0]["covariates"] == []
    text = "\n".join(plan_lines(sap.resolved, reference="placebo"))
    assert "baseline Gd+ lesions (0 vs >= 1)" in text and "Holm" in text and "log(follow-up years)" in text
    assert "below 1000 patients in an arm the small-sample CI and p (the GEE's permutation test)" in text  # rules R6, R9, R10
    (tmp_path / "sap.json").write_text(json.dumps(sap.doc))
    as_json = load_sap(tmp_path / "sap.json")
    assert as_json.resolved == sap.resolved and as_json.sha256 != sap.sha256  # same plan, other bytes


@pytest.mark.parametrize(("text", "field"), [
    (default_sap_text().replace("procedure: holm", "procedure: fixed_sequence"), "multiplicity.order"),
    (default_sap_text().replace("transform: log1p", "transform: sqrt"), "primary.covariates[2].transform"),
    (default_sap_text().replace("  cov: expected\n", "  cov: expected\n  weights: w\n"), "primary.weights"),
    ("just words", None),
])
def test_plan_errors_name_the_field(text: str, field: str | None) -> None:
    with pytest.raises(InputError) as err:
        parse_sap(text.encode(), "plan.yaml")
    assert err.value.file == "plan.yaml" and err.value.field == field and "\n" not in str(err.value)


# -- covariates ---------------------------------------------------------------------------------------
def test_named_transforms_and_deviations(trial: pd.DataFrame) -> None:
    d = trial.head(12).copy()
    covs = [{"column": "gd_count", "transform": "any_vs_none"}, {"column": "edss", "transform": "at_least", "cut": 4.0},
            {"column": "t2_volume_mm3", "transform": "log1p"}, {"column": "sex", "transform": "factor"}]
    out = derive(d, covs)
    assert np.array_equal(out.data["cov_gd_count_any"], (d["gd_count"] >= 1).astype(float))
    assert np.array_equal(out.data["cov_edss_ge4"], (d["edss"] >= 4).astype(float))
    assert np.allclose(out.data["cov_t2_volume_mm3_log1p"], np.log1p(d["t2_volume_mm3"]))
    assert out.terms[-1] == "C(cov_sex)"
    const = derive(d.assign(gd_count=0), covs)
    assert "cov_gd_count_any" not in const.terms and any("0 vs >= 1" in x and "constant" in x for x in const.deviations)
    dup = derive(d.assign(gd2=d["gd_count"]), [covs[0], {"column": "gd2", "transform": "any_vs_none"}])
    kept = full_rank_terms(dup.data, "net2", ["arm"], dup)
    assert kept.terms == ["cov_gd_count_any"] and "collinear" in kept.deviations[-1]
    with pytest.raises(InputError) as err:
        derive(d.assign(t2_volume_mm3=[5.0] * 5 + [0.0] * 7), [{"column": "t2_volume_mm3", "transform": "log"}], file="manifest.csv")
    assert err.value.row == 6 and err.value.field == "t2_volume_mm3"


# -- absolute effects ---------------------------------------------------------------------------------
def test_standardised_rates_hand_checks(trial: pd.DataFrame) -> None:
    """Arm-only model with equal follow-up: the adjusted rate is the crude rate and the reference's log-scale
    CI is exp(b0 -/+ z se0). With covariates: the rates' ratio is exp(b_arm) (no interactions) and the
    delta-method SE of the rate difference matches a finite-difference gradient."""
    d = trial.assign(followup_years=1.0)
    fit = fit_count_model(d, "net2 ~ arm", reference="placebo", adjusted_means=False)
    arms = list(fit.arm_categories)
    sub = d.assign(arm=pd.Categorical(d["arm"], categories=arms))
    s = standardised_rates(fit.design_info, fit.coef, fit.vcov.to_numpy(), sub, "arm", arms).set_index("arm")
    crude = d.groupby("arm")["net2"].mean()
    assert np.allclose(s["rate"], crude.loc[arms], rtol=1e-7)
    b0, se0 = fit.coef[0], np.sqrt(fit.vcov.iloc[0, 0])
    assert s.loc["placebo", "rate_ci_low"] == pytest.approx(np.exp(b0 - 1.959963984540054 * se0), rel=1e-9)
    f = "net2 ~ arm + gd_count + np.log1p(t2_volume_mm3)"
    fit = fit_count_model(trial, f, reference="placebo", adjusted_means=False)
    sub = trial.assign(arm=pd.Categorical(trial["arm"], categories=arms))
    s = standardised_rates(fit.design_info, fit.coef, fit.vcov.to_numpy(), sub, "arm", arms).set_index("arm")
    rr = fit.table.set_index("term")["rate_ratio"]
    assert np.allclose(s.loc[arms[1:], "rate"] / s.loc["placebo", "rate"], rr.loc[arms[1:]], rtol=1e-10)

    def diff(beta: np.ndarray) -> float:
        t = standardised_rates(fit.design_info, beta, fit.vcov.to_numpy(), sub, "arm", arms).set_index("arm")
        return float(t.loc["dmf", "rate_difference"])

    h = 1e-6
    g = np.array([(diff(fit.coef + h * e) - diff(fit.coef - h * e)) / (2 * h) for e in np.eye(len(fit.coef))])
    assert s.loc["dmf", "rate_difference_se"] == pytest.approx(float(np.sqrt(g @ fit.vcov.to_numpy() @ g)), rel=1e-5)


def test_lesion_free_adjusted_reduces_to_crude_without_covariates_and_flags_separation(trial: pd.DataFrame) -> None:
    t = fit_lesion_free_adjusted(trial, (), reference="placebo").set_index("arm")
    free = (trial["net2"] == 0).groupby(trial["arm"]).agg(["sum", "count"])
    p = free["sum"] / free["count"]
    odds = p / (1 - p)
    assert np.allclose(t["lesion_free_adjusted"], p.loc[t.index], rtol=1e-6)
    assert t.loc["dmf", "odds_ratio"] == pytest.approx(odds["dmf"] / odds["placebo"], rel=1e-6)
    assert t.loc["dmf", "risk_difference"] == pytest.approx(p["dmf"] - p["placebo"], rel=1e-6)
    sep = trial.copy()
    sep.loc[sep["arm"] == "ocrelizumab", "net2"] = 0
    s = fit_lesion_free_adjusted(sep, ("gd_count",), reference="placebo").set_index("arm")
    assert not s.loc["ocrelizumab", "estimable"] and "separation" in s.loc["ocrelizumab", "note"] and np.isnan(s.loc["ocrelizumab", "odds_ratio"])


# -- the runner ---------------------------------------------------------------------------------------
def test_runner_dunnett_fixed_sequence_and_lesion_free(trial: pd.DataFrame) -> None:
    text = default_sap_text().replace("procedure: holm", "procedure: dunnett").replace("test: auto", "test: wald")
    r = run_sap(parse_sap(text.encode(), "d.yaml"), trial, arms=ARMS, reference="placebo")
    prim = r.primary.table
    assert list(prim["arm"]) == ARMS and (prim["multiplicity"] == "dunnett").all()
    c = prim[~prim["reference"]]
    # single-step Dunnett with positively correlated statistics: between the unadjusted p and Bonferroni
    bonferroni = np.minimum(1.0, len(c) * c["p_value"].to_numpy())
    assert (c["p_adjusted"].to_numpy() <= bonferroni * (1 + 1e-4) + 1e-6).all() and (c["p_adjusted"] >= c["p_value"]).all()
    assert (c["p_adjusted"].to_numpy() < bonferroni).any()
    order = ["ocrelizumab", "laquinimod", "dmf", "ifnb1a_sc", "ifnb1a_im"]
    fs_text = default_sap_text().replace("procedure: holm", "procedure: fixed_sequence\n  order: [" + ", ".join(order) + "]").replace("test: auto", "test: wald")
    sap = parse_sap(fs_text.encode(), "f.yaml")
    assert check_against(sap, trial.columns, ARMS, "placebo") == "placebo"
    fs = run_sap(sap, trial, arms=ARMS, reference="placebo").primary.table.set_index("arm")
    first_fail = next(a for a in order if fs.loc[a, "p_value"] > 0.05)
    after = order[order.index(first_fail) + 1:]
    assert all(not fs.loc[a, "tested"] and "not tested" in fs.loc[a, "note"] for a in after) and after
    lf = r.secondary[0].table
    assert r.secondary[0].info["hazard_ratio"].startswith("not estimated") and {"odds_ratio", "risk_difference", "n_randomized"} <= set(lf.columns)


def test_missing_outcomes_are_randomized_not_analysed(trial: pd.DataFrame) -> None:
    d = trial.astype({"net2": "float"})
    d.loc[[0, 1, 2], "net2"] = np.nan
    r = run_sap(default_sap(), d, arms=ARMS, reference="placebo").primary.table.set_index("arm")
    assert r["n_randomized"].sum() == len(d) and r["n_analysed"].sum() == len(d) - 3


# -- R parity -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not r_parity.r_available(), reason="R (Rscript with MASS) is not installed here; CI installs r-base-core r-cran-mass")
def test_adjusted_nb2_matches_r_glm_nb(tmp_path: Path) -> None:
    """The default plan's adjusted NB2 (arm + factor(site) + Gd+ 0 vs >= 1 + log(1 + T2 volume) + EDSS >= 4,
    offset log(years)) on three simulated trials (8 and 20 per arm): coefficients and SEs equal
    MASS::glm.nb(epsilon = 1e-12) to 1e-6 relative (terms compared in model order)."""
    jobs, fits = [], {}
    for seed, n in ((3, 20), (4, 20), (5, 8)):
        d = simulate_count_trial(TrialConfig(patients_per_arm=n, seed=seed), samples=1).table
        r = run_sap(default_sap(), d, arms=ARMS, reference="placebo")
        data = derive(d, default_sap().primary["covariates"]).data
        path = tmp_path / f"t{seed}.csv"
        data.to_csv(path, index=False)
        f = r.primary.info["formula"].replace("C(cov_site)", "factor(cov_site)") + " + offset(log(followup_years))"
        jobs.append((f"t{seed}", path, f, "arm", "placebo"))
        fits[f"t{seed}"] = r.primary
    R = r_parity.run_r(jobs, tmp_path)
    worst = 0.0
    for jid, res in fits.items():
        model = "poisson" if res.info["boundary"] else "glm.nb"
        rr = R[(R["id"] == jid) & (R["model"] == model) & (R["term"] != "(Intercept)")]
        ours = res.terms
        assert len(rr) == len(ours) and (rr["status"] == "ok").all(), jid
        rel = np.r_[np.abs(ours["coef"].to_numpy() - rr["coef"].to_numpy()) / np.maximum(np.abs(rr["coef"].to_numpy()), 1e-3),
                    np.abs(ours["se"].to_numpy() / rr["se"].to_numpy() - 1)]
        worst = max(worst, float(rel.max()))
        assert rel.max() < 1e-6, (jid, rel.max())
    print(f"worst relative difference from R: {worst:.2g}")


# -- the small-sample tests wired into the runner -----------------------------------------------------
def _plan(test: str, *, procedure: str = "holm", below: int = 30, seed: int = 0) -> object:
    text = (default_sap_text().replace("test: auto", f"test: {test}").replace("procedure: holm", f"procedure: {procedure}")
            .replace("below_n_per_arm: 1000", f"below_n_per_arm: {below}").replace("seed: 0", f"seed: {seed}")
            .replace("n_permutations: 999", "n_permutations: 199"))
    text = text[:text.index("  - name: robust_se")]  # the unadjusted sensitivity analysis only (speed)
    return parse_sap(text.encode(), "s.yaml")


def test_runner_small_sample_tests_give_the_primary_p_and_ci(trial: pd.DataFrame) -> None:
    """Each planned test fills the primary table's p and RR CI from `primary_tests` (ci_method recorded);
    auto = permutation below below_n_per_arm (a deviation says so), Wald at or above; Dunnett with a
    non-Wald test falls back to Holm (a deviation says so); the plan's seed fixes the permutation p."""
    from mseval.stats.small_sample import primary_tests

    d = trial[trial["arm"].isin(["placebo", "dmf", "laquinimod"])].reset_index(drop=True)
    arms = ["placebo", "dmf", "laquinimod"]
    tab, runs = {}, {}
    for test in ("wald", "t", "lrt"):
        runs[test] = run_sap(_plan(test), d, arms=arms, reference="placebo")
        tab[test] = runs[test].primary.table.set_index("arm").loc[["dmf", "laquinimod"]]
        assert (tab[test]["test"] == test).all() and ((tab[test]["rr_ci_low"] < tab[test]["rate_ratio"]) & (tab[test]["rate_ratio"] < tab[test]["rr_ci_high"])).all()
    # the same numbers as primary_tests on the unadjusted model (the 'unadjusted' sensitivity analysis)
    unadj = runs["lrt"].sensitivity[0].table.set_index("arm")
    ref = primary_tests(d, "net2 ~ arm", "arm", "placebo", method="lrt").table.set_index("arm")
    assert np.allclose(unadj.loc[["dmf", "laquinimod"], "p_value"], ref.loc[["dmf", "laquinimod"], "p_value"], rtol=1e-8)
    assert np.allclose(unadj.loc[["dmf", "laquinimod"], "rr_ci_low"], ref.loc[["dmf", "laquinimod"], "ci_low"], rtol=1e-8)
    # t has the Wald statistic with heavier tails: larger p, wider CI; lrt has the profile-likelihood CI
    assert (tab["t"]["p_value"] > tab["wald"]["p_value"]).all() and (tab["t"]["rr_ci_high"] > tab["wald"]["rr_ci_high"]).all()
    assert tab["lrt"]["ci_method"].str.startswith("profile likelihood").all() and tab["wald"]["ci_method"].str.startswith("Wald, normal").all()
    # auto: permutation at 20 per arm (< 30), recorded; Wald when the threshold is 20
    auto = run_sap(_plan("auto", procedure="dunnett"), d, arms=arms, reference="placebo")
    a = auto.primary.table.set_index("arm").loc[["dmf", "laquinimod"]]
    assert (a["test"] == "permutation").all() and a["ci_method"].str.contains("permutation").all()
    assert "'auto' -> 'permutation'" in auto.primary.info["test_rule"]
    assert not any("'auto' -> 'permutation'" in x for x in auto.deviations)  # the plan's own rule is not a deviation
    assert any("Dunnett" in x and "Holm" in x for x in auto.deviations)
    assert (a["multiplicity"] == "holm").all() and (a["p_value"] >= 1 / 200).all()
    assert np.allclose(a["p_adjusted"], np.minimum(1, np.maximum.accumulate(np.sort(a["p_value"].to_numpy()) * [2, 1]))[np.argsort(np.argsort(a["p_value"].to_numpy()))])
    big = run_sap(_plan("auto", below=20), d, arms=arms, reference="placebo").primary.table
    assert (big.loc[~big["reference"], "test"] == "wald").all()
    # the plan's seed: same seed, same p (byte for byte); another seed, other permutations
    again = run_sap(_plan("auto", procedure="dunnett"), d, arms=arms, reference="placebo").primary.table.set_index("arm").loc[["dmf", "laquinimod"]]
    assert a["p_value"].tolist() == again["p_value"].tolist()
    other = run_sap(_plan("auto", procedure="dunnett", seed=7), d, arms=arms, reference="placebo").primary.table.set_index("arm")
    assert other.loc[["dmf", "laquinimod"], "p_value"].tolist() != a["p_value"].tolist() or other.loc["laquinimod", "rr_ci_low"] != a.loc["laquinimod", "rr_ci_low"]


# -- missing data: strategy, CONSORT, MNAR tipping point ----------------------------------------------
def _visits(d: pd.DataFrame) -> pd.DataFrame:
    """A two-visit per-visit table (w24, w48) splitting each patient's count; every 5th patient misses
    w48 (dropout), every 7th misses both."""
    rows = []
    for k, r in enumerate(d.itertuples()):
        first = int(r.net2) // 2
        gone2, gone1 = k % 5 == 0 or k % 7 == 0, k % 7 == 0
        rows.append({"patient_id": r.patient_id, "visit": "w24", "visit_index": 1, "start_weeks": 0.0, "end_weeks": 24.0,
                     "net2": pd.NA if gone1 else first, "gd_count": 0, "missing": "dropout" if gone1 else ""})
        rows.append({"patient_id": r.patient_id, "visit": "w48", "visit_index": 2, "start_weeks": 0.0 if gone1 else 24.0, "end_weeks": 48.0,
                     "net2": pd.NA if gone2 else int(r.net2) - first, "gd_count": 0, "missing": "dropout" if gone2 else ""})
    return pd.DataFrame(rows).astype({"net2": "Int64"})


def _wald_plan(strategy: str) -> object:
    text = default_sap_text().replace("test: auto", "test: wald").replace("strategy: exposure", f"strategy: {strategy}")
    text = text.replace("imputations: 20", "imputations: 3").replace("deltas: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]", "deltas: [0.0, 2.0]")
    return parse_sap(text.encode(), "m.yaml")


def test_missing_data_strategies_consort_and_mnar(trial: pd.DataFrame) -> None:
    d = trial[trial["arm"].isin(["placebo", "dmf", "ocrelizumab"])].reset_index(drop=True)
    arms = ["placebo", "dmf", "ocrelizumab"]
    v = _visits(d)
    seen1 = v[(v["visit_index"] == 1)]["missing"].eq("").to_numpy()
    seen2 = v[(v["visit_index"] == 2)]["missing"].eq("").to_numpy()
    ex = run_sap(_wald_plan("exposure"), d, arms=arms, reference="placebo", visits=v)
    cc = run_sap(_wald_plan("complete_case"), d, arms=arms, reference="placebo", visits=v)
    pe, pc = ex.primary.table.set_index("arm"), cc.primary.table.set_index("arm")
    assert pe["n_randomized"].sum() == pc["n_randomized"].sum() == len(d)
    assert pe["n_analysed"].sum() == int(seen1.sum()) and pc["n_analysed"].sum() == int(seen2.sum()) < pe["n_analysed"].sum()
    # exposure: the years of each analysed patient's last observed scan; complete case: 48 weeks each
    last = np.where(seen2, 48.0, 24.0)[seen1]
    assert pe["exposure_years"].sum() == pytest.approx(last.sum() / 52.1775, rel=1e-9)
    assert pc["exposure_years"].sum() == pytest.approx(seen2.sum() * 48 / 52.1775, rel=1e-9)
    assert "exposure-based" in pe["estimand"].iloc[0] and "complete case" in pc["estimand"].iloc[0]
    con = ex.consort.set_index("arm")
    assert con.loc["all", "randomized"] == len(d) and con.loc["all", "with_w24"] == seen1.sum() and con.loc["all", "with_w48"] == seen2.sum()
    assert con.loc["all", "analysed"] == pe["n_analysed"].sum() and (con.loc[arms, "analysed"].to_numpy() == pe.loc[arms, "n_analysed"].to_numpy()).all()
    assert "sap_consort.csv" in ex.tables()
    # the primary table carries n per visit beside n randomized / analysed (CONSORT 13a)
    cols = list(ex.primary.table.columns)
    assert cols[cols.index("n_analysed") + 1: cols.index("n_analysed") + 3] == ["n_with_w24", "n_with_w48"]
    assert pe["n_with_w24"].sum() == seen1.sum() and pe["n_with_w48"].sum() == seen2.sum()
    assert (pe.loc[arms, "n_with_w48"].to_numpy() == con.loc[arms, "with_w48"].to_numpy()).all()
    # MNAR: delta 0 reproduces the MAR estimate up to imputation noise; a worse missing follow-up on the active arms raises their RR
    (m,) = ex.mnar
    g = m.table.set_index(["arm", "delta"])
    assert set(g.index) == {(a, dl) for a in ("dmf", "ocrelizumab") for dl in (0.0, 2.0)}
    assert all(g.loc[(a, 2.0), "rate_ratio"] > g.loc[(a, 0.0), "rate_ratio"] for a in ("dmf", "ocrelizumab"))
    assert set(m.extra["tipping"]["arm"]) == {"dmf", "ocrelizumab"} and any("exp(delta)" in a for a in m.info["assumptions"])
    assert {"sap_mnar_mnar_tipping_point.csv", "sap_mnar_mnar_tipping_point_tipping.csv"} <= set(ex.tables())
    text = "\n".join(plan_lines(ex.sap.resolved))
    assert "MNAR tipping point, delta = 0, 2" in text and "exp(delta)" in text and "Missing data: exposure" in text
    # a single-visit cohort: the MNAR analysis is not run, and says so
    single = run_sap(_wald_plan("exposure"), d, arms=arms, reference="placebo")
    assert single.mnar[0].table.empty and any("mnar_tipping_point: not run" in x for x in single.deviations)
    assert "sap_mnar_mnar_tipping_point.csv" not in single.tables() and single.consort.set_index("arm").loc["all", "analysed"] == len(d)


# -- several visits: the secondary endpoints ------------------------------------------------------------
def test_multi_visit_secondary_endpoints(trial: pd.DataFrame) -> None:
    """On a two-visit table the plan's secondary endpoints are the several-visit fits themselves (same
    numbers as calling them with the plan's covariate terms); on one visit they are skipped (deviation)
    or refused (naming the field), and the first-lesion endpoint falls back to the lesion-free odds ratio."""
    from mseval.sap.covariates import derive as derive_cov
    from mseval.sap.secondary import check_visits
    from mseval.stats.visits import fit_cumulative_nb2, fit_first_lesion_cloglog

    d = trial[trial["arm"].isin(["placebo", "dmf", "ocrelizumab"])].reset_index(drop=True)
    arms = ["placebo", "dmf", "ocrelizumab"]
    v = _visits(d)
    v["gd_count"] = (v["net2"] // 2).astype("Int64")
    text = (default_sap_text().replace("test: auto", "test: wald").replace("imputations: 20", "imputations: 2")
            .replace("corr: ar1", "corr: exchangeable"))
    text = text.replace("- {column: site, transform: factor, label: site}", "- {column: gd_count, transform: any_vs_none}").replace(
        '    - {column: gd_count, transform: any_vs_none, label: "baseline Gd+ lesions (0 vs >= 1)"}\n', "")
    sap = parse_sap(text.encode(), "v.yaml")
    r = run_sap(sap, d, arms=arms, reference="placebo", visits=v)
    sec = {s.name: s for s in r.secondary}
    assert set(sec) == {"lesion_free", "net2_cumulative", "net2_gee", "gd_per_scan", "first_lesion_hazard"}
    covs = derive_cov(d, sap.primary["covariates"])
    direct = fit_cumulative_nb2(v, covs.data.drop(columns="net2"), covariates=covs.terms, reference="placebo").table.set_index("term")
    cum = sec["net2_cumulative"].table.set_index("arm")
    assert np.allclose(cum.loc[["dmf", "ocrelizumab"], "rate_ratio"], direct.loc[["dmf", "ocrelizumab"], "rate_ratio"], rtol=1e-10)
    assert np.allclose(cum.loc[["dmf", "ocrelizumab"], "ci_low"], direct.loc[["dmf", "ocrelizumab"], "ci_low"], rtol=1e-10)
    hz = fit_first_lesion_cloglog(v, covs.data.drop(columns="net2"), covariates=covs.terms, reference="placebo").table.set_index("term")
    fl = sec["first_lesion_hazard"].table.set_index("arm")
    assert np.allclose(fl.loc[["dmf", "ocrelizumab"], "hazard_ratio"], hz.loc[["dmf", "ocrelizumab"], "hazard_ratio"], rtol=1e-10, equal_nan=True)
    assert "proportional" in sec["first_lesion_hazard"].info["assumptions"]
    gee = sec["net2_gee"].table.set_index("arm")
    assert sec["net2_gee"].info["corr"] == "exchangeable" and gee.loc["dmf", "estimable"] and gee.loc["dmf", "ci_low"] < gee.loc["dmf", "rate_ratio"]
    assert sec["gd_per_scan"].table.set_index("arm").loc["dmf", "estimable"]
    assert all(f"sap_secondary_{n}.csv" in r.tables() for n in sec)
    # one follow-up scan: skipped with a deviation; first lesion -> lesion-free odds ratio; a plan without single_visit: skip is refused
    one = run_sap(sap, d, arms=arms, reference="placebo")
    assert sum("needs several visits" in x for x in one.deviations) == 3
    assert "odds_ratio" in {s.name: s for s in one.secondary}["first_lesion_hazard"].table.columns
    strict = parse_sap(text.replace("    corr: exchangeable\n    ci: small_sample\n    single_visit: skip\n", "    corr: exchangeable\n").encode(),
                       "strict.yaml")
    with pytest.raises(InputError) as err:
        check_visits(strict.resolved, False, strict.source)
    assert err.value.field == "secondary[2].corr" and "\n" not in str(err.value)
    check_visits(strict.resolved, True, strict.source)  # several visits: fine
    with pytest.raises(InputError) as err:
        parse_sap(text.replace("    endpoint: lesion_free\n", "    endpoint: lesion_free\n    corr: ar1\n").encode(), "x.yaml")
    assert err.value.field == "secondary[0].corr"


def test_cumulative_nb2_takes_the_plans_small_sample_ci_when_asked(trial: pd.DataFrame) -> None:
    """net2_cumulative with `ci: small_sample` (the default): below below_n_per_arm each arm's p and CI are the plan's
    small-sample test (auto -> permutation) on the per-patient totals, offset log(observed years), the plan's
    seed; the rate ratio is the NB2 fit's; at or above the threshold (and with `ci: wald`) the Wald CI stays."""
    from mseval.stats.small_sample import primary_tests
    from mseval.stats.visits import patient_totals

    arms = ["placebo", "dmf", "ocrelizumab"]
    d = trial[trial["arm"].isin(arms)].reset_index(drop=True)
    v = _visits(d)
    base = (default_sap_text().replace("imputations: 20", "imputations: 2").replace("n_permutations: 999", "n_permutations: 199")
            .replace("seed: 0", "seed: 4"))
    base = base[:base.index("  - name: net2_gee")]  # secondary: lesion_free, net2_cumulative only (speed)
    assert "    ci: small_sample\n" in base  # the default plan's (rule R6)
    small = parse_sap(base.replace("    ci: small_sample\n", "").encode(), "s.yaml")  # and the default of the field
    wald = parse_sap(base.replace("    ci: small_sample\n", "    ci: wald\n").encode(), "w.yaml")
    cum = {k: {s.name: s for s in run_sap(p, d, arms=arms, reference="placebo", visits=v).secondary}["net2_cumulative"]
           for k, p in (("small", small), ("wald", wald))}
    from mseval.sap.covariates import derive as derive_cov

    covs = derive_cov(d, small.primary["covariates"])  # the default plan's secondaries take the primary's covariates
    t = patient_totals(v, covs.data.drop(columns="net2"))
    t = t.loc[t["net2"].notna()].assign(net2=lambda x: x["net2"].astype(np.int64))
    assert cum["small"].info["formula"] == "net2 ~ " + " + ".join(["arm", *covs.terms])
    ref = primary_tests(t, cum["small"].info["formula"], "arm", "placebo", method="permutation", offset_col="followup_years", seed=4,
                        n_permutations=199).table.set_index("arm")
    got, w = cum["small"].table.set_index("arm"), cum["wald"].table.set_index("arm")
    for col in ("ci_low", "ci_high", "p_value"):
        assert np.allclose(got.loc[["dmf", "ocrelizumab"], col], ref.loc[["dmf", "ocrelizumab"], col], rtol=1e-12)
    assert np.allclose(got["rate_ratio"], w["rate_ratio"], rtol=1e-12, equal_nan=True)
    assert not np.allclose(got.loc[["dmf", "ocrelizumab"], "ci_low"], w.loc[["dmf", "ocrelizumab"], "ci_low"])
    assert "permutation" in cum["small"].info["ci"] and "permutation" in cum["small"].info["estimand"]
    big = parse_sap(base.replace("below_n_per_arm: 1000", "below_n_per_arm: 5").encode(), "b.yaml")
    above = {s.name: s for s in run_sap(big, d, arms=arms, reference="placebo", visits=v).secondary}["net2_cumulative"].table.set_index("arm")
    assert np.allclose(above["ci_low"], w["ci_low"], rtol=1e-12, equal_nan=True)
    with pytest.raises(InputError) as err:
        parse_sap(base.replace("    endpoint: lesion_free\n", "    endpoint: lesion_free\n    ci: small_sample\n").encode(), "x.yaml")
    assert err.value.field == "secondary[0].ci"


def test_gee_takes_its_randomization_ci_when_asked(trial: pd.DataFrame) -> None:
    """net2_gee with `ci: small_sample`: below below_n_per_arm each arm's p and CI are `gee_permutation_tests`'
    (the fit's working correlation, the plan's covariates, seed and permutations); the rate ratio is the GEE's."""
    from mseval.sap.covariates import derive as derive_cov
    from mseval.stats.gee_permutation import gee_permutation_tests

    arms = ["placebo", "dmf", "ocrelizumab"]
    d = trial[trial["arm"].isin(arms)].reset_index(drop=True)
    v = _visits(d)
    base = (default_sap_text().replace("imputations: 20", "imputations: 2").replace("n_permutations: 999", "n_permutations: 99")
            .replace("seed: 0", "seed: 6"))
    base = base[:base.index("  - name: gd_per_scan")]
    plans = {k: parse_sap(base.replace("    corr: ar1\n    ci: small_sample\n", f"    corr: ar1\n    ci: {k}\n").encode(), f"{k}.yaml") for k in ("small_sample", "wald")}
    gee = {k: {s.name: s for s in run_sap(p, d, arms=arms, reference="placebo", visits=v).secondary}["net2_gee"] for k, p in plans.items()}
    covs = derive_cov(d, plans["wald"].primary["covariates"])
    ref = gee_permutation_tests(v, covs.data.drop(columns="net2"), corr="ar1", covariates=covs.terms, reference="placebo", n_permutations=99,
                                seed=6).set_index("arm")
    got, w = gee["small_sample"].table.set_index("arm"), gee["wald"].table.set_index("arm")
    for col in ("ci_low", "ci_high", "p_value"):
        assert np.allclose(got.loc[["dmf", "ocrelizumab"], col], ref.loc[["dmf", "ocrelizumab"], col], rtol=1e-12)
    assert np.allclose(got["rate_ratio"], w["rate_ratio"], rtol=1e-12, equal_nan=True)
    assert "permutation" in gee["small_sample"].info["ci"] and "permutation" in gee["small_sample"].info["estimand"]
    assert "ci" not in gee["wald"].info
