"""Effects against the truth (counts-only trials, large n) and `mseval effects` / `mseval nbreg`
end to end on a small simulated cohort with oracle forecasts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

import data_schemas
from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial
from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial
from mseval.stats.count_model import fit_count_model
from mseval.stats.counterfactual import counterfactual_effects
from mseval.stats.ensemble_counts import forecast_means
from mseval.stats.heterogeneity import heterogeneity
from mseval.stats.prognostic import prognostic_adjustment
from mseval.stats.qini import qini_table
from mseval.stats.synthetic import fit_forecast_rate_ratios


@pytest.fixture(scope="module")
def big() -> tuple:
    cfg = TrialConfig(patients_per_arm=150, seed=31)
    return cfg, simulate_count_trial(cfg, samples=20, forecast_seed=4)


def test_counterfactual_effects_track_the_truth(big: tuple) -> None:
    """Oracle forecasts (20 Poisson draws of the true mean): per-patient effects correlate with the
    true ones (> 0.9), and each arm's average ratio-of-means CI covers the superpopulation ratio
    (5 arms at 95%; a miss in any would have probability ~ 0.23 for a correct method, so the check
    is that at most one misses)."""
    cfg, tr = big
    cf = counterfactual_effects(forecast_means(tr.counts), "placebo")
    truth = tr.truth.set_index(["patient_id", "arm"])["expected_count"]
    target = population_rate_ratios(cfg)
    misses = 0
    for r in cf.average.itertuples():
        p = cf.patients[cf.patients["arm"] == r.arm]
        true_diff = truth.loc[list(zip(p.patient_id, [r.arm] * len(p)))].to_numpy() - truth.loc[list(zip(p.patient_id, ["placebo"] * len(p)))].to_numpy()
        assert np.corrcoef(p["difference"], true_diff)[0, 1] > 0.9, r.arm
        misses += not (r.ratio_ci_low <= target[r.arm] <= r.ratio_ci_high)
    assert misses <= 1


def test_forecast_estimate_covers_marginal_truth(big: tuple) -> None:
    cfg, tr = big
    fit = fit_forecast_rate_ratios(tr.table, tr.counts, "net2 ~ arm", reference="placebo")
    target = population_rate_ratios(cfg)
    t = fit.table.set_index("term")
    inside = [t.loc[a, "ci_low"] <= target[a] <= t.loc[a, "ci_high"] for a in target if a != "placebo"]
    assert sum(inside) >= 4 and fit.samples == 20 and "fraction_missing_info" not in t.columns
    assert t["estimable"].all() and t["conditional_on"].str.contains("forecaster").all()


def test_responders_prognostic_and_qini(big: tuple) -> None:
    """With age modifying the effect, the top predicted responders have a stronger true effect than
    everyone; the oracle prognostic score shrinks the SE; the Qini area is positive."""
    cfg, tr = big
    means = forecast_means(tr.counts)
    cf = counterfactual_effects(means, "placebo")
    primary = fit_count_model(tr.table, "net2 ~ arm", reference="placebo").table
    rs = heterogeneity(tr.table, means, "placebo", primary, arms=["ifnb1a_sc"], truth=tr.truth).strata.set_index("stratum")
    assert rs.loc["top 10%", "true_rate_ratio"] < rs.loc["all", "true_rate_ratio"]
    assert rs.loc["all", "observed_rate_ratio"] == primary.set_index("term").loc["ifnb1a_sc", "rate_ratio"]
    prog = prognostic_adjustment(tr.table, means, "placebo", n_boot=50).table
    assert (prog["se_reduction_pct"] > 5).all() and (prog["sample_size_saving_pct"] > 0).all()
    assert (prog["saving_ci_low_pct"] > 0).all()  # the oracle score's gain is measured on observed outcomes, CI above 0
    p = cf.patients[cf.patients["arm"] == "dmf"].set_index("patient_id")
    q = qini_table(tr.table, {"dmf": p["expected_reference"] - p["expected"]}, "placebo", truth=tr.truth).area
    assert q["qini_area"].iloc[0] > 0 and 0 < q["qini_coefficient"].iloc[0] < 1


@pytest.fixture(scope="module")
def small_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eff")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=8, shape=(24, 24, 24), seed=8, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "fc", ForecasterSpec("oracle", samples=5, seed=2))
    return root / "cohort", root / "fc"


def test_effects_cli_end_to_end(small_trial: tuple[Path, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    cohort, fc = small_trial
    ids = pd.read_csv(cohort / "manifest.csv")["patient_id"]
    (tmp_path / "heldout.txt").write_text("\n".join(ids) + "\n")
    res = cli("effects", cohort, fc, "--out", tmp_path / "eff", "--power-sims", "3", "--heldout-patients", tmp_path / "heldout.txt")
    assert res.code == 0, res.err
    cal = pd.read_csv(tmp_path / "eff" / "counterfactual_calibrated.csv")
    assert len(cal) == 5 and {"calibrated_ratio", "ci_low", "ci_high", "conditional_on", "estimable", "note"} <= set(cal.columns)
    # every randomized patient held out: an adjusted analysis of the observed trial, labelled so (issue 22)
    assert cal["all_patients_heldout"].all() and cal["label"].str.contains("observed-data ratio estimator").all()
    out = tmp_path / "eff"
    for name in ["primary_endpoint.csv", "rate_ratios_observed.csv", "rate_ratios_forecast.csv", "adjusted_means.csv", "lesion_free.csv",
                 "counterfactual_patients.csv", "counterfactual_average.csv", "responders.csv", "qini_curve.csv", "qini_area.csv",
                 "prognostic.csv", "power_analytic.csv", "power_simulated.csv", "truth_comparison.csv", "counts.parquet", "effects.json",
                 "estimands.csv", "heterogeneity.csv"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "effects.json").read_text())
    jsonschema.validate(summary, data_schemas.load("effects_summary"))
    assert "forecaster" in summary["estimands"]["forecast_rate_ratio"]["conditional_on"]
    assert summary["heldout"]["all_patients"] and "adjusted analysis of the observed trial" in summary["estimands"]["counterfactual_calibrated_ratio"]["note"]
    est = pd.read_csv(out / "estimands.csv")
    assert {"quantity", "arm", "estimate", "estimand", "conditional_on", "estimable", "note"} <= set(est.columns)
    assert {"forecast_rate_ratio", "counterfactual_ratio_of_means", "heterogeneity_interaction"} <= set(est["quantity"])
    # each quantity names its own interval: 8 per arm -> the forecast RR's randomization interval, in the table and in effects.json
    how = est.groupby("quantity")["ci_method"].first()
    assert "permutation" in how["forecast_rate_ratio"] and how["forecast_rate_ratio"] == summary["forecast_model"]["pooling"]
    assert how["counterfactual_mean_difference"] == "normal approximation over patients"
    assert "kurtosis" in how["counterfactual_ratio_of_means"]
    # 8 patients per arm: every responder stratum is below the 10-per-arm minimum, flagged, no number
    rs = pd.read_csv(out / "responders.csv")
    small = rs[rs["stratum"] != "all"]
    assert (~small["estimable"]).all() and small["observed_rate_ratio"].isna().all()
    primary = pd.read_csv(out / "primary_endpoint.csv")
    assert len(primary) == 5 and primary[["observed_rate_ratio", "forecast_rate_ratio", "counterfactual_rate_ratio"]].notna().all().all()
    assert "ocrelizumab" in res.out


def test_effects_cov_robust_changes_the_observed_ci_and_is_recorded(small_trial: tuple[Path, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    """--cov robust: the observed NB2 rate ratios keep their estimates and take the sandwich CI (another
    width than the model-based one), effects.json records the choice; an unknown value is one line, exit 2."""
    cohort, fc = small_trial
    tables = {}
    for cov in ("expected", "robust"):
        res = cli("effects", cohort, fc, "--out", tmp_path / cov, "--power-sims", "0", "--cov", cov)
        assert res.code == 0, res.err
        tables[cov] = pd.read_csv(tmp_path / cov / "rate_ratios_observed.csv").set_index("term")
        assert json.loads((tmp_path / cov / "effects.json").read_text())["settings"]["cov"] == cov
    e, r = tables["expected"], tables["robust"]
    assert np.allclose(e["rate_ratio"], r["rate_ratio"], rtol=1e-9)
    assert (np.abs(np.log(r["ci_high"] / r["ci_low"]) / np.log(e["ci_high"] / e["ci_low"]) - 1) > 1e-3).all()
    bad = cli("effects", cohort, fc, "--out", tmp_path / "bad", "--cov", "sandwich")
    assert bad.code == 2 and "--cov" in bad.err and "\n" not in bad.err.strip() and not (tmp_path / "bad").exists()


def test_effects_primary_endpoint_reports_the_observed_interval_it_names(small_trial: tuple[Path, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    """By default (8 per arm) the primary endpoint's observed CI is the studentized bootstrap (not the glm.nb Wald CI of
    rate_ratios_observed.csv), named in the table, effects.json and the command's output; --observed-ci model prints the
    fit's own (the seeded bootstrap's determinism: tests/stats/test_observed_ci.py); an unknown choice is one line, exit 2, nothing written."""
    cohort, fc = small_trial
    prim, said = {}, {}
    for name, extra in {"auto": [], "model": ["--observed-ci", "model"], "b199": ["--observed-bootstrap", "199"]}.items():
        res = cli("effects", cohort, fc, "--out", tmp_path / name, "--power-sims", "0", *extra)
        assert res.code == 0, res.err
        prim[name], said[name] = pd.read_csv(tmp_path / name / "primary_endpoint.csv").set_index("arm"), res.out
    assert "observed CIs and p-values: studentized bootstrap" in said["auto"] and "glm.nb" in said["model"]
    fit = pd.read_csv(tmp_path / "auto" / "rate_ratios_observed.csv").set_index("term").loc[prim["auto"].index]
    info = json.loads((tmp_path / "auto" / "effects.json").read_text())["observed_model"]["primary_interval"]
    assert info["method"] == "bootstrap_t" and info["asked"] == "auto" and (prim["auto"]["observed_ci_method"] == info["ci_method"]).all()
    ok = prim["auto"]["observed_estimable"]
    assert ok.any()
    assert np.allclose(prim["auto"]["observed_rate_ratio"], fit["rate_ratio"], rtol=1e-12)
    assert not np.allclose(prim["auto"].loc[ok, "observed_ci_low"], fit.loc[ok, "ci_low"], rtol=1e-6)
    assert np.allclose(prim["model"]["observed_ci_low"], fit["ci_low"], rtol=1e-12, equal_nan=True)
    assert (prim["model"]["observed_ci_method"].str.contains("glm.nb")).all()
    # --observed-bootstrap sets the resamples: recorded, named, and it moves the interval (not the estimate)
    info199 = json.loads((tmp_path / "b199" / "effects.json").read_text())["observed_model"]["primary_interval"]
    assert info199["bootstrap_replicates"] == 199 and info["bootstrap_replicates"] == 999 and "199" in info199["ci_method"]
    assert np.allclose(prim["b199"]["observed_rate_ratio"], prim["auto"]["observed_rate_ratio"], rtol=1e-12)
    assert not np.allclose(prim["b199"].loc[ok, "observed_ci_low"], prim["auto"].loc[ok, "observed_ci_low"], rtol=1e-9)
    bad = cli("effects", cohort, fc, "--out", tmp_path / "bad", "--observed-ci", "wald")
    assert bad.code == 2 and "--observed-ci" in bad.err and "\n" not in bad.err.strip() and not (tmp_path / "bad").exists()


def test_effects_bad_input(small_trial: tuple[Path, Path], tmp_path: Path, cli) -> None:  # noqa: ANN001
    cohort, fc = small_trial
    assert cli("count", fc, "--out", tmp_path / "cnt").code == 0
    counts = pd.read_parquet(tmp_path / "cnt" / "counts.parquet")
    cases = {
        "missing samples": (counts.drop(index=[0]), "has 4 samples, others have 5"),
        "unknown arm": (counts.assign(arm=counts["arm"].replace("dmf", "aspirin")), "arm 'aspirin' is not in the arms table"),
        "missing block": (counts[~((counts.patient_id == "P001") & (counts.arm == "dmf"))], "no samples for patient 'P001' under arm 'dmf'"),
    }
    for name, (bad, words) in cases.items():
        bad.to_parquet(tmp_path / f"{name}.parquet")
        res = cli("effects", cohort, "--counts", tmp_path / f"{name}.parquet", "--out", tmp_path / "eff")
        # progress lines may precede it on stderr; the error itself is one line, the last
        last = res.err.strip().splitlines()[-1]
        assert res.code == 2 and last.startswith("mseval: error: ") and words in last and "Traceback" not in res.err, (name, res.err)
        assert not (tmp_path / "eff").exists(), name
    (tmp_path / "ho.txt").write_text("P001\nP999\n")
    res = cli("effects", cohort, "--counts", tmp_path / "cnt" / "counts.parquet", "--out", tmp_path / "eff", "--heldout-patients", tmp_path / "ho.txt")
    assert res.code == 2 and "held-out patient 'P999' is not in the cohort" in res.err and not (tmp_path / "eff").exists(), res.err
    res = cli("effects", cohort, fc, "--out", tmp_path / "eff", "--formula", "net2 ~ arm + shoe_size")
    assert res.code == 2 and "unknown column 'shoe_size'" in res.err and not (tmp_path / "eff").exists()


def test_nbreg_contract(tmp_path: Path, cli) -> None:  # noqa: ANN001
    data = Path(__file__).parent / "data" / "nb_trial.csv"
    res = cli("nbreg", data, "--formula", "net2 ~ arm + t2_volume_mm3", "--offset-years", "followup_years", "--reference", "placebo", "--out", tmp_path / "nb")
    assert res.code == 0, res.err
    rr = pd.read_csv(tmp_path / "nb" / "rate_ratios.csv")
    assert list(rr.columns[:5]) == ["term", "rate_ratio", "ci_low", "ci_high", "p_value"]
    assert {"dmf", "ocrelizumab", "t2_volume_mm3"} <= set(rr["term"])
    model = json.loads((tmp_path / "nb" / "model.json").read_text())
    assert {"alpha", "converged", "n"} <= set(model) and model["n"] == 360 and model["converged"] is True
    d = pd.read_csv(data)
    d.assign(net2=0).to_csv(tmp_path / "zeros.csv", index=False)
    d[d.arm == "dmf"].to_csv(tmp_path / "one_arm.csv", index=False)
    for name, words in [("zeros.csv", "all counts in 'net2' are zero"), ("one_arm.csv", "only one arm")]:
        res = cli("nbreg", tmp_path / name, "--out", tmp_path / "x")
        assert res.code == 2 and words in res.err and name in res.err and not (tmp_path / "x").exists(), res.err


# issue 22, item 5: the prognostic forecaster's independence (provenance) and the attainable saving
def test_effects_flags_a_trained_on_trial_forecaster_and_shows_the_attainable_saving(small_trial: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from mseval.effects import EffectsSettings, oracle_reference_mean, run_effects
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.lesions.observed import analysis_table
    from mseval.provenance import training_provenance, write_store_provenance
    from mseval.stats.prognostic import ATTAINABLE_LABEL, attainable_saving

    cohort_dir, fc = small_trial
    settings = EffectsSettings(power_sims=0, prognostic_bootstrap=20)
    s = run_effects(cohort_dir, fc, tmp_path / "indep", settings)
    pg = pd.read_csv(tmp_path / "indep" / "prognostic.csv")
    assert (pg["forecaster_independence"] == "not trained").all() and s["prognostic_forecaster"]["status"] == "not trained"
    assert np.isfinite(pg["attainable_saving_pct"]).all() and (pg["attainable_label"] == ATTAINABLE_LABEL).all()
    cohort = read_cohort(cohort_dir)
    ref = cohort.reference_arm

    expect = attainable_saving(analysis_table(cohort), oracle_reference_mean(cohort, ref), ref).set_index("arm")["attainable_saving_pct"]
    assert np.allclose(pg.set_index("arm")["attainable_saving_pct"].loc[expect.index], expect)
    est = pd.read_csv(tmp_path / "indep" / "estimands.csv")
    assert (est["quantity"] == "prognostic_saving_attainable").sum() == len(pg)
    assert all("attainable_saving_pct" in r for r in s["prognostic_saving"])
    # the same store, now recording that its checkpoint trained on 5 of this trial's patients
    fc2 = tmp_path / "fc_trained"
    shutil.copytree(fc, fc2)
    ck = str(ForecastStore.open(fc2).index()["checkpoint"].iloc[0])
    write_store_provenance(fc2, ck, training_provenance(cohort, cohort.patient_ids[:5], []))
    s2 = run_effects(cohort_dir, fc2, tmp_path / "trained", settings)
    pg2 = pd.read_csv(tmp_path / "trained" / "prognostic.csv")
    assert (~pg2["estimable"]).all() and pg2["note"].str.startswith(f"the prognostic forecaster trained on 5 of this trial's {len(cohort.patient_ids)} patients").all()
    assert (pg2["forecaster_independence"] == "trained on this trial").all() and s2["prognostic_forecaster"]["n_seen"] == 5
    est2 = pd.read_csv(tmp_path / "trained" / "estimands.csv")
    assert not est2.loc[est2["quantity"] == "prognostic_saving", "estimable"].any()


def test_a_real_cohort_has_no_attainable_saving(small_trial: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from mseval.effects import EffectsSettings, run_effects

    cohort_dir, fc = small_trial
    real = tmp_path / "real"
    shutil.copytree(cohort_dir, real)
    for name in ("simulation.json", "oracle_inputs.csv", "truth.csv", "truth_visits.csv", "truth_lesions.csv"):
        (real / name).unlink(missing_ok=True)
    s = run_effects(real, None, tmp_path / "out", EffectsSettings(power_sims=0, prognostic_bootstrap=20),
                    counts_path=_counts(cohort_dir, fc, tmp_path))
    pg = pd.read_csv(tmp_path / "out" / "prognostic.csv")
    assert "attainable_saving_pct" not in pg.columns and all("attainable_saving_pct" not in r for r in s["prognostic_saving"])
    assert (pg["forecaster_independence"] == "unknown").all() and pg["note"].str.contains("provenance is unknown").all()


def _counts(cohort_dir: Path, fc: Path, tmp: Path) -> Path:
    from mseval.lesions.ensemble import CountSettings, count_store

    out = tmp / "counts.parquet"
    count_store(fc, tmp / "_count", CountSettings()).counts.to_parquet(out)
    return out


def test_counterfactual_ratio_ci_uses_the_kurtosis_t_of_its_influence_values() -> None:
    """ratio CI = ratio x exp(-/+ t_df se_log), df = 2 n / (kurtosis - 1) of the paired log-ratio influence values."""
    from scipy import stats as st

    from mseval.stats.influence_t import kurtosis_df

    rng = np.random.default_rng(3)
    n = 60
    base = rng.lognormal(0.0, 1.0, n)
    means = pd.concat([pd.DataFrame({"patient_id": np.arange(n), "arm": "placebo", "expected": base}),
                       pd.DataFrame({"patient_id": np.arange(n), "arm": "dmf", "expected": 0.3 * base * rng.lognormal(0.0, 0.5, n)})])
    r = counterfactual_effects(means, "placebo").average.iloc[0]
    a, p = means[means.arm == "dmf"]["expected"].to_numpy(), base
    psi = (a - a.mean()) / a.mean() - (p - p.mean()) / p.mean()
    df = kurtosis_df(psi)
    se = psi.std(ddof=1) / np.sqrt(n)
    assert r.ratio_df == df and df < n - 1
    assert r.ratio_ci_high == pytest.approx(r.ratio_of_means * np.exp(st.t.ppf(0.975, df) * se), rel=1e-10)
    assert r.ratio_ci_low == pytest.approx(r.ratio_of_means * np.exp(-st.t.ppf(0.975, df) * se), rel=1e-10)
