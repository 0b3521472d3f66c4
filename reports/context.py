"""What the report templates show, as strings: every table cell, headline and note, built from the
result tables and summary by `build_context` (one place for number formatting; every estimate
through `reports.numbers` and the shared estimability rule). `reports.render` turns it into
report.html and report.md.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from reports import metric_cells as MC
from reports import numbers as N
from reports import projections as P
from reports import settings_table as S
from reports import tables as T
from reports.style import arm_colors, arm_labels

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

MIN_SAMPLES_FOR_COVERAGE_HEADLINE = 20
"""With S samples per patient the randomized PIT has S + 1 levels and its interval coverage sits
near nominal whatever the forecast; coverage is headlined only from this many samples on."""

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


RESPONDERS_ALL_ROW = ("The all-patients row repeats the primary table: its observed RR is the primary estimate (one NB2 model over "
                      "all arms), its predicted RR the counterfactual ratio of means and its true RR the true ratio of mean counts, "
                      "both over every patient of the trial under both arms; in a stratum the predicted and true RRs are over the "
                      "stratum's randomized patients under both arms.")
"""What the responders table's all-patients row is (issue 25): the same numbers as the primary table."""


def build_context(title: str, summary: dict, settings_doc: dict, table1: pd.DataFrame, t: dict, out_tables: dict, fig_entries: list,
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
    rsp_rows["note"] = RESPONDERS_ALL_ROW
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

    has_attainable = "attainable_saving_pct" in pg.columns  # simulated cohorts only: absent (not 0) on real ones

    def saving_cell(r: dict) -> str:
        """The measured saving, or why it is not estimable (e.g. the forecaster trained on this trial's patients)."""
        if N.flagged(r.get("estimable", True)):
            return N.ne_text(r.get("note") if isinstance(r.get("note"), str) else "")
        return pct_ci(r["sample_size_saving_pct"], r["saving_ci_low_pct"], r["saving_ci_high_pct"]) if has_pg_ci else pct_ci(r["sample_size_saving_pct"])

    pg_rows = {"columns": ["Arm", "RR unadjusted", "RR adjusted (95% CI)", "SE reduction", "Sample-size saving, measured (95% CI)"]
                          + (["Sample-size saving, attainable (observable oracle)"] if has_attainable else [])
                          + (["PROCOVA correlation (95% CI)", "PROCOVA saving (95% CI)"] if has_procova else [])
                          + ["Qini coefficient (Radcliffe normalisation: perfect 1, random 0; exploratory)"],
               "rows": [[labels.get(r["arm"], r["arm"]), N.ratio_text(r["rate_ratio_unadjusted"]),
                         N.ratio_text(r["rate_ratio_adjusted"], r["ci_low_adjusted"], r["ci_high_adjusted"], estimable=r.get("estimable", True), note=r.get("note", "")),
                         f"{_num(r['se_reduction_pct'], 0)}%",
                         saving_cell(r)]
                        + ([pct_ci(r["attainable_saving_pct"])] if has_attainable else [])
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
        "observed_ci": (settings_doc.get("observed_model") or {}).get("primary_interval") or S.observed_ci_words({}),
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
