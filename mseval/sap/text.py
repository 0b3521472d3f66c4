"""An analysis plan and its primary table in words, for the terminal and the report (no computation)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mseval.sap.covariates import describe

_PROCEDURES = {"holm": "Holm step-down", "dunnett": "Dunnett (shared reference)", "fixed_sequence": "fixed-sequence hierarchy",
               "none": "none (each comparison at the nominal level)"}


_TESTS = {"wald": "Wald z", "t": "Wald statistic against t(n - k)", "lrt": "likelihood ratio test with profile-likelihood CI",
          "permutation": "permutation (randomization) score test with its inverted CI",
          "auto": "permutation (randomization) score test with its inverted CI (auto)"}


def _covs(covs: Any) -> str:
    if covs == "primary":
        return "the primary analysis' covariates"
    return ", ".join(describe(c) for c in covs) if covs else "none (arm only)"


def plan_lines(plan: dict[str, Any], *, reference: str | None = None) -> list[str]:
    """The plan (`Sap.resolved` or sap.json's `plan`) as readable lines: one per field a reader checks."""
    p, m = plan["primary"], plan["multiplicity"]
    ss, md = plan.get("small_sample_test", {}), plan.get("missing_data", {})
    offset = "log(follow-up years)" if p.get("offset", "log_followup_years") == "log_followup_years" else "none"
    lines = [
        f"Primary endpoint: new/enlarging T2 lesion count at the follow-up scan ({p['endpoint']}), negative binomial (NB2) regression",
        f"Covariates: {_covs(p.get('covariates', []))}",
        (f"Offset: {offset}; standard errors: {p.get('cov', 'expected')} information" if p.get("cov", "expected") != "robust"
         else f"Offset: {offset}; standard errors: patient-level sandwich")
        + ("; NB2 dispersion: one per arm (heterogeneous overdispersion)" if p.get("dispersion", "common") == "by_arm"
           else "; NB2 dispersion: one for all arms"),
        f"Reference arm: {plan.get('reference_arm') or reference or 'the arms table reference'}",
        f"Multiplicity: {_PROCEDURES[m['procedure']]}" + (f", order {' > '.join(m['order'])}" if m.get("order") else "")
        + f", family-wise alpha {m.get('alpha', 0.05):g} (two-sided)",
        f"Primary test: Wald z; below {ss.get('below_n_per_arm', 1000)} analysed patients in an arm: {_TESTS.get(ss.get('test', 'auto'), ss.get('test'))}"
        + (f" ({ss.get('n_permutations', 999)} permutations, seed {plan.get('seed', 0)})" if ss.get("test", "auto") in ("auto", "permutation") else ""),
        f"Missing data: {md.get('strategy', 'exposure').replace('_', ' ')}; intercurrent events: {md.get('intercurrent_events', 'treatment_policy').replace('_', ' ')}",
    ]
    for s in plan.get("sensitivity", []):
        if s.get("kind") == "mnar_tipping_point":
            from mseval.stats.missing_data import mnar_assumptions

            deltas = ", ".join(f"{d:g}" for d in s.get("deltas", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]))
            lines.append(f"Sensitivity '{s['name']}': MNAR tipping point, delta = {deltas} (cohorts with visits.csv); assumptions:")
            lines += [f"  - {a}" for a in mnar_assumptions("delta", s.get("delta_arms", "active"), int(s.get("imputations", 20)), int(plan.get("seed", 0)))]
            continue
        changes = [f"covariates {_covs(s['covariates'])}" if "covariates" in s else "", f"offset {s['offset']}" if "offset" in s else "",
                   f"SEs {s['cov']}" if "cov" in s else "", f"dispersion {s['dispersion']}" if "dispersion" in s else ""]
        lines.append(f"Sensitivity '{s['name']}': " + (s.get("description") or "; ".join(filter(None, changes))))
    below = int((plan.get("small_sample_test") or {}).get("below_n_per_arm", 1000))
    for s in plan.get("secondary", []):
        lines.append(f"Secondary '{s['name']}': {s['endpoint'].replace('_', '-')} endpoint, covariates {_covs(s.get('covariates', 'primary'))}"
                     + (f", working correlation {s.get('corr', 'exchangeable')}" if s["endpoint"] == "net2_gee" else "")
                     + (", Wald CI against t(patients - coefficients)" if s.get("ci_reference") == "t" else "")
                     + (", Wald CI against t(patients in the arm + reference - 2)" if s.get("ci_reference") == "t_arms" else "")
                     + (", NB2 dispersion per arm" if s.get("dispersion") == "by_arm" else "")
                     + (f"; below {below} patients in an arm the small-sample CI and p ("
                        + ("the GEE's permutation test" if s["endpoint"] == "net2_gee" else "the primary's small-sample test") + ")"
                        if s["endpoint"] in ("net2_cumulative", "net2_gee") and s.get("ci", "small_sample") == "small_sample" else "")
                     + ("; skipped on a single-visit cohort" if s.get("single_visit") == "skip" else ""))
    return lines


def _num(v: Any, fmt: str = ".3f") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "-"
    return format(x, fmt) if math.isfinite(x) else "-"


def primary_lines(table: pd.DataFrame, sap: dict[str, Any] | None = None) -> list[str]:
    """The adjusted primary table (sap_primary.csv) as terminal lines, deviations last."""
    lines = [f"SAP primary analysis ({(sap or {}).get('title', '')}):"]
    for r in table.to_dict("records"):
        head = (f"  {r['arm']:14s} n {r['n_analysed']}/{r['n_randomized']}  rate/yr {_num(r['adjusted_rate'])} "
                f"({_num(r['rate_ci_low'])}-{_num(r['rate_ci_high'])})")
        if bool(r["reference"]):
            lines.append(head + "  (reference)")
        elif not bool(r["estimable"]):
            lines.append(head + f"  not estimable: {r['note']}")
        else:
            lines.append(head + f"  RR {_num(r['rate_ratio'])} ({_num(r['rr_ci_low'])}-{_num(r['rr_ci_high'])})  RD {_num(r['rate_difference'], '+.3f')}"
                         f" ({_num(r['rd_ci_low'], '+.3f')} to {_num(r['rd_ci_high'], '+.3f')})  p adj ({r['multiplicity']}"
                         + (f"; {r['test']}" if r.get("test") else "") + ") "
                         + (_num(r["p_adjusted"], ".3g") if r["tested"] else "not tested"))
    lines += [f"  deviation: {d}" for d in (sap or {}).get("deviations", [])]
    return lines
