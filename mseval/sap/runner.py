"""Run an analysis plan on an analysis table (one row per randomized patient): the primary analysis,
its sensitivity analyses and the secondary endpoints, each dispatched by endpoint name through
`ANALYSES` (name -> function taking the table, the plan's section and the run's context, returning an
`AnalysisResult`), so other endpoints plug in by registering a function and adding the name to the
schema's enum. The primary test is dispatched the same way through `PRIMARY_TESTS`.

Primary analysis (`net2_count`): NB2 regression (`mseval.stats.count_model.fit_count_model`, the
model of R's `MASS::glm.nb`) of the NET2 count on arm + the plan's covariates (named transforms,
`mseval.sap.covariates`), offset log(follow-up years). Per arm vs the reference: n randomized,
n analysed, events, exposure (patient-years), the adjusted rate per year with CI (marginal
standardisation over the analysed patients, delta method with the model's covariance:
`mseval.stats.standardised`), the rate ratio exp(b_arm) with its Wald CI, the rate difference with
CI, the test's p value and the p value adjusted by the plan's multiplicity procedure
(`mseval.stats.multiplicity`), `estimable` and `note`. Intervals are per comparison (95%, not
simultaneous); the multiplicity adjustment applies to the p values.

Deviations from the plan are recorded, never silent: a covariate dropped because the analysed
patients leave it constant or it is collinear, the fit at the Poisson boundary, a fit that did not
converge, a procedure or SE the chosen test cannot use. The test the plan's small-sample rule chose is
the plan itself, not a deviation: it is stated with the analysis (`info["test_rule"]`, the table's estimand).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mseval.sap.covariates import Covariates, derive, full_rank_terms
from mseval.sap.schema import Sap
from mseval.stats.count_model import CountModelFit, fit_count_model
from mseval.stats.lesion_free_adjusted import OR_ESTIMAND, RD_ESTIMAND, fit_lesion_free_adjusted
from mseval.stats.multiplicity import adjust, describe, wald_correlation
from mseval.stats.standardised import standardised_rates

RESPONSE = "net2"
ARM = "arm"
OFFSET_COLUMN = "followup_years"


@dataclass(frozen=True)
class SapContext:
    """What every analysis of one run shares: the arms (reference first), the reference, the data
    file named in errors, patients randomized per arm, the plan's multiplicity and small-sample sections."""

    arms: list[str]
    reference: str
    n_randomized: dict[str, int]
    multiplicity: dict[str, Any]
    small_sample: dict[str, Any]
    file: str | None = None
    seed: int = 0
    missing: str = ""
    visits: pd.DataFrame | None = None


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis: `table` (one row per arm, reference first), `terms` (every model term), the
    deviations and notes (words), and `info` (formula, covariates used, test, estimands...)."""

    name: str
    endpoint: str
    table: pd.DataFrame
    terms: pd.DataFrame
    deviations: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.table


_PRIMARY_COLUMNS = ["p_value", "statistic", "ci_low", "ci_high", "ci_method", "estimable", "note"]


def _wald(fit: CountModelFit, data: pd.DataFrame, formula: str, arms: list[str], offset: str | None, ctx: SapContext) -> pd.DataFrame:
    """The Wald z test of each compared arm's log rate ratio (the fit's own SEs: expected, observed or
    sandwich) and its Wald CI; indexed by arm, `_PRIMARY_COLUMNS`."""
    t = fit.table.set_index("term").loc[arms]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = t["coef"].to_numpy(dtype=float) / t["se"].to_numpy(dtype=float)
    se = {"robust": "sandwich", "observed": "observed information"}.get(fit.cov, "expected information")
    disp = "; NB2 dispersion per arm" if fit.dispersion == "by_arm" else ""
    return pd.DataFrame({"p_value": t["p_value"].to_numpy(dtype=float), "statistic": z, "ci_low": t["ci_low"].to_numpy(dtype=float),
                         "ci_high": t["ci_high"].to_numpy(dtype=float), "ci_method": f"Wald, normal ({se} SE{disp})",
                         "estimable": t["estimable"].to_numpy(dtype=bool), "note": ""}, index=pd.Index(arms, name="arm"))


def _small_sample(method: str) -> Callable[..., pd.DataFrame]:
    """The `mseval.stats.small_sample.primary_tests` test `method` as a primary test: its p value,
    statistic and matching CI (profile likelihood, t or inverted permutation test), the plan's seed."""

    def run(fit: CountModelFit, data: pd.DataFrame, formula: str, arms: list[str], offset: str | None, ctx: SapContext) -> pd.DataFrame:
        from mseval.stats.small_sample import primary_tests

        res = primary_tests(data, formula, ARM, ctx.reference, method=method, offset_col=offset, seed=ctx.seed,
                            n_permutations=int(ctx.small_sample.get("n_permutations", 999)), file=ctx.file, dispersion=fit.dispersion)
        t = res.table.assign(arm=lambda d: d["arm"].astype(str)).set_index("arm").reindex(arms)
        if fit.dispersion == "by_arm":
            t["ci_method"] = t["ci_method"].astype(str) + "; NB2 dispersion per arm"
        return t.assign(estimable=t["estimable"].fillna(False).astype(bool), note=t["note"].fillna("").astype(str))[_PRIMARY_COLUMNS]

    return run


PRIMARY_TESTS: dict[str, Callable[..., pd.DataFrame]] = {"wald": _wald, "t": _small_sample("t"), "lrt": _small_sample("lrt"),
                                                         "permutation": _small_sample("permutation")}
"""Test of the compared arms' rate ratios: name -> function(fit, analysed data, formula, compared arms,
offset column, ctx) -> table indexed by arm with `_PRIMARY_COLUMNS` (p value, statistic, the CI of
the rate ratio that matches the test and its method, estimable, note)."""


def _count_estimand(covs: list[dict[str, Any]], offset: bool, reference: str, missing: str) -> str:
    adj = ("adjusted for " + ", ".join(c["description"] for c in covs)) if covs else "not covariate-adjusted"
    unit = "annualised rate (lesions per patient-year)" if offset else "mean count over follow-up"
    return (f"ratio and difference of the {unit} of new/enlarging T2 lesions, each arm vs {reference}, in the analysed trial population "
            f"({adj}; NB2, log link; treatment policy; missing data: {missing or 'complete case'}); rate and difference "
            "standardised over the analysed patients' covariates, CIs conditional on them")


def _select_test(ctx: SapContext, n_min: int) -> tuple[str, str]:
    """(test, words when the small-sample rule chose it): the plan's test when the smallest analysed arm
    has fewer than `below_n_per_arm` patients ('auto': the permutation test), else the Wald z test."""
    below = int(ctx.small_sample.get("below_n_per_arm", 1000))
    if n_min < below:
        planned = str(ctx.small_sample.get("test", "auto"))
        test = "permutation" if planned == "auto" else planned
        how = f"'auto' -> '{test}'" if planned == "auto" else f"'{test}'"
        return test, f"the smallest analysed arm has {n_min} patients (< {below}): the plan's small-sample test {how} is used"
    return "wald", ""


def nb2_count_analysis(data: pd.DataFrame, section: dict[str, Any], ctx: SapContext, *, name: str = "primary") -> AnalysisResult:
    """The NB2 analysis of the NET2 count described by `section` (covariates, offset, cov) on `data`."""
    offset = OFFSET_COLUMN if section.get("offset", "log_followup_years") == "log_followup_years" else None
    need = [RESPONSE, ARM, *([offset] if offset else [])]
    analysed = data[need].notna().all(axis=1).to_numpy()
    cov = derive(data, section.get("covariates", []), analysed=analysed, file=ctx.file)
    cov = full_rank_terms(cov.data.loc[analysed], RESPONSE, [ARM], cov, file=ctx.file)
    formula = " + ".join([f"{RESPONSE} ~ {ARM}", *cov.terms])
    fit = fit_count_model(cov.data, formula, offset_years=offset, reference=ctx.reference, cov=section.get("cov", "expected"),
                          file=ctx.file, adjusted_means=False, dispersion=section.get("dispersion", "common"))
    deviations = list(cov.deviations)
    if fit.boundary:
        deviations.append("no overdispersion: the NB2 maximum is at the Poisson boundary (alpha = 0); the Poisson fit is reported")
    if not fit.converged:
        deviations.append("the NB2 fit did not reach a verified maximum: its estimates are flagged not estimable")
    used = [*need, *[k["derived_column"] for k in cov.kept]]
    sub = cov.data.dropna(subset=used).reset_index(drop=True)
    arms = list(fit.arm_categories)
    compared = arms[1:]
    std = standardised_rates(fit.design_info, fit.coef, fit.vcov.to_numpy(), sub, ARM, arms).set_index("arm")
    counts = fit.arm_counts.set_index("arm")
    test, switch = _select_test(ctx, int(counts["n"].min()))
    if test != "wald" and fit.cov == "robust":
        deviations.append(f"sandwich standard errors: the {test} test does not use them, so this analysis keeps the Wald z test with the sandwich SE")
        test, switch = "wald", ""
    # the small-sample rule is the plan's own: the test it chose is stated in the analysis' test line (info "test_rule"), not a deviation
    tests = PRIMARY_TESTS[test](fit, sub, formula, compared, offset, ctx)
    terms = fit.table.set_index("term")
    # a test's p value stands even where its CI does not (e.g. an inverted permutation CI that is not bounded)
    ok = [bool(terms.loc[a, "estimable"]) and np.isfinite(float(tests.loc[a, "p_value"])) and fit.converged for a in compared]
    procedure = str(ctx.multiplicity["procedure"])
    if procedure == "dunnett" and test != "wald":
        procedure = "holm"
        deviations.append(f"multiplicity: Dunnett needs jointly normal Wald statistics; with the {test} test the p values are adjusted by "
                          "Holm's step-down instead (valid under any dependence, more conservative than Dunnett)")
    mult = adjust(compared, tests["p_value"].to_numpy(dtype=float), procedure, alpha=float(ctx.multiplicity.get("alpha", 0.05)), estimable=ok,
                  z=tests["statistic"].to_numpy(dtype=float), corr=wald_correlation(fit.vcov, compared), order=ctx.multiplicity.get("order"),
                  seed=ctx.seed).table.set_index("arm")
    estimand = _count_estimand(cov.kept, offset is not None, ctx.reference, ctx.missing)
    rows = []
    for a in arms:
        c, s = counts.loc[a], std.loc[a]
        row: dict[str, Any] = {"arm": a, "reference": a == ctx.reference, "n_randomized": int(ctx.n_randomized.get(a, 0)), "n_analysed": int(c["n"]),
                               "events": int(c["events"]), "exposure_years": float(c["exposure_years"]),
                               "adjusted_rate": float(s["rate"]), "rate_ci_low": float(s["rate_ci_low"]), "rate_ci_high": float(s["rate_ci_high"])}
        if a == ctx.reference:
            ref_ok = fit.converged and int(c["events"]) > 0
            row.update({k: np.nan for k in ("rate_ratio", "rr_ci_low", "rr_ci_high", "rate_difference", "rd_ci_low", "rd_ci_high", "p_value", "p_adjusted")})
            row["ci_method"] = ""
            row.update({"test": "", "tested": False, "rejected": False, "estimable": ref_ok,
                        "note": "reference arm" + ("" if ref_ok else ("; no events" if int(c["events"]) == 0 else "; the fit did not converge"))
                        + ("; NB2 dispersion per arm (each arm its own alpha)" if fit.dispersion == "by_arm" else "")})
        else:
            t, m, tt = terms.loc[a], mult.loc[a], tests.loc[a]
            est = bool(t["estimable"]) and bool(tt["estimable"]) and fit.converged
            row.update({"rate_ratio": float(t["rate_ratio"]), "rr_ci_low": float(tt["ci_low"]), "rr_ci_high": float(tt["ci_high"]), "ci_method": str(tt["ci_method"]),
                        "rate_difference": float(s["rate_difference"]), "rd_ci_low": float(s["rate_difference_ci_low"]),
                        "rd_ci_high": float(s["rate_difference_ci_high"]), "p_value": float(m["p_value"]), "p_adjusted": float(m["p_adjusted"]),
                        "test": test, "tested": bool(m["tested"]), "rejected": bool(m["rejected"]), "estimable": est,
                        "note": "; ".join(filter(None, [str(t["note"]) if not t["estimable"] else "", str(tt["note"]), "" if fit.converged else "the fit did not converge",
                                                        str(m["note"]) if est else ""]))})
        row.update({"multiplicity": procedure, "estimand": estimand})
        rows.append(row)
    tab = fit.table.assign(analysis=name)
    info = {"formula": formula, "offset": f"log({offset})" if offset else "none", "cov": fit.cov, "n": fit.n, "alpha": fit.alpha,
            "dispersion": fit.dispersion,
            **({} if fit.alpha_by_arm is None else {"alpha_by_arm": {r.arm: r.alpha for r in fit.alpha_by_arm.itertuples()}}),
            "converged": fit.converged, "boundary": fit.boundary, "covariates": [k["description"] for k in cov.kept], "test": test,
            "test_rule": switch or f"Wald z test (the smallest analysed arm has {int(counts['n'].min())} patients)",
            "multiplicity": describe(procedure, len(compared), float(ctx.multiplicity.get("alpha", 0.05)),
                                     ctx.multiplicity.get("order")), "estimand": estimand}
    return AnalysisResult(name, "net2_count", pd.DataFrame(rows), tab, deviations, info)


def lesion_free_analysis(data: pd.DataFrame, section: dict[str, Any], ctx: SapContext, *, name: str = "lesion_free") -> AnalysisResult:
    """Single follow-up scan: adjusted odds ratio and standardised risk difference of being lesion-free."""
    analysed = data[[RESPONSE, ARM]].notna().all(axis=1).to_numpy()
    cov = derive(data, section["covariates"], analysed=analysed, file=ctx.file)
    cov = full_rank_terms(cov.data.loc[analysed], RESPONSE, [ARM], cov, file=ctx.file)
    table = fit_lesion_free_adjusted(cov.data, cov.terms, response=RESPONSE, reference=ctx.reference, arm_col=ARM, file=ctx.file)
    table.insert(1, "n_randomized", [int(ctx.n_randomized.get(a, 0)) for a in table["arm"]])
    info = {"covariates": [k["description"] for k in cov.kept], "model": "logistic regression of being lesion-free on arm + covariates",
            "odds_ratio": OR_ESTIMAND, "risk_difference": RD_ESTIMAND,
            "hazard_ratio": "not estimated: one follow-up scan does not tell when the first lesion appeared (needs several visits)"}
    return AnalysisResult(name, "lesion_free", table, pd.DataFrame(), list(cov.deviations), info)


def _secondary(kind: str) -> Callable[..., AnalysisResult]:
    def run(data: pd.DataFrame, section: dict[str, Any], ctx: SapContext, *, name: str) -> AnalysisResult:
        from mseval.sap import secondary

        return (secondary.first_lesion_analysis if kind == "first_lesion" else secondary.multi_visit_analysis)(data, section, ctx, name=name)

    return run


ANALYSES: dict[str, Callable[..., AnalysisResult]] = {"net2_count": nb2_count_analysis, "lesion_free": lesion_free_analysis,
                                                      "net2_cumulative": _secondary("multi_visit"), "net2_gee": _secondary("multi_visit"),
                                                      "gd_per_scan": _secondary("multi_visit"), "first_lesion_hazard": _secondary("first_lesion")}
"""Endpoint name (the schema's `endpoint` enum) -> analysis(data, section, ctx, name=...)."""


@dataclass(frozen=True)
class SapResult:
    """The run of a plan: the primary analysis, the sensitivity analyses (each a variation of the
    primary), the secondary endpoints, and every deviation (prefixed by its analysis)."""

    sap: Sap
    reference: str
    primary: AnalysisResult
    sensitivity: list[AnalysisResult]
    secondary: list[AnalysisResult]
    mnar: list[AnalysisResult] = field(default_factory=list)
    consort: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def analyses(self) -> list[AnalysisResult]:
        return [self.primary, *self.sensitivity, *self.mnar, *self.secondary]

    @property
    def deviations(self) -> list[str]:
        return [f"{r.name}: {d}" for r in self.analyses for d in r.deviations]

    def to_frame(self) -> pd.DataFrame:
        return self.primary.table

    def tables(self) -> dict[str, pd.DataFrame]:
        """File name -> table, as `mseval effects --sap` writes them."""
        counts = [self.primary, *self.sensitivity]
        out = {"sap_primary.csv": self.primary.table,
               "sap_sensitivity.csv": pd.concat([r.table.assign(analysis=r.name) for r in counts], ignore_index=True),
               "sap_model_terms.csv": pd.concat([r.terms for r in counts], ignore_index=True),
               "sap_deviations.csv": pd.DataFrame({"analysis": [r.name for r in self.analyses for _ in r.deviations],
                                                   "deviation": [d for r in self.analyses for d in r.deviations]}),
               "sap_consort.csv": self.consort}
        for r in self.mnar:
            if len(r.table):
                out[f"sap_mnar_{r.name}.csv"] = r.table
                out[f"sap_mnar_{r.name}_tipping.csv"] = r.extra["tipping"]
        for r in self.secondary:
            out[f"sap_secondary_{r.name}.csv"] = r.table
        return out

    def record(self) -> dict[str, Any]:
        """sap.json: the plan (source, hash, as executed), the deviations and each analysis' information."""
        return {**self.sap.record(), "reference_arm": self.reference, "deviations": self.deviations,
                "analyses": {r.name: {"endpoint": r.endpoint, **r.info} for r in self.analyses}}

    def summary(self) -> str:
        from mseval.sap.text import primary_lines

        head = [f"SAP: {self.sap.doc.get('title')} (sha256 {self.sap.sha256[:12]})", f"  {self.primary.info['estimand']}"]
        return "\n".join(head + primary_lines(self.primary.table, {"title": self.sap.doc.get("title"), "deviations": self.deviations})[1:])


def run_sap(sap: Sap, data: pd.DataFrame, *, arms: list[str], reference: str, file: str | None = None,
            visits: pd.DataFrame | None = None) -> SapResult:
    """Run `sap` on `data` (one row per randomized patient: patient_id, arm, net2 (missing when not
    observed), followup_years and the covariate columns); `arms` in arms-table order, `reference` among
    them (as `mseval.sap.schema.check_against` returned it); `visits`: the per-visit table
    (`mseval.lesions.visit_counts.per_visit_counts`) of a cohort with several visits, None for a
    single-visit cohort. The plan's missing-data strategy (`mseval.sap.missing.prepare`) sets each
    patient's count and follow-up years. Every random draw (permutation test, Dunnett's quasi-Monte
    Carlo, MNAR imputations) takes the plan's `seed` (default 0): the same plan on the same data gives
    the same numbers, whatever the command's --seed."""
    from mseval.sap import missing

    from mseval.sap.secondary import check_visits, several_visits

    plan = sap.resolved
    check_visits(plan, several_visits(visits), sap.source)
    data, words = missing.prepare(data, visits, plan["missing_data"]["strategy"])
    order = [reference, *[a for a in arms if a != reference]]
    n_rand = data[ARM].astype(str).value_counts().to_dict()
    ctx = SapContext(order, reference, {a: int(n_rand.get(a, 0)) for a in order}, plan["multiplicity"], plan["small_sample_test"], file,
                     int(plan["seed"]), words, visits)
    prim = plan["primary"]
    primary = ANALYSES[prim["endpoint"]](data, prim, ctx, name="primary")
    sens, mnar = [], []
    for s in plan["sensitivity"]:
        if s.get("kind", "model_variation") == "mnar_tipping_point":
            m = missing.mnar_analysis(data, s, prim, ctx, has_visits=visits is not None)
            mnar.append(AnalysisResult(s["name"], "mnar_tipping_point", m["grid"], pd.DataFrame(), m["deviations"], m["info"], {"tipping": m["tipping"]}))
            continue
        variation = {k: v for k, v in s.items() if k not in ("name", "description", "kind")}
        sens.append(ANALYSES[prim["endpoint"]](data, {**prim, **variation}, ctx, name=s["name"]))
    sec = []
    for s in plan["secondary"]:
        covs = prim.get("covariates", []) if s.get("covariates", "primary") == "primary" else s["covariates"]
        sec.append(ANALYSES[s["endpoint"]](data, {**s, "covariates": covs}, ctx, name=s["name"]))
    flow = missing.consort(data, visits)
    return SapResult(sap, reference, _with_visit_counts(_in_order(primary, order), flow), [_in_order(r, order) for r in sens],
                     [_in_order(r, order) for r in sec], mnar, flow)


def _with_visit_counts(result: AnalysisResult, flow: pd.DataFrame) -> AnalysisResult:
    """The primary table with, after n_analysed, `n_with_<visit>`: per arm, the patients whose scan at that
    visit took place (the CONSORT flow's `with_<visit>` columns; none for a cohort without visits)."""
    cols = [c for c in flow.columns if c.startswith("with_")]
    if not cols or "n_analysed" not in result.table.columns:
        return result
    per_arm = flow.set_index("arm")
    t = result.table.copy()
    at = list(t.columns).index("n_analysed") + 1
    for k, c in enumerate(cols):
        t.insert(at + k, f"n_{c}", [int(per_arm.at[a, c]) if a in per_arm.index else 0 for a in t["arm"]])
    return AnalysisResult(result.name, result.endpoint, t, result.terms, result.deviations, result.info, result.extra)


def _in_order(result: AnalysisResult, arms: list[str]) -> AnalysisResult:
    """The result's per-arm table in `arms` order (reference first, then the arms table's order)."""
    t = result.table.set_index("arm").loc[[a for a in arms if a in set(result.table["arm"])]].reset_index()
    return AnalysisResult(result.name, result.endpoint, t, result.terms, result.deviations, result.info, result.extra)


__all__ = ["ANALYSES", "PRIMARY_TESTS", "AnalysisResult", "Covariates", "SapContext", "SapResult", "run_sap"]
