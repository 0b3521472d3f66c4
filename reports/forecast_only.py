"""A forecast-only report: a cohort with baseline scans only (no follow-up yet), forecast under every arm.

What a planner of a new trial wants from the forecasts, and nothing that needs an observed outcome:
Table 1, the forecast NET2 count per patient under each arm, the counterfactual effects (every
patient under every arm: mean difference and ratio of mean forecast counts vs the reference, with
the spread of the per-patient effects) and their figure. Every section of the trial report that
compares forecasts with observed follow-up (primary endpoint, lesion-free proportions, activity,
calibration, detection, responders, Qini, prognostic adjustment, power) is listed as absent, with why.

`followup_mode(cohort)` decides, before any counting work, which report a cohort gets: "trial"
(every patient has an observed follow-up), "forecast-only" (none has), and refuses a mixture.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from reports import numbers as N

ABSENT = (
    ("Primary endpoint (observed NET2 rate ratios, NB2)", "needs observed NET2 counts at follow-up"),
    ("Forecast rate ratio (NB2 on the allocated arm's samples) and model-based projections", "judged against the observed trial; the counterfactual ratio of means above is the forecast of the effect"),
    ("Proportion free of NET2 lesions", "needs observed follow-up"),
    ("Activity classification, calibration, coverage, PIT", "compare forecasts with observed counts"),
    ("Detection against the observed NET2 masks", "needs net2_mask files"),
    ("Heterogeneity test, responder strata, Qini curves", "observed effects within forecast-chosen strata"),
    ("Prognostic adjustment and power", "fitted on the observed counts (the outcome law of the simulated trials)"),
)
"""(section, why it is absent) of a forecast-only report."""


def followup_mode(cohort: Any, evaluation: str | Path | None = None, effects: str | Path | None = None) -> str:
    """"trial" when every patient of `cohort` has a net2_mask, "forecast-only" when none has (baseline
    scans only). Reads no image. InputError when some patients have one and some do not while the
    report must compute an evaluation or effects folder itself (`evaluation`, `effects`: the folders
    given, None to compute): the error names the first patient without one, its row as numbered in
    manifest.csv. InputError too for a folder given with a cohort without follow-up."""
    has = [cohort.path(pid, "net2_mask") is not None for pid in cohort.patient_ids]
    if not any(has):
        if evaluation is not None or effects is not None:
            raise InputError(evaluation or effects, "the cohort has no follow-up (no net2_mask): its forecast-only report computes its own "
                                                    "counts and takes no --evaluation / --effects folder")
        return "forecast-only"
    if all(has) or (evaluation is not None and effects is not None):
        return "trial"
    k = has.index(False)
    raise InputError(cohort.root / "manifest.csv", f"patient {cohort.patient_ids[k]} has no net2_mask while {sum(has)} of {len(has)} patients have one: "
                                                   "a trial report needs observed follow-up for every patient (a cohort with none gets a forecast-only report)",
                     row=k + 1, field="net2_mask")


def forecast_per_arm(means: pd.DataFrame, manifest: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per arm: patients, mean forecast NET2 count per patient with a 95% t-interval over
    patients (conditional on the forecaster), mean P(>= 1 lesion), and the forecast annualized rate
    (sum of forecast counts / sum of follow-up years; follow-up = the manifest's followup_weeks, for a
    cohort without follow-up the week of the first scheduled visit)."""
    from mseval.units import WEEKS_PER_YEAR

    years = manifest.set_index(manifest["patient_id"].astype(str))["followup_weeks"].astype(float) / WEEKS_PER_YEAR
    rows = []
    for arm in order:
        g = means[means["arm"] == arm]
        e = g["expected"].astype(float).to_numpy()
        n = len(e)
        m = float(e.mean()) if n else np.nan
        half = float(stats.t.ppf(0.975, n - 1) * e.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
        y = float(years.loc[g["patient_id"].astype(str)].sum())
        rows.append({"arm": arm, "patients": n, "mean_forecast_count": m, "ci_low": max(m - half, 0.0), "ci_high": m + half,
                     "mean_p_active": float(g["p_active"].mean()) if n else np.nan, "samples_per_patient": int(g["samples"].min()) if n else 0,
                     "forecast_annual_rate": float(e.sum() / y) if y > 0 else np.nan, "followup_years": y})
    return pd.DataFrame(rows)


def _html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<div class="tablebox"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _md_table(columns: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *("| " + " | ".join(str(v) for v in r) + " |" for r in rows)])


CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;line-height:1.45}"
       ".tablebox{overflow-x:auto}table{border-collapse:collapse;font-size:14px}td,th{border-bottom:1px solid #ccc;padding:3px 8px;text-align:left}"
       ".banner{border:2px solid #b35806;padding:.5rem 1rem}img{max-width:100%;height:auto}.note{font-size:13px;color:#555}")


def build_forecast_only_report(
    cohort: Any,
    cohort_dir: str | Path,
    forecasts_dir: Path,
    tmp: Path,
    *,
    title: str,
    settings: Any,
    say: Callable[[str], None],
    extra_settings: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Write the forecast-only report into the (temporary) folder `tmp`: report.html, report.md,
    summary.json, tables/*.csv, figures/*, results/counts. Returns the summary."""
    from mseval import __version__
    from mseval.io.atomic import write_bytes_atomic, write_csv_atomic, write_json_atomic
    from mseval.io.store import ForecastStore
    from mseval.lesions.ensemble import CountSettings, count_store
    from mseval.provenance import forecast_provenance
    from mseval.stats.counterfactual import counterfactual_effects
    from mseval.stats.ensemble_counts import forecast_means
    from reports import figures as F
    from reports import settings_table as S
    from reports import tables as T
    from reports.style import arm_labels, figure_renderings

    arms_df, ref = cohort.arms, cohort.reference_arm
    order, labels = list(arms_df["arm"]), arm_labels(arms_df)
    say("counting forecast lesions")
    count_store(forecasts_dir, tmp / "results" / "counts", CountSettings(settings.connectivity, settings.min_volume_mm3), workers=settings.workers)
    counts = pd.read_parquet(tmp / "results" / "counts" / "counts.parquet")
    means = forecast_means(counts[counts["patient_id"].astype(str).isin(cohort.patient_ids)])
    per_arm = forecast_per_arm(means, cohort.manifest, order)
    cf = counterfactual_effects(means, ref)
    cf_avg = T.order_arms(cf.average, arms_df)
    table1 = T.table1(cohort.manifest, arms_df)
    tables = {"table1_baseline": table1, "forecast_per_arm": per_arm, "counterfactual_average": cf_avg,
              "counterfactual_patients": cf.patients.sort_values(["patient_id", "arm"]).reset_index(drop=True)}
    for name, df in tables.items():
        write_csv_atomic(df, tmp / "tables" / f"{name}.csv")

    say("drawing the figure")
    caption = (f"Per-patient counterfactual effect: forecast expected NET2 count under the arm minus under {labels[ref]}, for every patient "
               "(each forecast under every arm). Circle: median; bar: IQR. Conditional on the forecaster: its errors are not shown.")
    fig = F.effect_distribution(cf.patients, arms_df, reference=ref)
    files, html_png = figure_renderings(fig, settings.figure_formats, figure_dpi=settings.figure_dpi, html_dpi=settings.html_dpi)
    for fmt, data in files.items():
        write_bytes_atomic(data, tmp / "figures" / f"effect_distribution.{fmt}")
    png = base64.b64encode(html_png).decode("ascii")

    fa_cols = ["Arm", "Patients", "Mean forecast NET2 count per patient (95% CI over patients)", "Mean P(>= 1 NET2 lesion)",
               "Forecast NET2 lesions per patient-year"]
    fa_rows = [[labels.get(r["arm"], r["arm"]), str(int(r["patients"])),
                N.additive_text(r["mean_forecast_count"], r["ci_low"], r["ci_high"]), N.proportion_text(r["mean_p_active"]),
                N.num(r["forecast_annual_rate"])] for r in per_arm.to_dict("records")]
    cf_cols = ["Arm", "Mean difference vs reference, lesions (95% CI)", "Ratio of means (95% CI)", "10th / 50th / 90th percentile of patient differences"]
    cf_rows = [[labels.get(r["arm"], r["arm"]), N.additive_text(r["mean_difference"], r["difference_ci_low"], r["difference_ci_high"]),
                N.ratio_text(r["ratio_of_means"], r["ratio_ci_low"], r["ratio_ci_high"], estimable=r.get("estimable", True), note=r.get("note", "")),
                f"{N.num(r['difference_p10'], decimals=1)} / {N.num(r['difference_median'], decimals=1)} / {N.num(r['difference_p90'], decimals=1)}"]
               for r in cf_avg.to_dict("records")]
    t1_cols = list(table1.columns)
    t1_rows = [[str(v) for v in r] for r in table1.itertuples(index=False)]
    absent_rows = [[s, why] for s, why in ABSENT]

    idx = ForecastStore.open(forecasts_dir).index()
    provenance = forecast_provenance(cohort_dir, forecasts_dir)
    samples = sorted(set(int(s) for s in idx["samples"]))
    settings_rows = [("Mode", "forecast-only: the cohort has baseline scans only (no net2_mask, no follow-up visit)"),
                     ("Forecasts", f"{len(cohort.patient_ids)} patients x {len(order)} arms, {', '.join(map(str, samples))} samples per patient and arm; "
                                   f"checkpoint {', '.join(sorted(set(idx['checkpoint'].astype(str))))}"),
                     S.model_row(provenance),
                     ("Lesions", f"{settings.connectivity}-connectivity, components under {N.num(settings.min_volume_mm3)} mm^3 dropped"),
                     *extra_settings]
    banner = (f"FORECAST ONLY. This cohort has baseline scans only: no patient has a follow-up NET2 mask, so nothing below is compared "
              f"with an observed outcome. {provenance.get('sentence', '')}").strip()
    summary = {"format": "mseval-report-summary", "mode": "forecast-only", "mseval_version": __version__, "title": title,
               "inputs": {"cohort": str(cohort_dir), "forecasts": str(forecasts_dir)}, "n_patients": len(cohort.patient_ids),
               "reference_arm": ref, "arms": [{"arm": a, "label": labels[a], "n": int((cohort.manifest["arm"] == a).sum())} for a in order],
               "forecast_per_arm": json.loads(per_arm.to_json(orient="records")),
               "counterfactual": json.loads(cf_avg[["arm", "ratio_of_means", "ratio_ci_low", "ratio_ci_high", "mean_difference",
                                                   "difference_ci_low", "difference_ci_high"]].to_json(orient="records")),
               "absent": [{"section": s, "why": why} for s, why in ABSENT], "provenance": provenance,
               "settings": {"connectivity": settings.connectivity, "min_volume_mm3": settings.min_volume_mm3, "samples_per_patient_and_arm": samples,
                            "sampler_groups": S.sampler_groups(idx), "extra": [list(r) for r in extra_settings]},
               "figures": [f"figures/effect_distribution.{x}" for x in settings.figure_formats], "tables": [f"tables/{n}.csv" for n in tables]}
    write_json_atomic(summary, tmp / "summary.json")

    fc_note = "Conditional on the forecaster: its law is taken as given, its errors are not in the CIs."
    sections = [("Forecast NET2 count under each arm", fa_cols, fa_rows, fc_note),
                ("Counterfactual effects (every patient under every arm)", cf_cols, cf_rows,
                 f"Ratio of mean forecast counts and mean difference vs {labels[ref]} over every patient (delta-method CI over patients). " + fc_note),
                ("Table 1. Baseline characteristics", t1_cols, t1_rows, ""),
                ("What this report does not show", ["Section", "Why absent"], absent_rows,
                 "Each needs observed follow-up; run `mseval report` again once the cohort holds the follow-up NET2 masks."),
                ("Settings", ["Setting", "Value"], [list(r) for r in settings_rows], "")]
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="banner">{html.escape(banner)}</p>']
    md = [f"# {title}", "", banner, ""]
    for k, (head, cols, rows, note) in enumerate(sections):
        body += [f"<h2>{html.escape(head)}</h2>", _html_table(cols, rows)] + ([f'<p class="note">{html.escape(note)}</p>'] if note else [])
        md += [f"## {head}", "", _md_table(cols, rows), ""] + ([note, ""] if note else [])
        if k == 1:
            body.append(f'<figure><img alt="effect distribution" src="data:image/png;base64,{png}"><figcaption>Figure 1. {html.escape(caption)}</figcaption></figure>')
            md += ["![Figure 1](figures/effect_distribution.png)", "", f"*Figure 1. {caption}*", ""]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    write_bytes_atomic(page.encode("utf-8"), tmp / "report.html")
    write_bytes_atomic("\n".join(md).encode("utf-8"), tmp / "report.md")
    return summary
