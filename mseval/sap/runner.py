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
converge, the small-sample switch when it applies.
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

    def to_frame(self) -> pd.DataFrame:
        return self.table


def _wald(fit: CountModelFit, data: pd.DataFrame, arms: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(p, z) of the Wald z test of each compared arm's log rate ratio."""
    t = fit.table.set_index("term")
    b = t.loc[arms, "coef"].to_numpy(dtype=float)
    se = t.loc[arms, "se"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = b / se
    return t.loc[arms, "p_value"].to_numpy(dtype=float), z


PRIMARY_TESTS: dict[str, Callable[[CountModelFit, pd.DataFrame, list[str]], tuple[np.ndarray, np.ndarray]]] = {"wald": _wald}
"""Test of the compared arms' rate ratios: name -> function(fit, analysed data, arms) -> (p values, z or signed root statistics)."""


def _count_estimand(covs: list[dict[str, Any]], offset: bool, reference: str) -> str:
    adj = ("adjusted for " + ", ".join(c["description"] for c in covs)) if covs else "not covariate-adjusted"
    unit = "annualised rate (lesions per patient-year)" if offset else "mean count over follow-up"
    return (f"ratio and difference of the {unit} of new/enlarging T2 lesions, each arm vs {reference}, in the analysed trial population "
            f"({adj}; NB2, log link; treatment policy; complete case: patients with an observed follow-up count); rate and difference "
            "standardised over the analysed patients' covariates, CIs conditional on them")


def _select_test(ctx: SapContext, n_min: int) -> tuple[str, str]:
    below = int(ctx.small_sample.get("below_n_per_arm", 30))
    if n_min < below:
        test = str(ctx.small_sample.get("test", "wald"))
        return test, f"the smallest analysed arm has {n_min} patients (< {below}): the plan's small-sample test '{test}' is used"
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
                          file=ctx.file, adjusted_means=False)
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
    if switch and test != "wald":
        deviations.append(switch)
    p, z = PRIMARY_TESTS[test](fit, sub, compared)
    terms = fit.table.set_index("term")
    ok = [bool(terms.loc[a, "estimable"]) and fit.converged for a in compared]
    mult = adjust(compared, p, ctx.multiplicity["procedure"], alpha=float(ctx.multiplicity.get("alpha", 0.05)), estimable=ok, z=z,
                  corr=wald_correlation(fit.vcov, compared), order=ctx.multiplicity.get("order"), seed=ctx.seed).table.set_index("arm")
    estimand = _count_estimand(cov.kept, offset is not None, ctx.reference)
    rows = []
    for a in arms:
        c, s = counts.loc[a], std.loc[a]
        row: dict[str, Any] = {"arm": a, "reference": a == ctx.reference, "n_randomized": int(ctx.n_randomized.get(a, 0)), "n_analysed": int(c["n"]),
                               "events": int(c["events"]), "exposure_years": float(c["exposure_years"]),
                               "adjusted_rate": float(s["rate"]), "rate_ci_low": float(s["rate_ci_low"]), "rate_ci_high": float(s["rate_ci_high"])}
        if a == ctx.reference:
            ref_ok = fit.converged and int(c["events"]) > 0
            row.update({k: np.nan for k in ("rate_ratio", "rr_ci_low", "rr_ci_high", "rate_difference", "rd_ci_low", "rd_ci_high", "p_value", "p_adjusted")})
            row.update({"test": "", "tested": False, "rejected": False, "estimable": ref_ok,
                        "note": "reference arm" + ("" if ref_ok else ("; no events" if int(c["events"]) == 0 else "; the fit did not converge"))})
        else:
            t, m = terms.loc[a], mult.loc[a]
            est = bool(t["estimable"]) and fit.converged
            row.update({"rate_ratio": float(t["rate_ratio"]), "rr_ci_low": float(t["ci_low"]), "rr_ci_high": float(t["ci_high"]),
                        "rate_difference": float(s["rate_difference"]), "rd_ci_low": float(s["rate_difference_ci_low"]),
                        "rd_ci_high": float(s["rate_difference_ci_high"]), "p_value": float(m["p_value"]), "p_adjusted": float(m["p_adjusted"]),
                        "test": test, "tested": bool(m["tested"]), "rejected": bool(m["rejected"]), "estimable": est,
                        "note": "; ".join(filter(None, [str(t["note"]) if not t["estimable"] else "", "" if fit.converged else "the fit did not converge",
                                                        str(m["note"]) if est else ""]))})
        row.update({"multiplicity": ctx.multiplicity["procedure"], "estimand": estimand})
        rows.append(row)
    tab = fit.table.assign(analysis=name)
    info = {"formula": formula, "offset": f"log({offset})" if offset else "none", "cov": fit.cov, "n": fit.n, "alpha": fit.alpha,
            "converged": fit.converged, "boundary": fit.boundary, "covariates": [k["description"] for k in cov.kept], "test": test,
            "test_rule": switch or f"Wald z test (the smallest analysed arm has {int(counts['n'].min())} patients)",
            "multiplicity": describe(ctx.multiplicity["procedure"], len(compared), float(ctx.multiplicity.get("alpha", 0.05)),
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


ANALYSES: dict[str, Callable[..., AnalysisResult]] = {"net2_count": nb2_count_analysis, "lesion_free": lesion_free_analysis}
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

    @property
    def deviations(self) -> list[str]:
        return [f"{r.name}: {d}" for r in (self.primary, *self.sensitivity, *self.secondary) for d in r.deviations]

    def to_frame(self) -> pd.DataFrame:
        return self.primary.table

    def tables(self) -> dict[str, pd.DataFrame]:
        """File name -> table, as `mseval effects --sap` writes them."""
        counts = [self.primary, *self.sensitivity]
        out = {"sap_primary.csv": self.primary.table,
               "sap_sensitivity.csv": pd.concat([r.table.assign(analysis=r.name) for r in counts], ignore_index=True),
               "sap_model_terms.csv": pd.concat([r.terms for r in counts], ignore_index=True),
               "sap_deviations.csv": pd.DataFrame({"analysis": [r.name for r in (self.primary, *self.sensitivity, *self.secondary) for _ in r.deviations],
                                                   "deviation": [d for r in (self.primary, *self.sensitivity, *self.secondary) for d in r.deviations]})}
        for r in self.secondary:
            out[f"sap_secondary_{r.name}.csv"] = r.table
        return out

    def record(self) -> dict[str, Any]:
        """sap.json: the plan (source, hash, as executed), the deviations and each analysis' information."""
        return {**self.sap.record(), "reference_arm": self.reference, "deviations": self.deviations,
                "analyses": {r.name: {"endpoint": r.endpoint, **r.info} for r in (self.primary, *self.sensitivity, *self.secondary)}}

    def summary(self) -> str:
        from mseval.sap.text import primary_lines

        head = [f"SAP: {self.sap.doc.get('title')} (sha256 {self.sap.sha256[:12]})", f"  {self.primary.info['estimand']}"]
        return "\n".join(head + primary_lines(self.primary.table, {"title": self.sap.doc.get("title"), "deviations": self.deviations})[1:])


def run_sap(sap: Sap, data: pd.DataFrame, *, arms: list[str], reference: str, file: str | None = None, seed: int = 0) -> SapResult:
    """Run `sap` on `data` (one row per randomized patient: arm, net2 (missing when not observed),
    followup_years and the covariate columns); `arms` in arms-table order, `reference` among them
    (as `mseval.sap.schema.check_against` returned it)."""
    plan = sap.resolved
    order = [reference, *[a for a in arms if a != reference]]
    n_rand = data[ARM].astype(str).value_counts().to_dict()
    ctx = SapContext(order, reference, {a: int(n_rand.get(a, 0)) for a in order}, plan["multiplicity"], plan["small_sample_test"], file, seed)
    prim = plan["primary"]
    primary = ANALYSES[prim["endpoint"]](data, prim, ctx, name="primary")
    sens = [ANALYSES[prim["endpoint"]](data, {**prim, **{k: v for k, v in s.items() if k not in ("name", "description")}}, ctx, name=s["name"])
            for s in plan["sensitivity"]]
    sec = []
    for s in plan["secondary"]:
        covs = prim.get("covariates", []) if s.get("covariates", "primary") == "primary" else s["covariates"]
        sec.append(ANALYSES[s["endpoint"]](data, {**s, "covariates": covs}, ctx, name=s["name"]))
    return SapResult(sap, reference, _in_order(primary, order), [_in_order(r, order) for r in sens], [_in_order(r, order) for r in sec])


def _in_order(result: AnalysisResult, arms: list[str]) -> AnalysisResult:
    """The result's per-arm table in `arms` order (reference first, then the arms table's order)."""
    t = result.table.set_index("arm").loc[[a for a in arms if a in set(result.table["arm"])]].reset_index()
    return AnalysisResult(result.name, result.endpoint, t, result.terms, result.deviations, result.info)


__all__ = ["ANALYSES", "PRIMARY_TESTS", "AnalysisResult", "Covariates", "SapContext", "SapResult", "run_sap"]
