"""`mseval effects`: treatment effects the way RRMS trials report them, observed and forecast.

Every number derived from the forecasts names its estimand (population, contrast, what it
conditions on) in its table (`estimand`, `conditional_on`, `ci_method`, `estimable`, `note`
columns), in `estimands.csv` (one row per arm x quantity) and in effects.json (`estimands`):

- forecast rate ratio: the NB2 rate ratio in the population these patients represent, randomized
  as in the trial, if their outcomes followed the forecaster's law; one NB2 fit on all samples
  stacked, patient-cluster sandwich CI (fully synthetic outcomes: no Rubin's rules, no fraction of
  missing information; event-free samples counted per term) -- below 1,000 patients in the smallest
  arm the randomization interval on each patient's forecast total instead (`fit_forecast_rate_ratios(ci="auto")`,
  the SAP's rule); conditional on the forecaster.
- K forecasters (a store whose index names the forecaster of each sample, each with its provenance in
  store.json; e.g. `mseval simulate-forecasts --kind nb2-bootstrap --forecasters K`): the forecast rate
  ratio and the counterfactual effects get the two-level variance (`mseval.stats.forecaster_variance`:
  within-forecaster sandwich / delta method plus the between-forecaster spread), estimand "the rate
  ratio a new trial would show, predicted by this training procedure"; `forecaster_variance`
  ("auto", "two-level", "conditional") chooses; two-level with one forecaster is refused.
- counterfactual ratio of means / mean difference: every patient under every arm, ratio of mean
  forecast counts over the same population; delta-method CI over patients (t, kurtosis df); conditional on the
  forecaster -- unless held-out patients with observed outcomes are given (`heldout_patients`),
  then `counterfactual_calibrated.csv` carries the forecaster's calibration error. Held-out
  patients are refused when the store's provenance shows the forecaster trained, validated or was
  tuned on them (`mseval.heldout`); being this trial's own randomized patients, the calibrated
  ratio is labelled an observed-data ratio estimator with the forecast as covariate (`label`).
- heterogeneity: the NB2 arm x predicted-benefit interaction (primary test; model-based SE, the
  patient-level sandwich beside it, which over-rejects: bench/RESULTS.md); responder strata
  are exploratory (minimum `min_stratum_per_arm` patients per arm), observed outcomes only.
- Qini: Radcliffe (2007) normalisation (perfect = 1, random ~ 0), ties averaged.
- prognostic adjustment: the saving in sample size measured on observed outcomes, bootstrap CI;
  flagged (not estimable) when the store's provenance shows the forecaster trained, validated or was
  tuned on this trial's patients, with a note when that provenance is unknown
  (`mseval.heldout.prognostic_independence`); on a simulated cohort the saving the observable oracle's
  score would give on the same trial beside it (`attainable_saving_pct`, "attainable (observable
  oracle)"; absent on real cohorts).
- power: outcome law and score-outcome relation from the observed NB2 fit; design rate ratio
  from the forecasts (an assumption).

Tables written to OUT (atomically, all or nothing):
    primary_endpoint.csv        rate ratios vs the reference, side by side: observed (NB2; CI and p from
                                `--observed-ci`, by default the studentized bootstrap below 1,000 per
                                arm: `observed_ci_method`), forecast (NB2 on the fully synthetic
                                samples), counterfactual (ratio of ensemble means over all patients)
                                [+ truth when simulated]
    estimands.csv               one row per arm x forecast-derived quantity: estimate, CI, estimand,
                                conditional_on, ci_method, estimable, note
    rate_ratios_observed.csv    every term of the observed NB2 model (incl. covariates), estimable + note;
                                Wald CIs with the SE of `cov` (expected: R's glm.nb summary)
    rate_ratios_forecast.csv    every term of the forecast NB2 model (two-level over K forecasters when K > 1)
    rate_ratios_forecast_conditional.csv, counterfactual_average_conditional.csv, forecasters.csv
                                (K > 1) the K forecasters' samples pooled as one, conditional CIs; per forecaster x arm
                                its conditional estimates (within-forecaster and Monte Carlo SE)
    consort.csv                 per arm (and all): randomized, with each visit, completed, lost by reason, analysed
                                (mseval.stats.missing_data.consort_counts); primary_endpoint.csv carries n_randomized /
                                n_analysed. A patient without a NET2 mask (no follow-up scan) is randomized, not analysed:
    not_analysed.csv            patient_id, arm, reason (e.g. 'no follow-up scan: dropout from w24')
    adjusted_means.csv          adjusted annualised NET2 rate per arm and % reduction, estimable + note
    lesion_free.csv             proportion free of NET2 lesions per arm; hazard ratio of any lesion (cloglog,
                                offset log(years)), odds ratio (logistic), risk difference (Newcombe CI),
                                estimable + note (separation flagged)
    counterfactual_patients.csv per patient x arm: expected count, difference and ratio vs reference
    counterfactual_average.csv  per arm: mean difference and ratio of means with CIs
    counterfactual_calibrated.csv (with held-out patients) the ratio corrected for forecaster error
    projections.csv             per arm x forecast-derived ratio: estimate and CI beside the observed CI of the
                                forecaster's training trial (or this trial's, when that is unavailable), and
                                whether the projection's CI is narrower (mseval/projections.py)
    rate_ratios_training_trial.csv  the training trial's observed NB2 rate ratios, when its provenance finds it
    heterogeneity.csv           per arm: the arm x predicted-benefit interaction test
    responders.csv              observed effects in the top 10/30/50% predicted responders (exploratory)
    qini_curve.csv, qini_area.csv
    prognostic.csv              SE and sample-size saving (with CI) from the prognostic score, the forecaster's
                                independence of the trial, and (simulated cohorts) the attainable saving
    power_analytic.csv, power_simulated.csv
    counts.parquet              the ensemble counts used (unless given with --counts)
    effects.json                settings, model information, estimands and headline numbers (and `sap`: the plan's
                                source, SHA-256, title, deviations, when one was run)
    sap.yaml, sap.json, sap_*.csv   with an analysis plan (`--sap`, `mseval.sap`): the plan as given, what it ran
                                (plan with defaults, hash, deviations, formulas, estimands), the adjusted primary table
                                (sap_primary.csv), the sensitivity analyses beside it, every model term, the deviations,
                                the secondary endpoints (sap_secondary_<name>.csv)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mseval import __version__
from mseval.errors import InputError
from mseval.io.atomic import atomic_dir, recorded_path, write_bytes_atomic, write_csv_atomic, write_json_atomic, write_parquet_atomic
from mseval.heldout import check_heldout, heldout_kind, prognostic_independence
from mseval.io.cohort import read_cohort
from mseval.lesions.ensemble import CountSettings, count_store
from mseval.lesions.observed import analysis_table
from mseval.nbreg import run_nbreg  # noqa: F401 - `mseval nbreg` lives in mseval/nbreg.py; kept importable from here
from mseval.projections import projections_frame
from mseval.sap.schema import Sap
from mseval.provenance import forecast_provenance
from mseval.stats.count_model import bootstrap_rate_ratios, fit_count_model, fit_lesion_free
from mseval.stats import counterfactual as CF
from mseval.stats import heterogeneity as HET
from mseval.stats import power as PW
from mseval.stats import prognostic as PG
from mseval.stats import qini as QI
from mseval.stats import forecaster_variance as FV
from mseval.stats import observed_ci as OCI
from mseval.stats import synthetic as SY
from mseval.stats.counterfactual import calibrated_counterfactual, counterfactual_effects
from mseval.stats.ensemble_counts import check_counts, forecast_means
from mseval.stats.heterogeneity import heterogeneity
from mseval.stats.missing_data import split_analysed
from mseval.stats.power import power_table
from mseval.stats.prognostic import prognostic_adjustment
from mseval.stats.qini import qini_table
from mseval.stats.synthetic import fit_forecast_rate_ratios
from mseval.training_trial import training_trial_effects


@dataclass(frozen=True)
class EffectsSettings:
    formula: str = "net2 ~ arm"
    connectivity: int = 26
    min_volume_mm3: float = 3.0
    cov: str = "expected"
    responder_fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
    power_sims: int = 50
    bootstrap: int = 0
    seed: int = 0
    min_stratum_per_arm: int = HET.MIN_PER_ARM
    prognostic_bootstrap: int = 200
    heldout_patients: tuple[str, ...] = ()
    forecaster_variance: str = "auto"
    """auto: two-level when the store holds K > 1 forecasters, conditional otherwise; two-level: required
    (K = 1 is an InputError); conditional: every sample pooled as one forecaster's, CIs conditional on it."""
    observed_ci: str = "auto"
    """The observed rate ratio's interval and test in the primary endpoint (`mseval.stats.observed_ci`): auto (the
    studentized bootstrap below 1,000 per arm, sandwich Wald above), bootstrap_t, robust, or model (the NB2 fit's own
    Wald CI, with `cov`; `rate_ratios_observed.csv` always holds the fit's)."""
    observed_bootstrap: int = OCI.BOOTSTRAP_REPLICATES
    """Bootstrap resamples of the observed interval when it is the studentized bootstrap."""


FORECASTER_VARIANCE = ("auto", "two-level", "conditional")


ESTIMANDS: dict[str, dict[str, str]] = {
    "forecast_rate_ratio": {"estimand": SY.ESTIMAND, "conditional_on": SY.CONDITIONAL_ON, "ci_method": SY.CI_METHOD,
                            "validation": "oracle forecaster: coverage of the true rate ratio in bench/RESULTS.md (bench/validity.py)"},
    "counterfactual_ratio_of_means": {"estimand": CF.ESTIMAND, "conditional_on": CF.CONDITIONAL_ON, "ci_method": CF.CI_METHOD,
                                      "validation": "oracle forecaster: coverage of the true ratio of means in bench/RESULTS.md"},
    "counterfactual_mean_difference": {"estimand": CF.DIFF_ESTIMAND, "conditional_on": CF.CONDITIONAL_ON,
                                       "ci_method": "normal approximation over patients"},
    "counterfactual_calibrated_ratio": {"estimand": CF.CAL_ESTIMAND, "conditional_on": CF.CAL_CONDITIONAL_ON,
                                        "ci_method": CF.CAL_CI_METHOD},
    "heterogeneity_interaction": {"estimand": HET.INTERACTION_ESTIMAND, "conditional_on": "observed outcomes of randomized patients; the score is a baseline quantity",
                                  "ci_method": f"Wald, {HET.SE_METHODS['model']} (the sandwich SE beside it, not the test: it over-rejects, bench/RESULTS.md)"},
    "responder_stratum_rate_ratio": {"estimand": HET.STRATUM_ESTIMAND, "conditional_on": "observed outcomes; exploratory, strata chosen by the forecasts",
                                     "ci_method": "NB2 Wald within the stratum (not adjusted for multiplicity)"},
    "qini_coefficient": {"estimand": "Qini coefficient of the forecast's ranking by predicted benefit (lesions per year prevented)",
                         "conditional_on": "observed outcomes of randomized patients", "ci_method": "none (descriptive)", "normalisation": QI.NORMALISATION},
    "prognostic_saving": {"estimand": PG.ESTIMAND, "conditional_on": PG.CONDITIONAL_ON, "ci_method": "percentile bootstrap of patients within arms"},
    "prognostic_saving_attainable": {"estimand": PG.ATTAINABLE_ESTIMAND, "conditional_on": "the observed trial and the simulator's parameters",
                                     "ci_method": "none (the point saving of the same analysis)", "label": PG.ATTAINABLE_LABEL},
    "power": {"estimand": PW.ESTIMAND, "conditional_on": "the observed trial's NB2 law and the design rate ratio (forecast ratio of means)",
              "ci_method": "Monte Carlo SE"},
}


_VALIDATED_TWO_LEVEL = ("trained NB2 forecaster, K = 10 bootstrap forecasters: coverage of the true rate ratio in bench/RESULTS.md "
                        "(bench/validity_forecasters.py)")
ESTIMANDS_TWO_LEVEL: dict[str, dict[str, str]] = {
    **ESTIMANDS,
    "forecast_rate_ratio": {"estimand": FV.ESTIMAND, "conditional_on": FV.CONDITIONAL_ON, "ci_method": FV.CI_METHOD, "validation": _VALIDATED_TWO_LEVEL},
    "counterfactual_ratio_of_means": {"estimand": FV.CF_ESTIMAND, "conditional_on": FV.CONDITIONAL_ON, "ci_method": FV.CI_METHOD,
                                      "validation": _VALIDATED_TWO_LEVEL},
    "counterfactual_mean_difference": {"estimand": FV.CF_DIFF_ESTIMAND, "conditional_on": FV.CONDITIONAL_ON, "ci_method": FV.CI_METHOD},
}
"""The estimands when the store holds K > 1 forecasters and the two-level variance is used."""


def use_two_level(mode: str, forecasters: int) -> bool:
    """Whether the forecast effects get the two-level variance: `mode` auto / two-level / conditional
    with K `forecasters`. two-level with K = 1 is an InputError (no between-forecaster spread exists)."""
    if mode not in FORECASTER_VARIANCE:
        raise InputError(None, f"--forecaster-variance {mode!r}: choose one of {', '.join(FORECASTER_VARIANCE)}", field="forecaster_variance")
    if mode == "two-level" and forecasters < 2:
        raise InputError(None, f"--forecaster-variance two-level needs at least 2 forecasters; the forecasts hold {forecasters} "
                               "(write K with e.g. mseval simulate-forecasts --kind nb2-bootstrap --forecasters K)", field="forecaster_variance")
    return mode != "conditional" and forecasters > 1


def attach_forecasters(counts: pd.DataFrame, forecasts_dir: str | Path | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """counts with a `forecaster` column (from the counts themselves, else from the store's index:
    `mseval.io.store.store_forecasters`, which refuses a store mixing forecasters without provenance)
    and {"ids": [...], "provenance": {id: record}}. One forecaster: ids [0], counts unchanged."""
    from mseval.io.store import store_forecasters

    if "forecaster" in counts.columns:
        ids = sorted(int(k) for k in counts["forecaster"].unique())
        prov: dict = {}
        if forecasts_dir is not None:
            prov = store_forecasters(forecasts_dir).provenance
        if len(ids) > 1 and any(k not in prov for k in ids):
            raise InputError(None, f"the counts mix {len(ids)} forecasters and no forecast store records their provenance (give the store "
                                   "they were counted from)", field="forecaster")
        return counts, {"ids": ids, "provenance": prov}
    if forecasts_dir is None:
        return counts, {"ids": [0], "provenance": {}}
    sf = store_forecasters(forecasts_dir)
    if sf.count < 2:
        return counts, {"ids": sf.ids, "provenance": sf.provenance}
    merged = counts.merge(sf.samples, on=["patient_id", "arm", "sample"], how="left")
    if merged["forecaster"].isna().any():
        raise InputError(Path(forecasts_dir) / "index.parquet", "the counts hold samples the store's index does not list", field="forecaster")
    return merged.assign(forecaster=merged["forecaster"].astype(np.int64)), {"ids": sf.ids, "provenance": sf.provenance}


def _truth_comparison(truth: pd.DataFrame, cf_patients: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per arm: the cohort's true ratio of mean counts and the correlation of forecast and true
    per-patient effects (differences vs the reference)."""
    t = truth.set_index(["patient_id", "arm"])["expected_count"]
    rows = []
    for arm, g in cf_patients.groupby("arm"):
        if arm == reference:
            continue
        ids = g["patient_id"].to_numpy()
        true_diff = t.loc[[(i, arm) for i in ids]].to_numpy() - t.loc[[(i, reference) for i in ids]].to_numpy()
        r = stats.pearsonr(g["difference"], true_diff)[0] if len(ids) > 2 and np.std(true_diff) > 0 and g["difference"].std() > 0 else np.nan
        rows.append({"arm": arm, "true_ratio_of_means": float(t.loc[[(i, arm) for i in ids]].sum() / t.loc[[(i, reference) for i in ids]].sum()),
                     "true_mean_difference": float(true_diff.mean()), "effect_correlation": float(r)})
    return pd.DataFrame(rows)


def run_effects(
    cohort_dir: str | Path,
    forecasts_dir: str | Path | None,
    out: str | Path,
    settings: EffectsSettings = EffectsSettings(),
    *,
    counts_path: str | Path | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    sap: Sap | None = None,
) -> dict[str, Any]:
    """Estimate every effect; write the tables listed in the module docstring to `out`. With an
    analysis plan `sap` (`mseval.sap.schema.load_sap`), also run it (`mseval.sap.runner.run_sap`) and
    write its tables (sap_*.csv), the plan as given (sap.yaml) and what it ran (sap.json)."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    cohort = read_cohort(cohort_dir)
    ref = cohort.reference_arm
    arms = list(cohort.arms["arm"])
    check_heldout(cohort, forecasts_dir, settings.heldout_patients)  # not in the cohort, or seen by the forecaster: refused
    held = heldout_kind(cohort, settings.heldout_patients) if settings.heldout_patients else None
    say("observed counts from the NET2 masks")
    randomized = analysis_table(cohort, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3, require_observed=False)
    table, consort, unanalysed = split_analysed(randomized, cohort.visits)  # patients without a NET2 mask: randomized, not analysed
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if counts_path is not None:
            counts_file = Path(counts_path)
            if not counts_file.is_file():
                raise InputError(counts_file, "file not found")
            counts = pd.read_parquet(counts_file)
        else:
            if forecasts_dir is None:
                raise InputError(None, "give a forecast store or --counts", field="forecasts")
            say("counting forecast lesions")
            counts = count_store(forecasts_dir, tmp / "_count", CountSettings(settings.connectivity, settings.min_volume_mm3), workers=workers).counts
            counts_file = tmp / "counts.parquet"
            write_parquet_atomic(counts, counts_file)
            import shutil

            shutil.rmtree(tmp / "_count", ignore_errors=True)
        counts, forecasters = attach_forecasters(counts, forecasts_dir)
        K = len(forecasters["ids"])
        two_level = use_two_level(settings.forecaster_variance, K)
        S = check_counts(counts, cohort.patient_ids, arms, counts_file)
        say("observed NB2 model")
        observed = fit_count_model(table, settings.formula, reference=ref, cov=settings.cov, file=str(cohort.root / "manifest.csv"))
        obs_ci = OCI.observed_intervals(table, observed, method=settings.observed_ci, seed=settings.seed, n_bootstrap=settings.observed_bootstrap,
                                        file=str(cohort.root / "manifest.csv"))
        obs_words = "; ".join(dict.fromkeys(obs_ci["ci_method"]))
        say(f"observed rate ratio interval: {obs_words or 'none (one arm)'}")
        lesion_free = fit_lesion_free(table, reference=ref)
        sap_result = None
        if sap is not None:
            from mseval.sap.runner import run_sap
            from mseval.sap.schema import check_against

            say(f"analysis plan: {sap.doc.get('title')}")
            sap_ref = check_against(sap, table.columns, arms, ref)
            per_visit = None
            if cohort.visits is not None:
                from mseval.lesions.visit_counts import per_visit_counts

                say("per-visit counts (the plan's missing-data strategy and several-visit endpoints)")
                per_visit = per_visit_counts(cohort, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3)
            # every randomized patient (net2 missing without a follow-up scan): n randomized / analysed, CONSORT
            sap_result = run_sap(sap, randomized, arms=arms, reference=sap_ref, file=str(cohort.root / "manifest.csv"), visits=per_visit)
        say("observed NB2 model of the forecaster's training trial (from the store's provenance)")
        training = training_trial_effects(cohort_dir, forecasts_dir, settings.formula, reference=ref, connectivity=settings.connectivity,
                                          min_volume_mm3=settings.min_volume_mm3, observed_ci=settings.observed_ci, seed=settings.seed,
                                          n_bootstrap=settings.observed_bootstrap)
        means = forecast_means(counts)
        say(f"forecast NB2 models ({S} fully synthetic samples)")
        fc = fit_forecast_rate_ratios(table, counts, settings.formula, reference=ref, ci="auto", seed=settings.seed)
        say("counterfactual effects")
        cf = counterfactual_effects(means, ref)
        fc_conditional, cf_conditional, per_forecaster = fc.table, cf.average, None
        estimands_meta = ESTIMANDS
        if two_level:
            say(f"two-level variance over {K} forecasters (within-forecaster sandwich + between-forecaster spread)")
            fe = FV.forecaster_effects(table, counts, settings.formula, reference=ref)
            fc_table, cf_avg, per_forecaster = fe.rate_ratios, fe.counterfactual, fe.per_forecaster
            extra = [c for c in cf.average.columns if c not in cf_avg.columns]  # per-patient difference quantiles: pooled ensemble means
            cf_avg = cf_avg.merge(cf.average[["arm", *extra]], on="arm", how="left")
            estimands_meta = ESTIMANDS_TWO_LEVEL
        else:
            fc_table, cf_avg = fc.table, cf.average
            # the forecast RR's interval depends on the trial's size (ci="auto"): name the one used
            fc_ci = "; ".join(dict.fromkeys(fc.table.loc[fc.table["term"].isin(arms), "ci_method"].astype(str))) or SY.CI_METHOD
            estimands_meta = {**ESTIMANDS, "forecast_rate_ratio": {**ESTIMANDS["forecast_rate_ratio"], "ci_method": fc_ci}}
        calibrated = None
        if settings.heldout_patients:
            calibrated = calibrated_counterfactual(means, table, list(settings.heldout_patients), ref)
            assert held is not None
            calibrated = calibrated.assign(estimator=held["estimator"], label=held["label"], all_patients_heldout=held["all_patients"])
        het = heterogeneity(table, means, ref, observed.table, fractions=settings.responder_fractions,
                            min_per_arm=settings.min_stratum_per_arm, truth=cohort.truth)
        benefit = {a: (cf.patients[cf.patients["arm"] == a].set_index("patient_id")["expected_reference"]
                       - cf.patients[cf.patients["arm"] == a].set_index("patient_id")["expected"]) for a in arms if a != ref}
        qini = qini_table(table, benefit, ref, truth=cohort.truth)
        prog = prognostic_adjustment(table, means, ref, settings.formula, n_boot=settings.prognostic_bootstrap, seed=settings.seed)
        provenance = forecast_provenance(cohort_dir, forecasts_dir) if forecasts_dir is not None else None
        independence = prognostic_independence(cohort, forecasts_dir, provenance)
        prog_table = PG.with_independence(prog.table, independence)
        oracle_mean = oracle_reference_mean(cohort, ref, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3)
        if oracle_mean is not None:
            say("attainable prognostic saving (observable oracle's score)")
            prog_table = prog_table.merge(PG.attainable_saving(table, oracle_mean, ref, settings.formula), on="arm", how="left")
        say("power")
        power = power_table(table, means, ref, sims=settings.power_sims, seed=settings.seed)
        primary = _primary(observed, obs_ci, fc_table, cf_avg, arms, ref, two_level=two_level)
        primary = primary.merge(consort[["arm", "randomized", "analysed"]].rename(columns=lambda c: c if c == "arm" else f"n_{c}"), on="arm", how="left")
        estimands = _estimands_table(fc_table, cf_avg, calibrated, het.interaction, qini.area, prog_table, meta=estimands_meta)
        projections = projections_frame(primary, training.table if training.available else None, calibrated, training_note=training.sentence,
                                        forecasters=K if two_level else 1)
        truth_cmp = None
        if cohort.truth is not None:
            truth_cmp = _truth_comparison(cohort.truth, cf.patients, ref)
            primary = primary.merge(truth_cmp[["arm", "true_ratio_of_means"]], on="arm", how="left")
        files = {
            "primary_endpoint.csv": primary,
            "rate_ratios_observed.csv": observed.table,
            "estimands.csv": estimands,
            "rate_ratios_forecast.csv": fc_table,
            "adjusted_means.csv": observed.arm_means,
            "lesion_free.csv": lesion_free.table,
            "counterfactual_patients.csv": cf.patients,
            "counterfactual_average.csv": cf_avg,
            "heterogeneity.csv": het.interaction,
            "responders.csv": het.strata,
            "qini_curve.csv": qini.curve,
            "qini_area.csv": qini.area,
            "prognostic.csv": prog_table,
            "power_analytic.csv": power.analytic,
            "power_simulated.csv": power.simulated,
            "projections.csv": projections,
            "consort.csv": consort,
            "not_analysed.csv": unanalysed,
        }
        if two_level:
            files["rate_ratios_forecast_conditional.csv"] = fc_conditional
            files["counterfactual_average_conditional.csv"] = cf_conditional
            files["forecasters.csv"] = per_forecaster
        if training.available:
            files["rate_ratios_training_trial.csv"] = training.table
        if truth_cmp is not None:
            files["truth_comparison.csv"] = truth_cmp
        if calibrated is not None:
            files["counterfactual_calibrated.csv"] = calibrated
        if settings.bootstrap > 0:
            say(f"bootstrap of the observed rate ratios ({settings.bootstrap} patient resamples)")
            boot = bootstrap_rate_ratios(table, settings.formula, reference=ref, n_resamples=settings.bootstrap, seed=settings.seed, workers=workers)
            files["rate_ratios_bootstrap.csv"] = boot.table.assign(failed_fits=boot.failed)
        if sap_result is not None:
            files.update(sap_result.tables())
            write_json_atomic(sap_result.record(), tmp / "sap.json")
            write_bytes_atomic(sap.text, tmp / "sap.yaml")
        for name, df in files.items():
            write_csv_atomic(df, tmp / name)
        summary = {
            "mseval_version": __version__,
            "settings": {**asdict(settings), "reference": ref, "samples": S, "counts": recorded_path(counts_path, out) if counts_path else "counted from the store",
                         "observed_counts": "components of each patient's net2_mask"},
            "observed_model": {**observed.model_info(), "primary_interval": {
                "ci_method": obs_words, "method": "; ".join(dict.fromkeys(obs_ci["method"])),
                "asked": settings.observed_ci, "bootstrap_replicates": settings.observed_bootstrap, "seed": settings.seed,
                "note": "primary_endpoint.csv's observed CI and p-value; rate_ratios_observed.csv holds the NB2 fit's own "
                        f"({settings.cov} information, as R's glm.nb)"}},
            "forecast_model": {"samples": fc.samples, "failed_fits": fc.failed, "outcomes": "fully synthetic (every outcome drawn from the forecaster)",
                               "pooling": estimands_meta["forecast_rate_ratio"]["ci_method"], "note": fc.note, "forecasters": K,
                               "variance": "two-level" if two_level else "conditional on the forecaster" + (
                                   f" (the {K} forecasters' samples pooled as one)" if K > 1 else ""),
                               "forecaster_provenance": {str(k): v for k, v in forecasters["provenance"].items()}},
            "estimands": {**estimands_meta, **({"counterfactual_calibrated_ratio": {
                **ESTIMANDS["counterfactual_calibrated_ratio"], "estimator": held["label"], "note": held["sentence"]}}
                if calibrated is not None and held is not None else {"counterfactual_calibrated_ratio": {
                "estimand": CF.CAL_ESTIMAND, "note": "not computed: no held-out patients with observed outcomes were given"}})},
            "heldout_patients": len(settings.heldout_patients),
            "heldout": held,
            "training_trial": training.to_dict(),
            "primary_endpoint": primary.replace({np.nan: None}).to_dict("records"),
            "patients": int(len(table)),
            "patients_randomized": int(len(randomized)),
            "not_analysed": unanalysed.to_dict("records"),
            "provenance": provenance,
            "prognostic_forecaster": independence,
            "prognostic_saving": _prognostic_headline(prog_table),
            "sap": None if sap_result is None else {"source": sap.source, "sha256": sap.sha256, "title": sap.doc.get("title"),
                                                    "deviations": sap_result.deviations, "files": ["sap.yaml", "sap.json", *sap_result.tables()]},
        }
        write_json_atomic(summary, tmp / "effects.json")
    return summary


def _primary(observed: Any, obs_ci: pd.DataFrame, forecast: pd.DataFrame, cf_avg: pd.DataFrame, arms: list[str], reference: str, *,
             two_level: bool = False) -> pd.DataFrame:
    """One row per compared arm: the observed rate ratio with the interval of `obs_ci` (`observed_ci.observed_intervals`),
    the forecast and the counterfactual rate ratios with theirs."""
    o = obs_ci.set_index("arm")
    f = forecast.set_index("term")
    c = cf_avg.set_index("arm")
    rows = []
    for arm in arms:
        if arm == reference:
            continue
        rows.append({
            "arm": arm,
            "observed_rate_ratio": o.loc[arm, "rate_ratio"], "observed_ci_low": o.loc[arm, "ci_low"], "observed_ci_high": o.loc[arm, "ci_high"], "observed_p_value": o.loc[arm, "p_value"],
            "observed_estimable": bool(o.loc[arm, "estimable"]), "observed_note": o.loc[arm, "note"], "observed_ci_method": o.loc[arm, "ci_method"],
            "forecast_rate_ratio": f.loc[arm, "rate_ratio"], "forecast_ci_low": f.loc[arm, "ci_low"], "forecast_ci_high": f.loc[arm, "ci_high"],
            "forecast_estimable": bool(f.loc[arm, "estimable"]), "forecast_note": f.loc[arm, "note"],
            "forecast_conditional_on": FV.CONDITIONAL_ON if two_level else SY.CONDITIONAL_ON,
            "counterfactual_rate_ratio": c.loc[arm, "ratio_of_means"], "counterfactual_ci_low": c.loc[arm, "ratio_ci_low"], "counterfactual_ci_high": c.loc[arm, "ratio_ci_high"],
            "counterfactual_estimable": bool(c.loc[arm, "estimable"]), "counterfactual_note": c.loc[arm, "note"],
            "counterfactual_conditional_on": FV.CONDITIONAL_ON if two_level else CF.CONDITIONAL_ON,
        })
    return pd.DataFrame(rows)


def _estimands_table(fc: pd.DataFrame, cf_avg: pd.DataFrame, calibrated: pd.DataFrame | None, interaction: pd.DataFrame,
                     qini_area: pd.DataFrame, prog: pd.DataFrame, *, meta: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per arm x forecast-derived quantity (quantity, arm, estimate, ci_low, ci_high, estimand,
    conditional_on, ci_method, estimable, note): the table a reader checks before quoting a number."""
    rows: list[dict[str, Any]] = []

    def add(quantity: str, df: pd.DataFrame | None, arm_col: str, est: str, lo: str | None, hi: str | None,
            ok: str = "estimable", note: str = "note", own_method: bool = False) -> None:
        if df is None or df.empty:
            return
        m = (meta or ESTIMANDS)[quantity]
        for r in df.to_dict("records"):
            rows.append({"quantity": quantity, "arm": r[arm_col], "estimate": r[est], "ci_low": r[lo] if lo else np.nan,
                         "ci_high": r[hi] if hi else np.nan, "estimand": m["estimand"], "conditional_on": m["conditional_on"],
                         "ci_method": (r.get("ci_method") if own_method else None) or m["ci_method"],  # the forecast RR's depends on n
                         "estimable": bool(r.get(ok, True)), "note": r.get(note, "") or ""})

    add("forecast_rate_ratio", fc, "term", "rate_ratio", "ci_low", "ci_high", own_method=True)
    add("counterfactual_ratio_of_means", cf_avg, "arm", "ratio_of_means", "ratio_ci_low", "ratio_ci_high")
    add("counterfactual_mean_difference", cf_avg, "arm", "mean_difference", "difference_ci_low", "difference_ci_high",
        ok="difference_estimable", note="difference_note")
    add("counterfactual_calibrated_ratio", calibrated, "arm", "calibrated_ratio", "ci_low", "ci_high")
    add("heterogeneity_interaction", interaction, "arm", "interaction_ratio", "ci_low", "ci_high")
    add("qini_coefficient", qini_area, "arm", "qini_coefficient", None, None)
    if not prog.empty:
        add("prognostic_saving", prog.assign(saving=prog["sample_size_saving_pct"] / 100, lo=prog["saving_ci_low_pct"] / 100,
                                             hi=prog["saving_ci_high_pct"] / 100), "arm", "saving", "lo", "hi")
    if "attainable_saving_pct" in prog.columns:
        add("prognostic_saving_attainable", prog.assign(saving=prog["attainable_saving_pct"] / 100,
                                                        ok=np.isfinite(prog["attainable_saving_pct"].to_numpy(dtype=float)), why=""),
            "arm", "saving", None, None, ok="ok", note="why")
    return pd.DataFrame(rows)


def oracle_reference_mean(cohort: Any, reference: str, *, connectivity: int = 26, min_volume_mm3: float = 3.0) -> pd.Series | None:
    """Expected NET2 count over each patient's follow-up under the reference arm, by patient_id, from the
    observable oracle's predictive law (`mseval.simulate.observable_oracle`); None for a cohort that was not simulated."""
    from mseval.lesions.baseline_features import baseline_features
    from mseval.simulate.observable_oracle import cohort_observable_pmf

    if not (Path(str(cohort.root)) / "simulation.json").is_file():
        return None
    feats = baseline_features(cohort, outcome=False, connectivity=connectivity, min_volume_mm3=min_volume_mm3).assign(arm=reference)
    pmf = cohort_observable_pmf(cohort.root, feats)
    if pmf is None:
        return None
    return pd.Series(pmf @ np.arange(pmf.shape[1]), index=feats["patient_id"].astype(str).to_numpy(), name="oracle_expected_reference")


def _prognostic_headline(prog: pd.DataFrame) -> list[dict[str, Any]]:
    """Per arm: the measured saving (%) with its CI, and the attainable one where the cohort is simulated (absent otherwise)."""
    cols = [c for c in ("arm", "sample_size_saving_pct", "saving_ci_low_pct", "saving_ci_high_pct", "attainable_saving_pct",
                        "attainable_label", "forecaster_independence", "estimable", "note") if c in prog.columns]
    return prog[cols].replace({np.nan: None}).to_dict("records")
