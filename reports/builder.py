"""Assemble a trial-style report from a cohort, its forecast store and the result tables.

`build_report(cohort_dir, forecasts_dir, out)` checks that the store holds every patient under
every arm, counts the forecast lesions once, runs `mseval evaluate` and `mseval effects` (unless
their folders are given), draws every figure, and writes, into a temporary folder renamed to
`out` at the end (all or nothing):

    report.html        one self-contained file (figures inlined as base64 PNG, CSS inline, no network)
    report.md          the same numbers as text
    figures/*.pdf|png  every figure as PDF (vector text) and 300-dpi PNG
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
from reports.style import arm_colors, arm_labels, figure_bytes

ABBREVIATIONS = {
    "NET2": "new or enlarging T2-hyperintense lesion(s) at follow-up vs baseline",
    "RR": "rate ratio (NET2 lesion rate in an arm divided by the rate in the reference arm)",
    "NB2": "negative binomial regression, quadratic variance (var = mu + alpha mu^2), offset log(follow-up years)",
    "CI": "confidence interval (95% unless stated)",
    "OR": "odds ratio",
    "SD": "standard deviation",
    "IQR": "interquartile range (25th-75th percentile)",
    "EDSS": "Expanded Disability Status Scale (0-10)",
    "Gd+": "gadolinium-enhancing (lesions on T1-weighted MRI after contrast)",
    "FLAIR": "fluid-attenuated inversion recovery MRI",
    "P(active)": "forecast probability of >= 1 NET2 lesion: share of ensemble samples with at least one lesion",
    "ROC": "receiver operating characteristic curve",
    "AUC": "area under the ROC curve",
    "PPV / NPV": "positive / negative predictive value",
    "ECE": "expected calibration error (mean |forecast - observed| over probability bins, weighted by patients)",
    "PIT": "probability integral transform: where the observed count falls in its forecast distribution (uniform when calibrated)",
    "CRPS": "continuous ranked probability score (lower is better; fair ensemble version)",
    "MAE": "mean absolute error",
    "Dice": "Sørensen-Dice overlap of forecast and observed NET2 voxels",
    "F1": "harmonic mean of lesion-wise precision and recall",
    "Qini": "uplift curve: lesions avoided when treating patients in order of forecast benefit",
    "SE": "standard error",
}


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

MIN_SAMPLES_FOR_COVERAGE_HEADLINE = 20
"""With S samples per patient the randomized PIT has S + 1 levels and its interval coverage sits
near nominal whatever the forecast; coverage is headlined only from this many samples on."""


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
    for name, d in (("evaluation", evaluation_dir), ("effects", effects_dir)):
        if d is not None and not Path(d).is_dir():
            raise InputError(d, f"{name} folder not found")
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
                                 power_sims=settings.power_sims, seed=settings.seed)
            run_effects(cohort_dir, forecasts_dir, results / "effects", fs, counts_path=counts_path, workers=settings.workers,
                        progress=lambda m: say(f"  effects: {m}"))
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
                     "on arm with offset log(follow-up years). Open squares: forecast, the same model fitted once on all fully synthetic ensemble samples of the "
                     "allocated arm, stacked, with a patient-cluster sandwich CI. Open diamonds: counterfactual, ratio of mean "
                     "forecast counts with every patient under both arms (delta-method CI over patients). Forecast and counterfactual CIs are "
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
                     "(one model over all arms), the same number as in the primary table; open squares: the ratio the forecasts predict for the stratum."
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
            for fmt in settings.figure_formats:
                write_bytes_atomic(figure_bytes(fig, fmt, dpi=settings.figure_dpi), tmp / "figures" / f"{name}.{fmt}")
            png = figure_bytes(fig, "png", dpi=settings.html_dpi)
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
            "observed_model": {k: (ef_summary.get("observed_model") or {}).get(k) for k in ("model", "alpha", "converged", "n")},
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
                                                                         "saving_ci_high_pct") if c in out_tables["prognostic"].columns]]),
            "heterogeneity": _records(out_tables["heterogeneity"]) if "heterogeneity" in out_tables else None,
            "forecast_model": ef_summary.get("forecast_model"),
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
        ctx = _context(title, summary, settings_doc, table1, t, out_tables, fig_entries, arms_df, ref, ev_summary, ex, observed)
        write_bytes_atomic(_render_html(ctx).encode("utf-8"), tmp / "report.html")
        write_bytes_atomic(_render_md(ctx).encode("utf-8"), tmp / "report.md")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for p in [tmp, *tmp.rglob("*")]:  # temporary files are private (0600); a report is for sharing
            p.chmod(0o755 if p.is_dir() else 0o644)
    say(f"report written to {out / 'report.html'}")
    return Report(out, summary, files)


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


METRIC_NAMES = {
    "prevalence": "Active patients (>= 1 NET2 lesion), proportion",
    "auc": "AUC of P(active)",
    "sensitivity@0.5": "Sensitivity, P(active) >= 0.5",
    "specificity@0.5": "Specificity, P(active) >= 0.5",
    "ppv@0.5": "PPV, P(active) >= 0.5",
    "npv@0.5": "NPV, P(active) >= 0.5",
    "sensitivity@youden": "Sensitivity, Youden threshold",
    "specificity@youden": "Specificity, Youden threshold",
    "ppv@youden": "PPV, Youden threshold",
    "npv@youden": "NPV, Youden threshold",
    "count_mae": "Count MAE (lesions; forecast mean vs observed)",
    "count_bias": "Count bias (lesions; forecast - observed)",
    "spearman": "Spearman correlation, forecast mean vs observed count",
    "brier": "Brier score of P(active) (lower is better)",
    "ece": "ECE of P(active)",
    "calibration_intercept": "Calibration intercept (0 when calibrated)",
    "calibration_slope": "Calibration slope (1 when calibrated)",
    "pit_chi2_p": "PIT uniformity, chi-square p-value",
    "pit_ks_p": "PIT uniformity, Kolmogorov-Smirnov p-value",
    "crps_fair": "CRPS of the count forecast (lesions; lower is better)",
    "coverage_randomized_50": "Coverage of the 50% prediction interval",
    "coverage_randomized_80": "Coverage of the 80% prediction interval",
    "coverage_randomized_95": "Coverage of the 95% prediction interval",
    "lesion_recall_pooled": "Lesion-wise recall (pooled over samples)",
    "lesion_precision_pooled": "Lesion-wise precision (pooled over samples)",
    "lesion_f1_mean": "Lesion-wise F1 (mean over non-empty cases)",
    "dice_mean": "Voxel Dice (mean over non-empty cases)",
    "voxel_brier": "Voxel Brier score (inside the brain)",
    "voxel_ece": "Voxel ECE",
    "voxel_auc": "Voxel AUC",
    "voxel_prevalence": "Share of brain voxels in NET2 lesions",
}


ESTIMAND_NAMES = {
    "forecast_rate_ratio": "Forecast RR",
    "counterfactual_ratio_of_means": "Counterfactual RR (ratio of means)",
    "counterfactual_mean_difference": "Counterfactual mean difference",
    "counterfactual_calibrated_ratio": "Counterfactual RR calibrated on held-out patients",
    "heterogeneity_interaction": "Heterogeneity: arm x predicted-benefit interaction",
    "responder_stratum_rate_ratio": "Responder strata (exploratory)",
    "qini_coefficient": "Qini coefficient",
    "prognostic_saving": "Prognostic adjustment: sample-size saving",
    "power": "Power",
}


def _num(x: Any, digits: int = 2) -> str:
    return N.num(x, digits)


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


def _context(title: str, summary: dict, settings_doc: dict, table1: pd.DataFrame, t: dict, out_tables: dict, fig_entries: list,
             arms_df: pd.DataFrame, ref: str, ev_summary: dict, ex: dict, observed: pd.DataFrame) -> dict[str, Any]:
    """Everything the templates show, as strings (one place for number formatting; every estimate
    through the shared estimability rule, `reports.numbers`)."""
    labels, colors = arm_labels(arms_df), arm_colors(arms_df)
    order = list(arms_df["arm"])
    load = summary.get("forecast_load") or {}
    prov = summary.get("provenance") or {}
    fc_reasons = (f"degenerate forecaster ({load.get('forecast_lesions')} lesions in {load.get('samples')} samples)",) if load.get("degenerate") else ()

    def table(df: pd.DataFrame) -> dict[str, Any]:
        return {"columns": list(df.columns), "rows": [[str(v) for v in r] for r in df.itertuples(index=False)]}

    t1 = table1.copy()
    t1.insert(0, "Characteristic", [f"{c}, {s}" for c, s in zip(t1.pop("characteristic"), t1.pop("statistic"))])

    # ---- primary endpoint, CONSORT item 17a
    cp = out_tables["primary_consort"]
    formula = settings_doc["effects"].get("formula") or "net2 ~ arm"
    covs = T.formula_covariates(formula)
    has_truth = "true_ratio_of_means" in cp.columns and cp["true_ratio_of_means"].notna().any()
    prim_cols = ["Arm", "Randomized / analysed, n", "NET2 lesions / patient-years", "Rate per patient-year (crude)",
                 "Model rate per year" + (f", adjusted for {', '.join(covs)}" if covs else " (NB2, arm only)"),
                 "Observed RR (95% CI)", "p", "p, Holm-adjusted"] + (["True RR"] if has_truth else [])
    cal = out_tables.get("counterfactual_calibrated")
    cal = cal.set_index("arm") if cal is not None and len(cal) else None
    prim_rows = []
    for r in cp.to_dict("records"):
        is_ref = r["arm"] == ref
        row = [labels.get(r["arm"], r["arm"]), f"{r['n_randomized']} / {r['n_analysed']}", f"{r['events']} / {_num(r['patient_years'], 1)}",
               _num(r["rate_per_patient_year"]), _num(r["model_rate_per_year"])]
        if is_ref:
            row += ["1 (reference)", "", ""] + (["1 (reference)"] if has_truth else [])
        else:
            of = {k: r.get(f"observed_{k}", d) for k, d in (("estimable", True), ("note", ""))}
            row += [N.ratio_text(r.get("observed_rate_ratio"), r.get("observed_ci_low"), r.get("observed_ci_high"), **of),
                    *((T.p_text(r.get("observed_p_value", float("nan"))), T.p_text(r.get("observed_p_holm", float("nan"))))
                      if N.ratio_ok(r.get("observed_rate_ratio"), r.get("observed_ci_low"), r.get("observed_ci_high"), **of)[0] else ("", ""))]
            if has_truth:
                row.append(_num(r.get("true_ratio_of_means")))
        prim_rows.append(row)
    n_cmp = int((cp["arm"] != ref).sum())
    multiplicity = (f"Multiplicity: {n_cmp} arms are each compared with {labels[ref]}; the CIs and p are per comparison, not adjusted "
                    f"(nominal two-sided 5% each); the Holm-adjusted p controls the family-wise error over the {n_cmp} comparisons. "
                    "Forecast-derived ratios are model-based projections, in their own section below.")

    # ---- lesion-free: proportion, hazard ratio, OR and risk difference (all from the effects' lesion_free table)
    lf = out_tables["lesion_free"].set_index("arm")
    has_hr = "hazard_ratio" in lf.columns
    lf_rows = []
    for a in order:
        if a not in lf.index:
            continue
        r = lf.loc[a]
        n = int(r["n"])
        x = int(r["lesion_free"]) if "lesion_free" in lf.columns else int(round(float(r["lesion_free_pct"]) * n / 100))
        flags = {"estimable": r.get("estimable", True), "note": r.get("note", "")}
        ok_or = N.ratio_ok(r.get("odds_ratio"), r.get("ci_low"), r.get("ci_high"), **flags)[0]
        row = [labels.get(a, a), f"{x}/{n} ({_num(100 * x / n if n else float('nan'), 0)}%)"]
        if has_hr:
            ok_hr = N.ratio_ok(r.get("hazard_ratio"), r.get("hr_ci_low"), r.get("hr_ci_high"), **flags)[0]
            row += ["1 (reference)" if a == ref else N.ratio_text(r.get("hazard_ratio"), r.get("hr_ci_low"), r.get("hr_ci_high"), **flags),
                    "" if a == ref or not ok_hr else T.p_text(r.get("hr_p_value", float("nan")))]
        rd = r.get("risk_difference", float("nan"))
        row += ["0 (reference)" if a == ref else (N.additive_text(100 * rd, 100 * r.get("rd_ci_low"), 100 * r.get("rd_ci_high"), digits=1)
                                                  if N.is_number(rd) else N.NOT_ESTIMABLE),
                "1 (reference)" if a == ref else N.ratio_text(r.get("odds_ratio"), r.get("ci_low"), r.get("ci_high"), **flags),
                "" if a == ref or not ok_or else T.p_text(r.get("p_value", float("nan")))]
        lf_rows.append(row)
    groups = ["all", *order]
    glabels = {"all": "All patients", **labels}
    n_arm = {a["arm"]: int(a["n"]) for a in summary["arms"]}
    spp = int(load.get("samples_per_patient") or 0) or None

    def metric_rows(df: pd.DataFrame, digits: int = 2) -> dict[str, Any]:
        cols = ["Metric"] + [glabels[g] for g in groups if g in df.columns]
        rows = []
        for r in df.to_dict("records"):
            row = [METRIC_NAMES.get(r["metric"], r["metric"])]
            for g in groups:
                if g in df.columns:
                    ci = (r.get(f"{g}_ci_low"), r.get(f"{g}_ci_high")) if g == "all" else (None, None)
                    row.append(MC.metric_cell(r["metric"], r.get(g), *ci, digits=digits, n_patients=n_arm.get(g), samples=spp, per_arm=g != "all"))
            rows.append(row)
        return {"columns": cols, "rows": rows}

    det = out_tables["detection"]
    det_rows = {"columns": ["Metric", "Value (95% CI)", "n", "Note"],
                "rows": [[METRIC_NAMES.get(r["metric"], r["metric"]), MC.metric_cell(r["metric"], r["value"], r["ci_low"], r["ci_high"], digits=3), _num(r["n"], 0), str(r["note"]) if pd.notna(r["note"]) else ""]
                         for r in det.to_dict("records")]}
    cfa = out_tables["counterfactual_average"]
    cf_rows = {"columns": ["Arm", "Mean difference vs reference, lesions (95% CI)", "Ratio of means (95% CI)", "10th / 50th / 90th percentile of patient differences"],
               "rows": [[labels.get(r["arm"], r["arm"]), N.additive_text(r["mean_difference"], r["difference_ci_low"], r["difference_ci_high"], reasons=fc_reasons),
                         N.ratio_text(r["ratio_of_means"], r["ratio_ci_low"], r["ratio_ci_high"], estimable=r.get("estimable", True), note=r.get("note", ""),
                                      reasons=fc_reasons),
                         f"{_num(r['difference_p10'], 1)} / {_num(r['difference_median'], 1)} / {_num(r['difference_p90'], 1)}"] for r in cfa.to_dict("records")]}
    rsp = out_tables["responders"]
    has_true = "true_rate_ratio" in rsp.columns

    def rsp_note(r: dict) -> str:
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        return "" if N.flagged(r.get("estimable", True)) else note  # a non-estimable stratum's reason is in its RR cell

    rsp_rows = {"columns": ["Arm", "Stratum", "Analysis", "n arm / reference", "Predicted RR (conditional on the forecaster)", "Observed RR (95% CI)", "p",
                            "Note"] + (["True RR"] if has_true else []),
                "rows": [[labels.get(r["arm"], r["arm"]), r["stratum"], str(r.get("analysis") or ("primary" if r.get("fraction") == 1 else "exploratory")),
                          f"{int(r['n_arm'])} / {int(r['n_reference'])}",
                          N.ratio_text(r["predicted_rate_ratio"], reasons=fc_reasons),
                          N.ratio_text(r["observed_rate_ratio"], r["ci_low"], r["ci_high"], estimable=r.get("estimable", True), note=r.get("note", "")),
                          T.p_text(r["p_value"]) if N.ratio_ok(r["observed_rate_ratio"], r["ci_low"], r["ci_high"], estimable=r.get("estimable", True),
                                                               note=r.get("note", ""))[0] else "",
                          rsp_note(r)] + ([_num(r["true_rate_ratio"])] if has_true else [])
                         for r in rsp.to_dict("records")]}
    min_per_arm = int(rsp["min_per_arm"].dropna().iloc[0]) if "min_per_arm" in rsp.columns and rsp["min_per_arm"].notna().any() else None
    het = out_tables.get("heterogeneity")
    het_rows = None
    if het is not None:
        het_rows = {"columns": ["Arm", "n arm / reference", "Ratio of rate ratios per SD of predicted benefit (95% CI)", "p", "SD of predicted benefit, lesions"],
                    "rows": [[labels.get(r["arm"], r["arm"]), f"{int(r['n_arm'])} / {int(r['n_reference'])}",
                              N.ratio_text(r["interaction_ratio"], r["ci_low"], r["ci_high"], estimable=r.get("estimable", True), note=r.get("note", "")),
                              T.p_text(r["p_value"]) if N.ratio_ok(r["interaction_ratio"], r["ci_low"], r["ci_high"], estimable=r.get("estimable", True),
                                                                   note=r.get("note", ""))[0] else "",
                              _num(r.get("benefit_sd"))] for r in het.to_dict("records")]}
    qa = out_tables["qini_area"].set_index("arm")
    qini_norm = str(qa["normalisation"].dropna().iloc[0]) if "normalisation" in qa.columns and qa["normalisation"].notna().any() else ""

    def qini_text(arm: str) -> str:
        if arm not in qa.index:
            return N.NOT_COMPUTED
        q = qa.loc[arm]
        if N.flagged(q.get("estimable", True)):
            return N.ne_text(q.get("note") if isinstance(q.get("note"), str) else "")
        return N.ne_text(fc_reasons[0]) if fc_reasons else MC.qini_cell(q["qini_coefficient"])

    pg = out_tables["prognostic"]
    has_pg_ci = {"saving_ci_low_pct", "saving_ci_high_pct"} <= set(pg.columns)
    has_procova = {"procova_correlation", "procova_saving_pct"} <= set(pg.columns)

    def pct_ci(est: Any, lo: Any = None, hi: Any = None) -> str:
        """A percentage with its CI by the shared additive rule: '37% (-124% to 47%)' or 'not estimable (reason)'."""
        if not N.is_number(est):
            return N.NOT_ESTIMABLE
        ok, why = N.additive_ok(est, lo, hi, reasons=fc_reasons)
        if not ok:
            return N.ne_text(why)
        return f"{_num(est, 0)}%" + (f" ({_num(lo, 0)}% to {_num(hi, 0)}%)" if N.is_number(lo) and N.is_number(hi) else "")

    pg_rows = {"columns": ["Arm", "RR unadjusted", "RR adjusted (95% CI)", "SE reduction", "Sample-size saving (95% CI)"]
                          + (["PROCOVA correlation (95% CI)", "PROCOVA saving (95% CI)"] if has_procova else [])
                          + ["Qini coefficient (Radcliffe normalisation: perfect 1, random 0; exploratory)"],
               "rows": [[labels.get(r["arm"], r["arm"]), N.ratio_text(r["rate_ratio_unadjusted"]),
                         N.ratio_text(r["rate_ratio_adjusted"], r["ci_low_adjusted"], r["ci_high_adjusted"], estimable=r.get("estimable", True), note=r.get("note", "")),
                         f"{_num(r['se_reduction_pct'], 0)}%",
                         pct_ci(r["sample_size_saving_pct"], r["saving_ci_low_pct"], r["saving_ci_high_pct"]) if has_pg_ci else pct_ci(r["sample_size_saving_pct"])]
                        + ([N.additive_text(r["procova_correlation"], r.get("procova_correlation_ci_low"), r.get("procova_correlation_ci_high"), reasons=fc_reasons)
                            if N.is_number(r["procova_correlation"]) else N.NOT_ESTIMABLE,
                            pct_ci(r["procova_saving_pct"], r.get("procova_saving_ci_low_pct"), r.get("procova_saving_ci_high_pct"))] if has_procova else [])
                        + [qini_text(r["arm"])] for r in pg.to_dict("records")]}
    pa = out_tables["power_analytic"]
    ps = out_tables["power_simulated"]
    rr_col = "design_rate_ratio" if "design_rate_ratio" in pa.columns else "rate_ratio"
    outcome_law = str(pa["outcome_law"].dropna().iloc[0]) if "outcome_law" in pa.columns and pa["outcome_law"].notna().any() else ""

    def sim(arm: str, adjusted: bool) -> str:
        d = ps[(ps["arm"] == arm) & (ps["adjusted"].astype(str).str.lower().isin(["true", "1"]) == adjusted)]
        if not len(d):
            return N.NOT_COMPUTED
        r = d.iloc[0]
        mc = f", Monte Carlo SE {_num(r['mc_se'])}" if "mc_se" in d.columns and N.is_number(r["mc_se"]) else ""
        return f"{_num(r['power'])} (n = {int(r['n_per_arm'])}{mc})"

    pw_rows = {"columns": ["Arm", "Rate per year assumed, reference / arm", "Design rate ratio (forecast ratio of means, an assumption)",
                           "Patients per arm for 80% / 90% power", "Simulated power, unadjusted (Monte Carlo SE)", "Simulated power, adjusted (Monte Carlo SE)"],
               "rows": [[labels.get(r["arm"], r["arm"]), f"{_num(r['rate_reference'])} / {_num(r['rate_arm'])}", N.ratio_text(r[rr_col], reasons=fc_reasons),
                         f"{_num(r['n_per_arm_80'], 0)} / {_num(r['n_per_arm_90'], 0)}" if pd.notna(r["n_per_arm_80"]) else (r.get("note") or N.NOT_ESTIMABLE),
                         sim(r["arm"], False), sim(r["arm"], True)] for r in pa.to_dict("records")]}

    # ---- estimands: one sentence per forecast-derived quantity (effects.json `estimands`)
    est_doc = summary.get("estimands") or {}
    estimand_rows = [[ESTIMAND_NAMES.get(q, q.replace("_", " ")), str(e.get("estimand", "")),
                      str(e.get("conditional_on") or e.get("note") or ""), str(e.get("ci_method", ""))
                      + (f"; normalisation: {e['normalisation']}" if e.get("normalisation") else "")]
                     for q, e in sorted(est_doc.items(), key=lambda kv: list(ESTIMAND_NAMES).index(kv[0]) if kv[0] in ESTIMAND_NAMES else len(ESTIMAND_NAMES))
                     if isinstance(e, dict)]
    fm = summary.get("forecast_model") or {}
    forecast_method = (f"each ensemble sample is a fully synthetic trial: one NB2 fit on all {fm.get('samples')} samples stacked "
                       f"({fm.get('failed_fits')} of the per-sample check fits failed); CI: {fm.get('pooling')}; "
                       "conditional on the forecaster (outcomes are synthetic draws, not missing data)"
                       if fm else "NB2 fitted per fully synthetic ensemble sample; CI conditional on the forecaster")
    settings_rows = S.settings_rows(settings_doc, prov, labels, ref, covs, forecast_method, summary["n_patients"], len(order))
    arms_rows = [[labels[a], a, str(arms_df.set_index("arm").loc[a, "efficacy"]) if "efficacy" in arms_df.columns else "",
                  "reference" if a == ref else "", str(next(x["n"] for x in summary["arms"] if x["arm"] == a)), colors[a]] for a in order]
    vt = summary.get("vs_truth") or {}

    # ---- headline: only estimable, primary quantities; what a reader must know first
    headline = []
    if load.get("degenerate"):
        headline.append(load["sentence"])
    cand = []
    for r in cp.to_dict("records"):
        if r["arm"] == ref:
            continue
        ok, _ = N.ratio_ok(r.get("observed_rate_ratio"), r.get("observed_ci_low"), r.get("observed_ci_high"),
                           estimable=r.get("observed_estimable", True), note=r.get("observed_note", ""))
        if ok:
            cand.append(r)
    if cand:
        b = min(cand, key=lambda r: (r["observed_rate_ratio"], r["arm"]))
        headline.append(f"Largest observed effect: {labels.get(b['arm'], b['arm'])}, NET2 RR {N.ratio_text(b['observed_rate_ratio'], b['observed_ci_low'], b['observed_ci_high'])} "
                        f"vs {labels[ref]} (primary analysis, {b['n_analysed']} and {int(cp.loc[cp['arm'] == ref, 'n_analysed'].iloc[0])} patients analysed).")
    else:
        headline.append("No observed rate ratio is estimable (see the primary table for the reasons).")
    a = summary["activity"].get("auc")
    if a and not load.get("degenerate") and N.additive_ok(a["value"], a["ci_low"], a["ci_high"])[0]:
        headline.append(f"Activity: AUC of P(active) {N.additive_text(a['value'], a['ci_low'], a['ci_high'])}"
                        + (f" ({prov.get('status')} patients)." if prov.get("status") in ("in-sample", "validation", "held-out", "mixed") else "."))
    e = summary["calibration"].get("ece")
    c95 = summary["calibration"].get("coverage_randomized_95")
    spp = int(load.get("samples_per_patient") or 0)
    if e and not load.get("degenerate") and spp < MC.MIN_SAMPLES:
        headline.append(f"Calibration not headlined: {spp} samples per patient, fewer than the {MC.MIN_SAMPLES} its Monte Carlo error needs.")
    elif e and not load.get("degenerate") and N.additive_ok(e["value"])[0]:
        cov_txt = (f"; 95% prediction intervals cover {_num(100 * c95['value'], 0)}% of observed counts" if c95 and spp >= MIN_SAMPLES_FOR_COVERAGE_HEADLINE
                   else f"; interval coverage not headlined: {spp} samples per patient give a PIT with only {spp + 1} levels"
                   if spp < MIN_SAMPLES_FOR_COVERAGE_HEADLINE else "")
        headline.append(f"Calibration: ECE {_num(e['value'], 3)}{cov_txt}.")
    if vt:
        headline.append(f"Against the simulator's truth: mean forecast count vs true expected count, MAE {_num(vt.get('mae_mean_vs_true_expected'))} lesions, "
                        f"Pearson r {_num(vt.get('pearson_mean_vs_true_expected'), 3)}.")
    banner_class = {"held-out": "ok", "not trained": "ok", "validation": "warn"}.get(prov.get("status", "unknown"), "bad")
    return {
        "title": title, "summary": summary, "headline": headline, "abbreviations": ABBREVIATIONS, "settings_rows": settings_rows,
        "settings_table": {"columns": ["Setting", "Value"], "rows": [list(r) for r in settings_rows]}, "settings_json": S.details_json(settings_doc),
        "provenance": {"status": prov.get("status", "unknown"), "sentence": prov.get("sentence", ""), "class": banner_class},
        "degenerate": load.get("sentence", ""),
        "arms_rows": arms_rows, "table1": table(t1), "table1_note": T.TABLE1_NOTE, "primary": {"columns": prim_cols, "rows": prim_rows},
        "projections": P.projections_table(out_tables["projections"], cp, labels, order, ref, fc_reasons), "projections_title": P.section_title(out_tables["projections"]),
        "projections_note": P.projections_note((summary.get("training_trial") or {}).get("sentence", ""), out_tables["projections"],
                                               (summary.get("heldout") or {}).get("sentence", "")),
        "multiplicity": multiplicity, "covariates": covs,
        "lesion_free": {"columns": ["Arm", "Free of NET2 lesions, n/N (%)"]
                        + (["HR of any NET2 lesion vs reference (95% CI; follow-up respected)", "p (HR)"] if has_hr else [])
                        + ["Risk difference vs reference, percentage points (95% CI, Newcombe)", "OR of lesion-free vs reference (95% CI)", "p (OR)"],
                        "rows": lf_rows},
        "activity": metric_rows(out_tables["activity"]), "calibration": MC.drop_withheld_columns(metric_rows(out_tables["calibration"], 3), samples=spp), "detection": det_rows,
        "counterfactual": cf_rows, "responders": rsp_rows, "prognostic": pg_rows, "power": pw_rows,
        "heterogeneity": het_rows, "estimands": {"columns": ["Quantity", "Estimand", "Conditional on", "CI method"], "rows": estimand_rows},
        "min_per_arm": min_per_arm, "qini_normalisation": qini_norm, "outcome_law": outcome_law,
        "calibrated": cal is not None,
        "figures": {e["name"]: e for e in fig_entries}, "flags": summary.get("flags", []), "ref_label": labels[ref],
        "n_patients": summary["n_patients"], "n_arms": len(order), "simulated": summary["simulated"],
        "example": {"patient": ex.get("patient"), "arms": [labels.get(a, a) for a in ex.get("arms", [])]} if ex else None,
    }


def _env():  # noqa: ANN202
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=select_autoescape(["html", "j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _render_html(ctx: dict[str, Any]) -> str:
    return _env().get_template("report.html.j2").render(**ctx)


def _md_table(tab: dict[str, Any]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in tab["columns"]) + " |", "|" + "---|" * len(tab["columns"])]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in tab["rows"]]
    return "\n".join(lines)


def _render_md(ctx: dict[str, Any]) -> str:
    figs = ctx["figures"]
    out = [f"# {ctx['title']}", "", f"{ctx['n_patients']} patients randomized to {ctx['n_arms']} arms (reference: {ctx['ref_label']})"
           + ("; a simulated trial with known truth." if ctx["simulated"] else "."), ""]
    out += [f"> **Where the forecasts come from ({ctx['provenance']['status']}):** {ctx['provenance']['sentence']}", ""]
    if ctx["degenerate"]:
        out += [f"> **{ctx['degenerate']}**", ""]
    out += [f"- {h}" for h in ctx["headline"]] + [""]

    def fig(name: str) -> list[str]:
        if name not in figs:
            return []
        e = figs[name]
        return [f"![Figure {e['number']}](figures/{name}.png)", "", f"*Figure {e['number']}.* {e['caption']}", ""]

    out += ["## Primary endpoint: NET2 lesion rate ratios", "", _md_table(ctx["primary"]), "",
            "Randomized: patients allocated to the arm; analysed: those with an observed follow-up NET2 count. Rate per patient-year (crude): "
            "NET2 lesions / patient-years. Model rate per year: from the observed NB2 model ("
            + (f"adjusted for {', '.join(ctx['covariates'])}" if ctx["covariates"] else "arm only, not covariate-adjusted") + "). p: Wald test of the observed RR. "
            + ctx["multiplicity"], ""]
    out += ["## Arms", "", _md_table({"columns": ["Arm", "Identifier", "Efficacy group", "Reference", "Patients", "Colour"], "rows": ctx["arms_rows"]}), ""]
    out += ["## Table 1. Baseline characteristics by arm", "", _md_table(ctx["table1"]), "", ctx["table1_note"], ""]
    out += [f"## {ctx['projections_title']}", "", _md_table(ctx["projections"]), "", ctx["projections_note"], ""] + fig("forest_plot")
    out += ["### Estimands of the forecast-derived numbers", "", _md_table(ctx["estimands"]), ""]
    out += ["## Proportion free of NET2 lesions", "", _md_table(ctx["lesion_free"]), ""] + fig("lesion_free")
    out += ["## Activity classification", "", _md_table(ctx["activity"]), "", "All patients: value (95% CI); arms: value among patients randomized to the arm.", ""] + fig("activity_roc")
    out += ["## Calibration", "", _md_table(ctx["calibration"]), ""] + ([ctx["calibration"]["withheld"], ""] if ctx["calibration"]["withheld"] else []) + fig("reliability") + fig("pit_histogram") + fig("coverage") + fig("count_scatter")
    out += ["## Detection against the observed NET2 masks", "", _md_table(ctx["detection"]), ""] + fig("detection")
    out += ["## Counterfactual effects", "", _md_table(ctx["counterfactual"]), ""] + fig("effect_distribution")
    if ctx["heterogeneity"]:
        out += ["### Heterogeneity of the effect: the interaction test (primary)", "",
                "NB2 arm x predicted-benefit interaction among patients randomized to the arm or the reference (observed outcomes).", "",
                _md_table(ctx["heterogeneity"]), ""]
    out += ["### Effects in predicted-responder strata (exploratory)", "", _md_table(ctx["responders"]), ""] + fig("responders") + fig("qini")
    out += ["## Prognostic adjustment", "", _md_table(ctx["prognostic"]), "",
            f"Qini coefficient normalisation: {ctx['qini_normalisation'] or 'Radcliffe (2007)'}.", ""] + fig("prognostic")
    out += ["## Power and sample size", "", _md_table(ctx["power"]), "",
            "The design rate ratio is the forecast ratio of means, an assumption (conditional on the forecaster)"
            + (f"; outcome law: {ctx['outcome_law']}." if ctx["outcome_law"] else "."), ""] + fig("power")
    out += ["## Example slices", ""] + fig("example_slices")
    out += ["## Abbreviations", ""] + [f"- **{k}**: {v}" for k, v in ctx["abbreviations"].items()] + [""]
    out += ["## Settings", "", _md_table(ctx["settings_table"]), "", "The full settings record is in summary.json (`settings`).", ""]
    if ctx["flags"]:
        out += ["## Flags", ""] + [f"- {f}" for f in ctx["flags"]] + [""]
    return "\n".join(out).rstrip() + "\n"


def settings_dict(s: ReportSettings) -> dict[str, Any]:
    return asdict(s)
