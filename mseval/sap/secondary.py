"""Secondary endpoints of an analysis plan on a cohort with several visits (the per-visit table of
`mseval.lesions.visit_counts.per_visit_counts`, `SapContext.visits`), each adjusted by the plan's
covariates (the named transforms of `mseval.sap.covariates`):

- ``net2_cumulative``: the NET2 count over each patient's observed follow-up, NB2 with offset
  log(observed years), Mancl-DeRouen bias-reduced sandwich (`mseval.stats.visits.fit_cumulative_nb2`);
  with `ci: small_sample`, below the plan's `below_n_per_arm` the plan's small-sample test and its CI on
  the same totals (the primary analysis' rule; `_small_sample_cumulative`);
- ``net2_gee``: the per-interval NET2 counts, NB-GEE with the plan's working correlation (`corr`:
  independence, exchangeable, ar1), offset log(interval years), bias-reduced sandwich
  (`mseval.stats.gee.fit_gee`): the population-averaged rate ratio;
- ``gd_per_scan``: new Gd+ lesions per scan, NB2 of each patient's Gd+ total with offset log(scans)
  (`mseval.stats.visits.fit_gd_per_scan`);
- ``first_lesion_hazard``: the time to the first new or enlarging T2 lesion, interval-censored at the
  scans, discrete-time cloglog (`fit_first_lesion_cloglog`): a hazard ratio under
  `HAZARD_ASSUMPTIONS`. On a single-visit cohort it is the lesion-free odds ratio and risk difference
  (`lesion_free`), since one scan cannot say when a lesion appeared (recorded as a deviation).

On a single-visit cohort the first three are skipped with a recorded deviation when the plan's
section says `single_visit: skip` (the default plan), and refused otherwise (`check_visits`: an
InputError naming the field, before any work).

Each table: one row per arm (reference first): arm, n_randomized, ratio (rate ratio or hazard ratio),
ci_low, ci_high, p_value, estimable, note; Wald 95% CIs (per comparison, not multiplicity-adjusted).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.sap.covariates import derive, full_rank_terms

MULTI_VISIT = ("net2_cumulative", "net2_gee", "gd_per_scan")
ESTIMANDS = {
    "net2_cumulative": "NB2 rate ratio of new/enlarging T2 lesions per year of observed follow-up (all visits), arm vs reference, "
                       "conditional on the covariates; {ci}; exposure-based, valid under MAR",
    "net2_gee": "population-averaged rate ratio of new/enlarging T2 lesions per year over the visit intervals (NB-GEE, working "
                "correlation {corr}), arm vs reference, given the covariates; {ci}",
    "gd_per_scan": "NB2 rate ratio of new Gd+ lesions per scan (each patient's Gd+ total over its observed scans, offset log(scans)), "
                   "arm vs reference, conditional on the covariates; {ci}",
}
_SANDWICH_CI = {"net2_cumulative": "bias-reduced (Mancl-DeRouen) sandwich CI", "net2_gee": "bias-reduced sandwich CI",
                "gd_per_scan": "bias-reduced sandwich CI"}
"""The CI words of each endpoint's estimand when its Wald CI stands (`ESTIMANDS[e].format(corr=..., ci=...)`)."""


def several_visits(visits: pd.DataFrame | None) -> bool:
    """Whether a per-visit table (or visits.csv) schedules more than one follow-up visit."""
    return visits is not None and len(visits) > 0 and int(pd.to_numeric(visits["visit_index"]).max()) > 1


def check_visits(plan: dict[str, Any], has_visits: bool, source: str | None) -> None:
    """A plan whose multi-visit endpoint (net2_cumulative, net2_gee, gd_per_scan) is not marked
    `single_visit: skip` on a cohort with one follow-up scan: InputError naming the field (for net2_gee
    the working correlation, which one visit per patient cannot support)."""
    if has_visits:
        return
    for i, s in enumerate(plan.get("secondary", [])):
        if s["endpoint"] in MULTI_VISIT and s.get("single_visit", "refuse") != "skip":
            where = f"secondary[{i}].corr" if s["endpoint"] == "net2_gee" else f"secondary[{i}].endpoint"
            what = (f"working correlation {s.get('corr', 'exchangeable')!r} needs several visits per patient" if s["endpoint"] == "net2_gee"
                    else f"endpoint {s['endpoint']!r} needs several visits")
            raise InputError(source, f"{where}: {what}, and this cohort has one follow-up scan; "
                                     f"set single_visit: skip to skip it", field=where)


def _terms(data: pd.DataFrame, section: dict[str, Any], ctx: Any) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """(patients with the derived covariate columns, covariate terms, their descriptions, deviations): a
    covariate constant over the patients with an observed follow-up, or collinear, is dropped with a deviation."""
    analysed = pd.to_numeric(data["net2"], errors="coerce").notna().to_numpy()
    cov = derive(data, section.get("covariates", []), analysed=analysed, file=ctx.file)
    cov = full_rank_terms(cov.data.loc[analysed], "net2", ["arm"], cov, file=ctx.file)
    return cov.data, list(cov.terms), [k["description"] for k in cov.kept], list(cov.deviations)


def _not_fitted(name: str, endpoint: str, ratio: str, ctx: Any, why: str, info: dict[str, Any]) -> Any:
    from mseval.sap.runner import AnalysisResult

    t = _per_arm(pd.DataFrame({"term": [], ratio: [], "ci_low": [], "ci_high": [], "p_value": [], "estimable": [], "note": []}), ratio, ctx)
    t.loc[~t["reference"], "note"] = f"not estimable: {why}"
    return AnalysisResult(name, endpoint, t, pd.DataFrame(), [f"not estimable: {why}"], info)


def _per_arm(fit_table: pd.DataFrame, ratio: str, ctx: Any) -> pd.DataFrame:
    t = fit_table.set_index("term")
    rows = []
    for a in ctx.arms:
        row: dict[str, Any] = {"arm": a, "n_randomized": int(ctx.n_randomized.get(a, 0)), "reference": a == ctx.reference}
        if a == ctx.reference:
            row.update({ratio: float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "estimable": True,
                        "note": "reference arm"})
        elif a in t.index:
            r = t.loc[a]
            row.update({ratio: float(r[ratio]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]), "p_value": float(r["p_value"]),
                        "estimable": bool(r["estimable"]), "note": str(r["note"]) if isinstance(r["note"], str) else ""})
        else:
            row.update({ratio: float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "estimable": False,
                        "note": "not in the fit (no analysable patient in this arm)"})
        rows.append(row)
    return pd.DataFrame(rows)


def multi_visit_analysis(data: pd.DataFrame, section: dict[str, Any], ctx: Any, *, name: str) -> Any:
    """One of `MULTI_VISIT` (section['endpoint']) on `ctx.visits`; skipped with a deviation on a single-visit cohort."""
    from mseval.sap.runner import AnalysisResult

    endpoint = section["endpoint"]
    if not several_visits(ctx.visits):
        return AnalysisResult(name, endpoint, pd.DataFrame(columns=["arm"]), pd.DataFrame(),
                              [f"not run: {endpoint} needs several visits and this cohort has one follow-up scan (single_visit: skip)"],
                              {"estimand": ESTIMANDS[endpoint].format(corr=section.get("corr", "exchangeable"), ci=_SANDWICH_CI[endpoint])})
    from mseval.stats.gee import fit_gee
    from mseval.stats.visits import fit_cumulative_nb2, fit_gd_per_scan, patient_totals

    patients, covs, words, devs = _terms(data, section, ctx)
    patients = patients.drop(columns=[c for c in ("net2",) if c in patients.columns])
    kw = {"covariates": covs, "reference": ctx.reference, "file": ctx.file}
    corr = section.get("corr", "exchangeable")
    ci_words = _SANDWICH_CI[endpoint]
    info: dict[str, Any] = {"estimand": ESTIMANDS[endpoint].format(corr=corr, ci=ci_words), "covariates": words}
    try:
        if endpoint == "net2_cumulative":
            by_arm = section.get("dispersion", "common") == "by_arm"
            fit = fit_cumulative_nb2(ctx.visits, patients, **kw, dispersion="by_arm" if by_arm else "common",
                                     cov="expected" if by_arm else "bias_reduced")
            extra = {"alpha": fit.alpha, "n": fit.n, "dispersion": fit.dispersion}
            if section.get("ci", "small_sample") == "small_sample":
                fit, how = _small_sample_cumulative(fit, patient_totals(ctx.visits, patients, file=ctx.file), ctx)
                extra["ci"], ci_words = how, f"CI and p: {how}"
        elif endpoint == "net2_gee":
            fit = fit_gee(ctx.visits, patients, corr=corr, ci_reference=section.get("ci_reference", "normal"), **kw)
            extra = {"corr": fit.corr, "dep_param": fit.dep_param, "nb_alpha": fit.nb_alpha, "n_patients": fit.n_patients, "n_obs": fit.n_obs,
                     "ci_reference": fit.ci_reference}
            if section.get("ci", "small_sample") == "small_sample":
                fit, extra["ci"] = _small_sample_gee(fit, patient_totals(ctx.visits, patients, file=ctx.file), patients, covs, ctx)
                ci_words = f"CI and p: {extra['ci']}"
        else:
            fit = fit_gd_per_scan(ctx.visits, patients, **kw)
            extra = {"alpha": fit.alpha, "n": fit.n}
    except InputError as exc:  # the data cannot support the fit (e.g. every patient with one observed visit): flagged, not hidden
        return _not_fitted(name, endpoint, "rate_ratio", ctx, exc.problem, info)
    except (ValueError, np.linalg.LinAlgError) as exc:  # a numerical failure on degenerate data (e.g. a non-finite working covariance)
        return _not_fitted(name, endpoint, "rate_ratio", ctx, f"the fit failed numerically ({type(exc).__name__}: {exc})", info)
    info.update({"estimand": ESTIMANDS[endpoint].format(corr=corr, ci=ci_words), "formula": fit.formula, "notes": list(fit.notes), **extra})
    return AnalysisResult(name, endpoint, _per_arm(fit.table, "rate_ratio", ctx), fit.table.assign(analysis=name), devs, info)


def _small_sample_rule(totals: pd.DataFrame, ctx: Any) -> tuple[str, str]:
    """(test, why) of the plan's small-sample rule (`runner._select_test`, the primary analysis' rule) for the
    smallest arm among the patients with an observed follow-up (`totals`: `patient_totals`)."""
    from mseval.sap.runner import _select_test

    n = totals.loc[totals["net2"].notna(), "arm"].astype(str).value_counts().reindex(list(ctx.arms), fill_value=0)
    return _select_test(ctx, int(n.min()))


def _with_arm_rows(fit: Any, res: pd.DataFrame, how: str) -> Any:
    """`fit` (a result with `table` (term rows) and `notes`) with each arm row's ci_low, ci_high and p_value taken
    from `res` (indexed by arm), estimable only where both are, and `how` noted."""
    from dataclasses import replace

    t = fit.table.copy()
    arm_rows = t["term"].isin(res.index)
    r = res.loc[t.loc[arm_rows, "term"]]
    for col in ("ci_low", "ci_high", "p_value"):
        t.loc[arm_rows, col] = r[col].to_numpy(dtype=float)
    t.loc[arm_rows, "estimable"] = t.loc[arm_rows, "estimable"].to_numpy(dtype=bool) & r["estimable"].to_numpy(dtype=bool)
    t.loc[arm_rows, "note"] = [n if isinstance(n, str) and n else (rn if isinstance(rn, str) else "")
                               for n, rn in zip(t.loc[arm_rows, "note"], r["note"])]
    return replace(fit, table=t, notes=[*fit.notes, f"arm p values and CIs: {how}"])


_WALD_ABOVE = "Wald (the smallest analysed arm has enough patients for the plan's small-sample rule not to apply)"


def _small_sample_cumulative(fit: Any, totals: pd.DataFrame, ctx: Any) -> tuple[Any, str]:
    """`fit` (a `fit_cumulative_nb2` result) with each arm's p value and CI replaced by the plan's small-sample
    test (`mseval.stats.small_sample.primary_tests` on the per-patient totals, the fit's formula and dispersion,
    offset log(observed years), the plan's seed) when the smallest analysed arm is below the plan's
    `below_n_per_arm`; unchanged otherwise. Returns (fit, the words that say which CI it is)."""
    from mseval.stats.small_sample import primary_tests

    test, why = _small_sample_rule(totals, ctx)
    if test == "wald":
        return fit, _WALD_ABOVE
    d = totals.loc[totals["net2"].notna()]
    res = primary_tests(d.assign(net2=d["net2"].astype(np.int64)), fit.formula, "arm", fit.reference, method=test,
                        offset_col="followup_years", seed=ctx.seed, n_permutations=int(ctx.small_sample.get("n_permutations", 999)),
                        file=ctx.file, dispersion=fit.dispersion).table.set_index("arm")
    how = f"{res['ci_method'].iloc[0] if len(res) else test} ({why})"
    return _with_arm_rows(fit, res, how), how


def _small_sample_gee(fit: Any, totals: pd.DataFrame, patients: pd.DataFrame, covs: list[str], ctx: Any) -> tuple[Any, str]:
    """`fit` (a `fit_gee` result) with each arm's p value and CI from the GEE's randomization test
    (`mseval.stats.gee_permutation`, the fit's working correlation, the plan's seed and number of permutations)
    when the plan's small-sample rule applies (whatever test it names: the GEE has this one small-sample
    interval); unchanged otherwise."""
    from mseval.stats.gee_permutation import gee_permutation_tests

    test, why = _small_sample_rule(totals, ctx)
    if test == "wald":
        return fit, _WALD_ABOVE
    res = gee_permutation_tests(ctx.visits, patients, corr=fit.corr, covariates=covs, reference=fit.reference,
                                n_permutations=int(ctx.small_sample.get("n_permutations", 999)), seed=ctx.seed, file=ctx.file,
                                fit=fit).set_index("arm")
    how = f"{res['ci_method'].iloc[0] if len(res) else 'permutation'} ({why})"
    return _with_arm_rows(fit, res, how), how


def first_lesion_analysis(data: pd.DataFrame, section: dict[str, Any], ctx: Any, *, name: str) -> Any:
    """The hazard ratio of the first new/enlarging T2 lesion (several visits); the lesion-free odds ratio otherwise."""
    from mseval.sap.runner import AnalysisResult, lesion_free_analysis

    if not several_visits(ctx.visits):
        r = lesion_free_analysis(data, section, ctx, name=name)
        return AnalysisResult(name, "first_lesion_hazard", r.table, r.terms,
                              [*r.deviations, "one follow-up scan: the hazard ratio is not estimable; the lesion-free odds ratio and risk "
                                              "difference are reported instead"], r.info)
    from mseval.stats.visits import fit_first_lesion_cloglog

    patients, covs, words, devs = _terms(data, section, ctx)
    try:
        fit = fit_first_lesion_cloglog(ctx.visits, patients.drop(columns=[c for c in ("net2",) if c in patients.columns]), covariates=covs,
                                       reference=ctx.reference, file=ctx.file)
    except InputError as exc:
        return _not_fitted(name, "first_lesion_hazard", "hazard_ratio", ctx, exc.problem, {"covariates": words})
    info = {"estimand": "hazard ratio of the first new or enlarging T2 lesion, arm vs reference, interval-censored at the scans "
                        "(discrete-time cloglog, offset log(interval years)), conditional on the covariates",
            "assumptions": fit.assumptions, "covariates": words, "formula": fit.formula, "events": fit.events, "notes": list(fit.notes)}
    return AnalysisResult(name, "first_lesion_hazard", _per_arm(fit.table, "hazard_ratio", ctx), fit.table.assign(analysis=name), devs, info)


__all__ = ["ESTIMANDS", "MULTI_VISIT", "check_visits", "several_visits", "first_lesion_analysis", "multi_visit_analysis"]
