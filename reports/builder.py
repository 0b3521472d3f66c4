"""Assemble a trial-style report from a cohort, its forecast store and the result tables.

`build_report(cohort_dir, forecasts_dir, out)` checks that the store holds every patient under
every arm, counts the forecast lesions once, runs `mseval evaluate` and `mseval effects` (unless
their folders are given), draws every figure, and writes, into a temporary folder renamed to
`out` at the end (all or nothing):

    report.html        one self-contained file (figures inlined as base64 PNG, CSS inline, no network)
    report.md          the same numbers as text
    figures/*.pdf|png  every figure in `ReportSettings.figure_formats` (default PDF with vector text and 300-dpi PNG;
                       `mseval report --figure-formats`); summary.json lists the files written
    tables/*.csv       every table of the report
    summary.json       the headline numbers (schema `data_schemas/report_summary.schema.json`)
    results/           the evaluation and effects folders (and counts) when computed here

The same inputs give byte-identical report.html, report.md, summary.json, tables and figures:
no dates, no output paths, fixed figure metadata.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.errors import InputError
from reports import figures as F
from reports import metric_cells as MC
from reports import numbers as N
from reports import projections as P
from reports import settings_table as S
from reports import tables as T
from reports.context import build_context
from reports.sap_section import SAP_TABLES, read_sap, sap_context
from reports.forecast_only import build_forecast_only_report, followup_mode
from reports.render import render_html, render_md
from reports.style import arm_colors, arm_labels, figure_renderings



CSS_PX_PER_INCH = 125  # figures shown at 125 CSS px per inch: 6.5 in -> 812 px (sharp: the PNG has html_dpi pixels per inch)


@dataclass(frozen=True)
class ReportSettings:
    """Settings of the analyses a report runs (ignored for folders given ready-made)."""

    connectivity: int = 26
    min_volume_mm3: float = 3.0
    detection_preset: str | None = None
    formula: str = "net2 ~ arm"
    n_boot: int = 1000
    power_sims: int = 50
    seed: int = 0
    workers: int = 1
    figure_dpi: int = 300
    html_dpi: int = 150
    figure_formats: tuple[str, ...] = ("pdf", "png")
    sap: str | None = None
    """Analysis plan (a SAP file, or "default") run by the effects this report computes (`mseval effects --sap`)."""
    observed_bootstrap: int = 999
    """Resamples of the observed rate ratio's studentized bootstrap in the effects this report computes
    (`mseval effects --observed-bootstrap`)."""


@dataclass
class Report:
    """What `build_report` wrote: the folder, the headline numbers and the files."""

    out: Path
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)

    @property
    def html(self) -> Path:
        return self.out / "report.html"


# -- input checks ---------------------------------------------------------------------------
def check_store_covers_cohort(cohort: Any, store: Any, forecasts_dir: Path) -> None:
    """InputError naming what is missing when the store lacks a patient or an arm of the cohort."""
    arms = list(cohort.arms["arm"])
    have = set(store.keys())
    store_patients, store_arms = set(store.patients), set(store.arms)
    missing_p = [p for p in cohort.patient_ids if p not in store_patients]
    missing_a = [a for a in arms if a not in store_arms]

    def names(xs: list[str]) -> str:
        return ", ".join(xs[:5]) + (f" and {len(xs) - 5} more" if len(xs) > 5 else "")

    problems = []
    if missing_a:
        problems.append(f"arm{'s' if len(missing_a) > 1 else ''} {names(missing_a)} (of {len(arms)})")
    if missing_p:
        problems.append(f"patient{'s' if len(missing_p) > 1 else ''} {names(missing_p)} (of {len(cohort.patient_ids)})")
    if problems:
        raise InputError(forecasts_dir, f"the forecast store does not match the cohort {cohort.root}: it lacks {' and '.join(problems)}; "
                                        "a report needs every patient under every arm")
    holes = [(p, a) for p in cohort.patient_ids for a in arms if (p, a) not in have]
    if holes:
        p, a = holes[0]
        raise InputError(forecasts_dir, f"the forecast store lacks patient {p!r} under arm {a!r} ({len(holes)} patient-arm blocks missing); "
                                        "a report needs every patient under every arm")


def _read(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    path = folder / name
    if not path.is_file():
        if required:
            raise InputError(path, "file not found (not an `mseval evaluate` / `mseval effects` output folder?)")
        return None
    try:
        return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if not math.isfinite(f) else f
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _records(df: pd.DataFrame) -> list[dict]:
    return [_clean(r) for r in df.to_dict("records")]


def _versions() -> dict[str, str]:
    out = {"mseval": __version__}
    for pkg in ("numpy", "scipy", "pandas", "statsmodels", "nibabel", "matplotlib", "jinja2"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _metric(metrics: pd.DataFrame, group: str, name: str) -> dict[str, Any] | None:
    m = metrics[(metrics["group"].astype(str) == group) & (metrics["metric"] == name)]
    if not len(m):
        return None
    r = m.iloc[0]
    return _clean({"value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"]})



# -- what a reader must know before any number --------------------------------------------------
DEGENERATE_SHARE = 0.1
"""A forecaster is flagged degenerate when its samples hold fewer than this share of the observed
lesions per patient (or none at all): its forecast-based results then describe a model that
predicts (almost) no lesions, whatever the numbers look like."""



def _observed(patients: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: arm, observed_count, followup_years (from the manifest)."""
    from mseval.simulate.model import WEEKS_PER_YEAR

    fu = manifest.set_index(manifest["patient_id"].astype(str))["followup_weeks"] / WEEKS_PER_YEAR
    d = patients[["patient_id", "arm", "observed_count"]].copy()
    d["followup_years"] = d["patient_id"].astype(str).map(fu)
    return d


def _forecast_load(patients: pd.DataFrame) -> dict[str, Any]:
    """Lesions held by the forecasts of each patient's allocated arm vs the observed lesions."""
    s = patients["samples"].astype(float)
    lesions = float((patients["mean_count"].astype(float) * s).sum())
    n_samples = int(s.sum())
    per_sample = lesions / n_samples if n_samples else float("nan")
    obs = float(patients["observed_count"].astype(float).mean())
    degenerate = n_samples > 0 and (lesions == 0 or (obs > 0 and per_sample < DEGENERATE_SHARE * obs))
    return {"forecast_lesions": int(round(lesions)), "samples": n_samples, "lesions_per_sample": per_sample, "observed_per_patient": obs,
            "samples_per_patient": int(s.min()) if len(s) else 0, "degenerate": bool(degenerate),
            "sentence": (f"DEGENERATE FORECASTER: the forecasts of the allocated arms hold {int(round(lesions))} lesions in {n_samples} samples "
                         f"({N.num(per_sample)} per sample) against {N.num(obs)} observed lesions per patient; every forecast-based result "
                         "below describes a model that forecasts (almost) no lesions.") if degenerate else ""}


def _mask_ratios(df: pd.DataFrame, keys: list[tuple[str, str, str, str]], labels: dict[str, str],
                 reasons: dict[str, tuple[str, ...]] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Copy of `df` with every non-estimable ratio (and its CI) set to NaN, so figures leave it
    out; returns the footnotes ('Drug: forecast RR not estimable (reason)'). keys: (name, est, lo, hi)."""
    out, notes = df.copy(), []
    for i, r in df.iterrows():
        for name, est, lo, hi in keys:
            if est not in df.columns:
                continue
            row_note = (r.get("note"),) if isinstance(r.get("note"), str) and pd.isna(r.get(est)) else ()
            flag = next((c for c in (f"{est.split('_')[0]}_estimable", "estimable") if c in df.columns), None)
            flags = {"estimable": r.get(flag), "note": r.get(flag.replace("estimable", "note"), "")} if flag else {}
            ok, why = N.ratio_ok(r.get(est), r.get(lo), r.get(hi), reasons=(*(reasons or {}).get(name, ()), *row_note), **flags)
            if not ok:
                out.loc[i, [c for c in (est, lo, hi) if c in out.columns]] = np.nan
                notes.append(f"{labels.get(str(r['arm']), r['arm'])}: {name} not estimable ({why})")
    return out, notes


def _responders_one_truth(rsp: pd.DataFrame, primary: pd.DataFrame) -> pd.DataFrame:
    """The responder table's all-patients row carries the primary estimate (one source of truth
    for each comparison): the two-arm refit of the same patients would print a second number."""
    out = rsp.copy()
    p = primary.assign(arm=primary["arm"].astype(str)).set_index("arm")
    allrow = out["stratum"].astype(str).eq("all") | (out.get("fraction", pd.Series(0.0, index=out.index)).astype(float) >= 1.0)
    if "note" not in out:
        out["note"] = ""
    out["note"] = out["note"].astype(object)
    for i in out.index[allrow]:
        a = str(out.at[i, "arm"])
        if a in p.index:
            out.loc[i, ["observed_rate_ratio", "ci_low", "ci_high", "p_value"]] = [p.at[a, "observed_rate_ratio"], p.at[a, "observed_ci_low"],
                                                                                   p.at[a, "observed_ci_high"], p.at[a, "observed_p_value"]]
            out.at[i, "note"] = "primary estimate (one NB2 model over all arms)"
    return out


def _power_law(power_analytic: pd.DataFrame) -> str:
    """The outcome law the power simulations drew trials from, as `mseval effects` recorded it."""
    col = power_analytic.get("outcome_law")
    return str(col.dropna().iloc[0]) if col is not None and col.notna().any() else "observed NB2 fit"


def _footnote(notes: list[str]) -> str:
    return (" Not shown, not estimable by the shared rule (mseval/stats/estimability.py): " + "; ".join(notes) + ".") if notes else ""


def _computation() -> str:
    import os
    import platform

    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ}
    return (f"CPU {platform.machine()} ({platform.processor() or 'unknown model'}), {os.cpu_count()} logical cores; "
            f"thread settings {threads or 'library defaults'}; Python {platform.python_version()}. Identical numbers need the same seed, "
            "the same thread counts and the same CPU type and library versions (floating-point sums depend on all three).")

# -- the example slice ----------------------------------------------------------------------
def _example_slice(cohort: Any, store: Any, primary: pd.DataFrame, reference: str) -> dict[str, Any]:
    """Pick a patient (most observed NET2 lesion voxels; ties by id) and the axial slice with the
    most observed NET2 voxels; return the arrays for `figures.example_slices` under the
    reference arm and the arm with the lowest counterfactual rate ratio."""
    best = None
    if len(primary) and primary["counterfactual_rate_ratio"].notna().any():
        best = str(primary.sort_values(["counterfactual_rate_ratio", "arm"]).iloc[0]["arm"])
    arms = [reference] + ([best] if best and best != reference else [])
    score = []
    for pid in cohort.patient_ids:
        p = cohort.path(pid, "net2_mask")
        if p is None:
            continue
        import nibabel as nib

        score.append((int(np.asarray(nib.load(str(p)).dataobj).astype(bool).sum()), pid))
    if not score:
        return {}
    score.sort(key=lambda t: (-t[0], t[1]))
    pid = score[0][1]
    vols = cohort.load_patient(pid, ("flair", "net2_mask"))
    flair, net2 = vols["flair"].data, vols["net2_mask"].data
    probs = {}
    for a in arms:
        masks, _ = store.block(pid, a).masks()
        probs[a] = masks.astype(np.float32).mean(axis=0)
    per_z = net2.reshape(-1, net2.shape[2]).sum(axis=0) + sum(p.reshape(-1, p.shape[2]).sum(axis=0) for p in probs.values()) * 1e-3
    z = int(np.argmax(per_z))
    spacing = tuple(float(s) for s in vols["flair"].spacing[:2]) if hasattr(vols["flair"], "spacing") else (1.0, 1.0)
    import nibabel as nib

    right_side = nib.aff2axcodes(vols["flair"].affine)[0]  # the patient side that x increases towards
    return {"flair": flair[:, :, z], "observed": net2[:, :, z], "probabilities": {a: probs[a][:, :, z] for a in arms},
            "spacing": spacing, "patient": pid, "slice_label": f"axial slice {z + 1} of {net2.shape[2]}",
            "arms": arms, "allocated": str(cohort.row(pid)["arm"]), "right_side": right_side}


# -- the build ------------------------------------------------------------------------------
def build_report(
    cohort_dir: str | Path,
    forecasts_dir: str | Path,
    out: str | Path,
    *,
    title: str = "NET2 lesion forecasts: trial report",
    evaluation_dir: str | Path | None = None,
    effects_dir: str | Path | None = None,
    settings: ReportSettings = ReportSettings(),
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    extra_settings: tuple[tuple[str, str], ...] = (),
) -> Report:
    """Write the report folder `out` (see the module docstring). Raises InputError for bad input
    (nothing is left behind); `progress(message)` is called at each step. `extra_settings`:
    (name, value) rows added to the Settings table (e.g. how the demo trained its model)."""
    from mseval.effects import EffectsSettings, run_effects
    from mseval.evaluation import EvaluationSettings, evaluate
    from mseval.io.atomic import atomic_dir, write_bytes_atomic, write_csv_atomic, write_json_atomic
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.lesions.ensemble import CountSettings, count_store
    from mseval.provenance import forecast_provenance

    say = progress or (lambda _m: None)
    out, forecasts_dir = Path(out), Path(forecasts_dir)
    if out.exists() and not overwrite:
        raise InputError(out, "exists already; remove it, choose another --out, or pass --overwrite")
    if settings.connectivity not in (6, 18, 26):
        raise InputError(None, f"--connectivity must be 6, 18 or 26, got {settings.connectivity}", field="connectivity")
    say("checking the cohort and the forecast store")
    cohort = read_cohort(cohort_dir)
    store = ForecastStore.open(forecasts_dir)
    check_store_covers_cohort(cohort, store, forecasts_dir)
    plan = None
    if settings.sap is not None and effects_dir is None:  # checked before any work; a given effects folder brings its own plan
        from mseval.lesions.observed import MANIFEST_COVARIATES
        from mseval.sap.schema import check_against, load_sap

        plan = load_sap(settings.sap)
        check_against(plan, [c for c in MANIFEST_COVARIATES if c in cohort.manifest.columns] + ["net2", "net2_volume_mm3", "followup_years"],
                      list(cohort.arms["arm"]), cohort.reference_arm)
    for name, d in (("evaluation", evaluation_dir), ("effects", effects_dir)):
        if d is not None and not Path(d).is_dir():
            raise InputError(d, f"{name} folder not found")
    if followup_mode(cohort, evaluation_dir, effects_dir) == "forecast-only":  # baseline scans only; checked before any counting work
        with atomic_dir(out, overwrite=overwrite) as tmp:
            summary = build_forecast_only_report(cohort, cohort_dir, forecasts_dir, tmp, title=title, settings=settings, say=say,
                                                 extra_settings=extra_settings)
            files = _publish(tmp)
        say(f"forecast-only report written to {out / 'report.html'}")
        return Report(out, summary, files)
    arms_df = cohort.arms
    ref = cohort.reference_arm
    order = list(arms_df["arm"])
    labels = arm_labels(arms_df)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        results = tmp / "results"
        counts_path = None
        if evaluation_dir is None or effects_dir is None:
            say("counting forecast lesions")
            count_store(forecasts_dir, results / "counts", CountSettings(settings.connectivity, settings.min_volume_mm3), workers=settings.workers)
            counts_path = results / "counts" / "counts.parquet"
        if evaluation_dir is None:
            say("evaluating forecasts against observed NET2 masks")
            es = EvaluationSettings(connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3, detection_preset=settings.detection_preset,
                                    n_boot=settings.n_boot, seed=settings.seed, workers=settings.workers)
            evaluate(cohort_dir, forecasts_dir, results / "evaluation", es, counts=counts_path)
            evaluation_dir = results / "evaluation"
        if effects_dir is None:
            say("estimating treatment effects")
            fs = EffectsSettings(formula=settings.formula, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3,
                                 power_sims=settings.power_sims, seed=settings.seed,
                                 observed_bootstrap=settings.observed_bootstrap)
            run_effects(cohort_dir, forecasts_dir, results / "effects", fs, counts_path=counts_path, workers=settings.workers,
                        progress=lambda m: say(f"  effects: {m}"), sap=plan)
            effects_dir = results / "effects"
        ev, ef = Path(evaluation_dir), Path(effects_dir)

        say("reading result tables")
        t = {n: _read(ev, f"{n}.csv") for n in ("metrics", "patients", "reliability", "pit_histogram", "coverage", "confusion")}
        for n in ("voxel_reliability", "detection"):
            t[n] = _read(ev, f"{n}.csv", required=False)
        for n in ("primary_endpoint", "lesion_free", "counterfactual_patients", "counterfactual_average", "responders", "qini_curve",
                  "qini_area", "prognostic", "power_analytic", "power_simulated", "adjusted_means"):
            t[n] = _read(ef, f"{n}.csv")
        t["truth_comparison"] = _read(ef, "truth_comparison.csv", required=False)
        for n in ("heterogeneity", "estimands", "counterfactual_calibrated", "projections"):  # absent from effects folders written before issues 9, 22
            t[n] = _read(ef, f"{n}.csv", required=False)
        t["projections"] = P.read_or_build(t["projections"], t["primary_endpoint"], t["counterfactual_calibrated"])
        sap = read_sap(ef)
        ev_summary = json.loads((ev / "summary.json").read_text()) if (ev / "summary.json").is_file() else {}
        ef_summary = json.loads((ef / "effects.json").read_text()) if (ef / "effects.json").is_file() else {}
        metrics = t["metrics"]
        provenance = ev_summary.get("provenance") or ef_summary.get("provenance") or forecast_provenance(cohort_dir, forecasts_dir)
        observed = _observed(t["patients"], cohort.manifest)
        forecast_load = _forecast_load(t["patients"])

        # ---- figures
        say("drawing figures")
        auc = _metric(metrics, "all", "auc") or {}
        ece = _metric(metrics, "all", "ece") or {}
        conf = t["confusion"][t["confusion"]["group"].astype(str) == "all"]
        figs: list[tuple[str, Any, str]] = []
        fc_why = ((f"degenerate forecaster ({forecast_load['forecast_lesions']} lesions in {forecast_load['samples']} samples)",)
                  if forecast_load["degenerate"] else ())
        prim_fig, prim_notes = _mask_ratios(t["primary_endpoint"], [(f"{k} RR", f"{k}_rate_ratio", f"{k}_ci_low", f"{k}_ci_high")
                                                                   for k in ("observed", "forecast", "counterfactual")], labels,
                                            reasons={"forecast RR": fc_why, "counterfactual RR": fc_why})
        figs.append(("forest_plot", F.forest_plot(prim_fig, arms_df, reference=ref),
                     f"NET2 rate ratios vs {labels[ref]} (log scale) with 95% CIs. Filled circles: observed, NB2 regression of each patient's observed NET2 count "
                     f"on arm with offset log(follow-up years), {S.observed_ci_words(ef_summary)} CI. Open squares: forecast, "
                     f"{S.forecast_ci_words((ef_summary.get('forecast_model') or {}).get('pooling', ''))}. Open diamonds: counterfactual, ratio of mean "
                     "forecast counts with every patient under both arms (delta-method CI over patients, t critical value). Forecast and counterfactual CIs are "
                     "conditional on the forecaster: its errors are not in them"
                     + ("; the calibrated ratio (an observed-data ratio estimator with the forecast as covariate) is in the same section. " if t["counterfactual_calibrated"] is not None
                        else ". ")
                     + "x: the simulator's true ratio (simulated cohorts only)." + _footnote(prim_notes)))
        lf_fig, lf_notes = _mask_ratios(t["lesion_free"], [("OR", "odds_ratio", "ci_low", "ci_high")], labels)
        figs.append(("lesion_free", F.lesion_free_plot(lf_fig, arms_df),
                     "Patients with no NET2 lesion at follow-up, per arm, with Wilson 95% CIs; odds ratios (OR) vs the reference from logistic regression."
                     + _footnote(lf_notes)))
        figs.append(("activity_roc", F.activity_roc(t["patients"], auc=auc.get("value"), auc_ci=(auc.get("ci_low"), auc.get("ci_high")) if auc else None,
                                                    operating_points=conf),
                     "Activity classification: ROC curve of P(active) for observed activity (>= 1 NET2 lesion), each patient's allocated arm. "
                     "Points: the 0.5 and Youden (maximal sensitivity + specificity - 1) thresholds. AUC with DeLong 95% CI."))
        figs.append(("reliability", F.reliability_diagram(t["reliability"], voxel_reliability=t["voxel_reliability"], ece=ece.get("value")),
                     "Reliability diagrams. Left: observed share of active patients against forecast P(active) in quantile bins (Wilson 95% CIs); "
                     "on the diagonal when calibrated. Right: the same for voxel probabilities inside the brain mask."))
        if forecast_load["samples_per_patient"] >= MC.MIN_SAMPLES:  # below it the PIT has too few levels: withheld, said in the Calibration section
            figs.append(("pit_histogram", F.pit_histogram(t["pit_histogram"]),
                         "Count calibration: histogram of the randomized PIT of each observed NET2 count under its forecast count distribution; "
                         "flat when calibrated, U-shaped when the forecasts are too narrow, hump-shaped when too wide."))
            figs.append(("coverage", F.coverage_plot(t["coverage"], arms_df),
                         "Share of observed NET2 counts inside the forecast's central 50%, 80% and 95% prediction intervals (randomized PIT intervals, "
                         "exact for count data), overall with 95% CIs and per allocated arm."))
        figs.append(("count_scatter", F.count_scatter(t["patients"], arms_df),
                     "Forecast mean NET2 count (allocated arm; vertical lines: central 80% interval of the ensemble) against the observed count, per patient."))
        if t["detection"] is not None and len(t["detection"]):
            figs.append(("detection", F.detection_plot(t["detection"], arms_df),
                         "Lesion-wise detection of the observed NET2 lesions by each forecast sample (allocated arm): recall, precision, F1 and voxel Dice, "
                         "averaged over samples per patient. Forecasts predict where lesions may appear, not a single realisation, so overlap with one "
                         "observed follow-up is expected to be low even for a perfect (oracle) forecaster."))
        figs.append(("effect_distribution", F.effect_distribution(t["counterfactual_patients"], arms_df, reference=ref),
                     f"Per-patient counterfactual effect: forecast expected NET2 count under the arm minus under {labels[ref]}, for every patient "
                     "(all patients, whatever arm they were randomized to). Circle: median; bar: IQR."))
        t["responders"] = _responders_one_truth(t["responders"], t["primary_endpoint"])
        rsp_fig, rsp_notes = _mask_ratios(t["responders"], [("observed RR", "observed_rate_ratio", "ci_low", "ci_high")], labels)
        figs.append(("responders", F.responder_plot(rsp_fig, arms_df),
                     "Exploratory: observed NET2 rate ratios (NB2, 95% CI) among the 10%, 30%, 50% of patients with the largest forecast benefit and in all patients, "
                     "using only patients randomized to the arm or the reference (two-arm fits); the all-patients row is the primary estimate "
                     "(one model over all arms), the same number as in the primary table; open squares: the ratio the forecasts predict for the stratum "
                     "(for all patients, the counterfactual ratio of means over every patient, as in the primary table)."
                     + _footnote(sorted(set(rsp_notes)))))
        figs.append(("qini", F.qini_plot(t["qini_curve"], arms_df, qini_area=t["qini_area"]),
                     "Qini curves: cumulative observed NET2 lesions avoided when patients are treated in order of forecast benefit (solid) or in random order "
                     "(dashed); the Qini coefficient is the area between them, normalised as in Radcliffe (2007): perfect ranking 1, random 0 (exploratory)."))
        pg_fig, pg_notes = _mask_ratios(t["prognostic"], [("adjusted RR", "rate_ratio_adjusted", "ci_low_adjusted", "ci_high_adjusted")], labels)
        figs.append(("prognostic", F.prognostic_plot(pg_fig, arms_df),
                     "Prognostic adjustment: observed rate ratios without and with the log forecast mean under the reference arm as a covariate (left); "
                     "reduction of the SE of the log rate ratio and the implied sample-size saving (right)." + _footnote(pg_notes)))
        figs.append(("power", F.power_plot(t["power_analytic"], arms_df, power_simulated=t["power_simulated"]),
                     "Power of a two-arm NB2 comparison with the reference at the two-sided 5% level by patients per arm: analytic curves "
                     "(rates and dispersion estimated from the data) and simulated trials (open: unadjusted; filled: prognostic-adjusted; "
                     f"bars: Monte Carlo 95% range). Trials are drawn from the {_power_law(t['power_analytic'])}, never from the forecasts; "
                     "the forecasts give only the assumed design rate ratio (their ratio of means) and the prognostic score."))
        ex = _example_slice(cohort, store, t["primary_endpoint"], ref)
        if ex:
            figs.append(("example_slices", F.example_slices(ex["flair"], ex["observed"], ex["probabilities"], arms_df, spacing=ex["spacing"],
                                                            patient=ex["patient"], slice_label=ex["slice_label"], right_side=ex["right_side"]),
                         f"Patient {ex['patient']} (randomized to {labels.get(ex['allocated'], ex['allocated'])}), {ex['slice_label']}, shown with the patient's "
                         f"{'right' if ex['right_side'] == 'R' else 'left'} on the image's right (from the image affine); 20 mm scale bar. Left: baseline FLAIR with the observed NET2 lesions at follow-up (orange). Right: the forecast "
                         "probability map (share of ensemble samples in which the voxel is in a NET2 lesion) under "
                         + " and ".join(labels.get(a, a) for a in ex["arms"]) + " (the arm with the lowest counterfactual rate ratio)."))
        fig_entries = []
        for k, (name, fig, caption) in enumerate(figs, start=1):
            say(f"  figure {k}/{len(figs)}: {name}")
            files, png = figure_renderings(fig, settings.figure_formats, figure_dpi=settings.figure_dpi, html_dpi=settings.html_dpi)
            for fmt, data in files.items():
                write_bytes_atomic(data, tmp / "figures" / f"{name}.{fmt}")
            w_in, h_in = fig.get_size_inches()
            fig_entries.append({"name": name, "number": k, "caption": caption, "data": base64.b64encode(png).decode("ascii"),
                                "width": int(round(w_in * CSS_PX_PER_INCH)), "height": int(round(h_in * CSS_PX_PER_INCH))})

        # ---- tables
        say("writing tables")
        table1 = T.table1(cohort.manifest, arms_df)
        out_tables: dict[str, pd.DataFrame] = {"table1_baseline": table1}
        out_tables["primary_endpoint"] = T.order_arms(t["primary_endpoint"], arms_df)
        out_tables["primary_consort"] = T.consort_primary(observed, t["primary_endpoint"], arms_df, reference=ref,
                                                          n_randomized=cohort.manifest["arm"].astype(str).value_counts().to_dict(),
                                                          adjusted_means=t["adjusted_means"])
        out_tables["projections"] = T.order_arms(t["projections"], arms_df)
        out_tables["adjusted_means"] = T.order_arms(t["adjusted_means"], arms_df)
        out_tables["lesion_free"] = T.order_arms(t["lesion_free"], arms_df)
        act_names = ["prevalence", "auc", "sensitivity@0.5", "specificity@0.5", "ppv@0.5", "npv@0.5", "sensitivity@youden", "specificity@youden",
                     "ppv@youden", "npv@youden", "count_mae", "count_bias", "spearman"]
        cal_names = ["brier", "ece", "calibration_intercept", "calibration_slope", "pit_chi2_p", "pit_ks_p", "crps_fair", "coverage_randomized_50",
                     "coverage_randomized_80", "coverage_randomized_95"]
        groups = ["all", *order]
        m = metrics[metrics["group"].astype(str).isin(groups)]
        out_tables["activity"] = _metric_table(m, act_names, groups)
        out_tables["activity"] = _youden_by_arm(out_tables["activity"], t["patients"], metrics, order)
        out_tables["calibration"] = _metric_table(m, cal_names, groups)
        det_m = metrics[metrics["group"].astype(str).isin(["detection", "voxels"])]
        out_tables["detection"] = det_m[["group", "metric", "value", "ci_low", "ci_high", "n", "note"]].reset_index(drop=True)
        out_tables["counterfactual_average"] = T.order_arms(t["counterfactual_average"], arms_df)
        out_tables["responders"] = T.order_arms(t["responders"], arms_df)
        out_tables["qini_area"] = T.order_arms(t["qini_area"], arms_df)
        out_tables["prognostic"] = T.order_arms(t["prognostic"], arms_df)
        out_tables["power_analytic"] = T.order_arms(t["power_analytic"], arms_df)
        out_tables["power_simulated"] = T.order_arms(t["power_simulated"], arms_df)
        for n in ("heterogeneity", "counterfactual_calibrated"):
            if t[n] is not None:
                out_tables[n] = T.order_arms(t[n], arms_df)
        if t["estimands"] is not None:  # grouped by quantity (effects' order), arms in arms-table order within each
            est = t["estimands"]
            out_tables["estimands"] = pd.concat([T.order_arms(est[est["quantity"] == q], arms_df) for q in dict.fromkeys(est["quantity"])],
                                                ignore_index=True) if len(est) else T.order_arms(est, arms_df)
        if t["truth_comparison"] is not None:
            out_tables["truth_comparison"] = T.order_arms(t["truth_comparison"], arms_df)
        if sap is not None:
            out_tables.update({n: T.order_arms(sap[n], arms_df) if n == "sap_primary" else sap[n] for n in SAP_TABLES if sap[n] is not None})
        for name, df in out_tables.items():
            write_csv_atomic(df, tmp / "tables" / f"{name}.csv")

        # ---- settings and summary
        idx = store.index()
        samplers = sorted(set(idx["sampler"]))
        store_prov = json.loads((forecasts_dir / "provenance.json").read_text()).get("checkpoints", {}) if (forecasts_dir / "provenance.json").is_file() else {}
        checkpoints = sorted(set(idx["checkpoint"].astype(str)))
        samples = sorted(set(int(s) for s in idx["samples"]))
        det_rule = (ev_summary.get("detection") or {}).get("rule") or {}
        ev_set = ev_summary.get("settings", {})
        ef_set = ef_summary.get("settings", {})
        settings_doc = {
            "forecaster": {"checkpoint": checkpoints, "sampler": [json.loads(s) if s.startswith("{") else s for s in samplers],
                           "sampler_groups": S.sampler_groups(idx), "model_row": list(S.model_row(provenance, store_prov)), "samples_per_patient_and_arm": samples,
                           "sample_seeds": "derived from (seed, patient, arm, sample); listed per block in the store's index.parquet"},
            "lesions": {"connectivity": ev_set.get("connectivity", settings.connectivity), "min_volume_mm3": ev_set.get("min_volume_mm3", settings.min_volume_mm3),
                        "min_voxels": ev_set.get("min_voxels")},
            "detection": {"preset": ev_set.get("detection_preset") or "default (no preset)", **{k: det_rule.get(k) for k in ("name", "connectivity", "min_volume_mm3", "criterion", "threshold", "matching")}},
            "evaluation": {k: ev_set.get(k) for k in ("k", "operating_point", "n_bins", "bin_strategy", "pit_bins", "pit_kind", "levels", "n_boot", "seed")},
            "effects": {k: ef_set.get(k) for k in ("formula", "cov", "reference", "samples", "power_sims", "seed", "responder_fractions")},
            "observed_model": {**{k: (ef_summary.get("observed_model") or {}).get(k) for k in ("model", "alpha", "converged", "n")},
                               "primary_interval": S.observed_ci_words(ef_summary)},
            "versions": _versions(),
            "provenance": provenance,
            "computation": _computation(),
            "extra": [list(r) for r in extra_settings],
        }
        n_by_arm = cohort.manifest["arm"].value_counts()
        summary = _clean({
            "format": "mseval-report-summary",
            "mseval_version": __version__,
            "title": title,
            "inputs": {"cohort": str(cohort_dir), "forecasts": str(forecasts_dir),
                       "evaluation": "computed by the report" if ev == results / "evaluation" else str(evaluation_dir),
                       "effects": "computed by the report" if ef == results / "effects" else str(effects_dir)},
            "n_patients": int(len(cohort.manifest)),
            "reference_arm": ref,
            "simulated": cohort.truth is not None,
            "arms": [{"arm": a, "label": labels[a], "n": int(n_by_arm.get(a, 0)), "color": arm_colors(arms_df)[a]} for a in order],
            "settings": settings_doc,
            "provenance": provenance,
            "forecast_load": forecast_load,
            "primary_endpoint": _records(out_tables["primary_endpoint"]),
            "lesion_free": _records(out_tables["lesion_free"]),
            "activity": {k: _metric(metrics, "all", k) for k in ("auc", "sensitivity@youden", "specificity@youden", "count_mae")},
            "calibration": {k: _metric(metrics, "all", k) for k in ("ece", "brier", "calibration_slope", "pit_chi2_p", "crps_fair",
                                                                      "coverage_randomized_50", "coverage_randomized_80", "coverage_randomized_95")},
            "detection": {k: _metric(metrics, "detection", k) for k in ("lesion_recall_pooled", "lesion_precision_pooled", "lesion_f1_mean", "dice_mean")},
            "counterfactual": _records(out_tables["counterfactual_average"][["arm", "ratio_of_means", "ratio_ci_low", "ratio_ci_high", "mean_difference"]]),
            "prognostic": _records(out_tables["prognostic"][[c for c in ("arm", "se_reduction_pct", "sample_size_saving_pct", "saving_ci_low_pct",
                                                                         "saving_ci_high_pct", "attainable_saving_pct") if c in out_tables["prognostic"].columns]]),
            "heterogeneity": _records(out_tables["heterogeneity"]) if "heterogeneity" in out_tables else None,
            "forecast_model": ef_summary.get("forecast_model"),
            "sap": None if sap is None else {k: sap["record"].get(k) for k in ("source", "sha256", "title", "deviations")},
            "training_trial": ef_summary.get("training_trial"),
            "heldout": ef_summary.get("heldout"),
            "estimands": ef_summary.get("estimands"),
            "vs_truth": ev_summary.get("vs_truth"),
            "flags": list(ev_summary.get("flags", [])),
            "figures": [f"figures/{e['name']}.{x}" for e in fig_entries for x in settings.figure_formats],
            "tables": [f"tables/{n}.csv" for n in out_tables],
        })
        write_json_atomic(summary, tmp / "summary.json")

        # ---- HTML and Markdown
        say("writing report.html and report.md")
        ctx = build_context(title, summary, settings_doc, table1, t, out_tables, fig_entries, arms_df, ref, ev_summary, ex, observed)
        ctx["sap"] = sap_context(sap, arms_df, labels)
        write_bytes_atomic(render_html(ctx).encode("utf-8"), tmp / "report.html")
        write_bytes_atomic(render_md(ctx).encode("utf-8"), tmp / "report.md")
        files = _publish(tmp)
    say(f"report written to {out / 'report.html'}")
    return Report(out, summary, files)


def _publish(tmp: Path) -> list[str]:
    """The report's files (relative paths); makes them readable by others: temporary files are private
    (0600), a report is for sharing."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    for p in [tmp, *tmp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return files


def _metric_table(m: pd.DataFrame, names: list[str], groups: list[str]) -> pd.DataFrame:
    """Wide table: one row per metric, value (and CI) per group in the given order."""
    rows = []
    for name in names:
        sub = m[m["metric"] == name]
        if not len(sub):
            continue
        row: dict[str, Any] = {"metric": name}
        for g in groups:
            r = sub[sub["group"].astype(str) == g]
            if len(r):
                row[g] = float(r.iloc[0]["value"])
                row[f"{g}_ci_low"] = float(r.iloc[0]["ci_low"])
                row[f"{g}_ci_high"] = float(r.iloc[0]["ci_high"])
        rows.append(row)
    return pd.DataFrame(rows)


def _youden_by_arm(activity: pd.DataFrame, patients: pd.DataFrame, metrics: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Arm columns of the Youden rows at the ONE threshold chosen on all patients (never re-optimised per arm)."""
    th = metrics[(metrics["group"].astype(str) == "all") & (metrics["metric"] == "sensitivity@youden")]
    if not len(th) or "threshold" not in th.columns or not np.isfinite(float(th.iloc[0]["threshold"])):
        return activity
    t = float(th.iloc[0]["threshold"])
    out = activity.copy()
    y_all = patients["observed_active"].astype(str).str.lower().isin(["true", "1"])
    for a in order:
        if a not in out.columns:
            continue
        m = patients["arm"].astype(str) == a
        pred, y = patients.loc[m, "p_active"].astype(float) >= t, y_all[m]
        tp, fp, fn, tn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum()), int((~pred & ~y).sum())
        vals = {"sensitivity@youden": tp / (tp + fn) if tp + fn else np.nan, "specificity@youden": tn / (tn + fp) if tn + fp else np.nan,
                "ppv@youden": tp / (tp + fp) if tp + fp else np.nan, "npv@youden": tn / (tn + fn) if tn + fn else np.nan}
        for k, v in vals.items():
            out.loc[out["metric"] == k, a] = v
    return out


def settings_dict(s: ReportSettings) -> dict[str, Any]:
    return asdict(s)
