"""The report's "Statistical analysis plan" section, first in the report when the effects folder holds a
plan's results (`mseval effects --sap`): the plan in words (not a JSON dump), the deviations from it,
the adjusted primary table (n randomized / analysed, events, exposure, adjusted rate with CI, RR with CI,
rate difference with CI, p adjusted for multiplicity), the sensitivity analyses beside the primary,
the adjusted lesion-free endpoint, and where the effects wrote them the CONSORT flow, the MNAR tipping
point and the several-visit endpoints. Strings only; every estimate through `reports.numbers`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mseval.sap.text import plan_lines
from reports import numbers as N
from reports import tables as T

SAP_TABLES = ("sap_primary", "sap_sensitivity", "sap_deviations")


def read_sap(effects_dir: Path) -> dict[str, Any] | None:
    """The plan's record (sap.json) and tables from an effects folder; None when no plan was run."""
    if not (effects_dir / "sap.json").is_file() or not (effects_dir / "sap_primary.csv").is_file():
        return None
    out: dict[str, Any] = {"record": json.loads((effects_dir / "sap.json").read_text())}
    for name in SAP_TABLES:
        p = effects_dir / f"{name}.csv"
        out[name] = pd.read_csv(p) if p.is_file() else None
    lesion_free = [n for n, a in out["record"].get("analyses", {}).items() if a.get("endpoint") == "lesion_free"]
    p = effects_dir / f"sap_secondary_{lesion_free[0]}.csv" if lesion_free else None
    out["lesion_free_name"] = lesion_free[0] if lesion_free else None
    out["lesion_free"] = pd.read_csv(p) if p is not None and p.is_file() else None
    c = effects_dir / "sap_consort.csv"
    out["consort"] = pd.read_csv(c) if c.is_file() else None
    out["several_visits"], out["mnar"] = {}, {}
    for name, a in out["record"].get("analyses", {}).items():
        f = effects_dir / (f"sap_mnar_{name}_tipping.csv" if a.get("endpoint") == "mnar_tipping_point" else f"sap_secondary_{name}.csv")
        if a.get("endpoint") in SEVERAL_VISITS and f.is_file():
            out["several_visits"][name] = pd.read_csv(f)
        elif a.get("endpoint") == "mnar_tipping_point" and f.is_file():
            out["mnar"][name] = pd.read_csv(f)
    return out


SEVERAL_VISITS = ("net2_cumulative", "net2_gee", "gd_per_scan", "first_lesion_hazard")


def _extra_tables(sap: dict[str, Any], rec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """CONSORT, several-visit secondary endpoints (rate or hazard ratios) and MNAR tipping points, as {columns, rows}."""
    out: dict[str, Any] = {"consort": None, "several_visits": [], "mnar": []}
    con = sap.get("consort")
    if con is not None and len(con):
        cols = [c for c in con.columns if c != "arm"]
        out["consort"] = {"columns": ["Arm", *[c.replace("_", " ") for c in cols]],
                          "rows": [[labels.get(r["arm"], r["arm"]), *[str(int(r[c])) for c in cols]] for r in con.fillna(0).to_dict("records")]}
    for name, t in sap.get("several_visits", {}).items():
        if "rate_ratio" not in t.columns and "hazard_ratio" not in t.columns:
            continue  # one follow-up scan: the lesion-free odds ratio, or skipped (see the deviations)
        ratio = "hazard_ratio" if "hazard_ratio" in t.columns else "rate_ratio"
        rows = [[labels.get(r["arm"], r["arm"]), str(int(r["n_randomized"])),
                 "reference" if bool(r["reference"]) else N.ratio_text(r[ratio], r["ci_low"], r["ci_high"], estimable=r.get("estimable"),
                                                                       note=r["note"] if isinstance(r.get("note"), str) else ""),
                 "" if bool(r["reference"]) else N.p_text(r["p_value"])] for r in t.to_dict("records")]
        info = rec["analyses"].get(name, {})
        out["several_visits"].append({"name": name, "estimand": info.get("estimand", ""), "assumptions": info.get("assumptions", ""),
                                      "table": {"columns": ["Arm", "Randomized, n", f"{ratio.replace('_', ' ').capitalize()} (95% CI)", "p (unadjusted)"],
                                                "rows": rows}})
    for name, t in sap.get("mnar", {}).items():
        rows = [[labels.get(r["arm"], r["arm"]), N.num(r["mar_rate_ratio"]), N.p_text(r["mar_p_value"]),
                 (f"delta = {N.num(r['tipping_delta'])} (missing rate x {N.num(r['tipping_rate_multiplier'])})" if bool(r["flips"])
                  else str(r["note"]))] for r in t.to_dict("records")]
        out["mnar"].append({"name": name, "assumptions": rec["analyses"].get(name, {}).get("assumptions", []),
                            "table": {"columns": ["Arm", "Rate ratio under MAR", "p under MAR", "Conclusion flips at"], "rows": rows}})
    return out


def _p(r: dict[str, Any]) -> str:
    if not bool(r.get("tested", True)):
        return "not tested" + (f" ({r['note'].split('not tested: ')[-1]})" if "not tested" in str(r.get("note", "")) else "")
    return N.p_text(r.get("p_adjusted"))


def _count_rows(df: pd.DataFrame, labels: dict[str, str], *, with_analysis: bool = False) -> list[list[str]]:
    rows = []
    for r in df.to_dict("records"):
        ref = bool(r["reference"])
        note = str(r.get("note") or "") if isinstance(r.get("note"), str) else ""
        est = {"estimable": r.get("estimable"), "note": note}
        rate = N.additive_text(r["adjusted_rate"], r["rate_ci_low"], r["rate_ci_high"])
        rr = "reference" if ref else N.ratio_text(r["rate_ratio"], r["rr_ci_low"], r["rr_ci_high"], **est)
        ok = not N.flagged(r.get("estimable"))
        rd = "reference" if ref else (N.additive_text(r["rate_difference"], r["rd_ci_low"], r["rd_ci_high"]) if ok else N.ne_text(note))
        per_visit = ", ".join(f"{k[len('n_with_'):].upper()} {int(v)}" for k, v in r.items() if k.startswith("n_with_") and v == v)
        row = [labels.get(r["arm"], r["arm"]), f"{int(r['n_randomized'])} / {int(r['n_analysed'])}" + (f" (scanned: {per_visit})" if per_visit else ""),
               f"{int(r['events'])} / {N.num(r['exposure_years'], 1)}", rate, rr, rd if ok or ref else N.NOT_ESTIMABLE,
               "" if ref else (N.p_text(r["p_value"]) if ok else N.NOT_ESTIMABLE), "" if ref else (_p(r) if ok else N.NOT_ESTIMABLE)]
        rows.append(([str(r["analysis"])] if with_analysis else []) + row)
    return rows


COUNT_COLUMNS = ["Arm", "Randomized / analysed, n", "NET2 lesions / patient-years", "Adjusted rate per patient-year (95% CI)",
                 "Rate ratio (95% CI)", "Rate difference per patient-year (95% CI)", "p", "p, adjusted"]


def sap_context(sap: dict[str, Any] | None, arms_df: pd.DataFrame, labels: dict[str, str]) -> dict[str, Any] | None:
    """Strings for the section; None when no plan was run."""
    if sap is None:
        return None
    rec = sap["record"]
    plan = rec["plan"]
    prim_info = rec["analyses"]["primary"]
    prim = T.order_arms(sap["sap_primary"], arms_df)
    mult = prim_info.get("multiplicity", "")
    cols = [*COUNT_COLUMNS[:-1], f"p, adjusted ({plan['multiplicity']['procedure'].replace('_', ' ')})"]
    out: dict[str, Any] = {
        "title": rec.get("title") or "analysis plan",
        "source": rec.get("source"), "sha256": rec.get("sha256", "")[:16],
        "plan": plan_lines(plan, reference=rec.get("reference_arm")),
        "deviations": list(rec.get("deviations", [])) or ["none"],
        "primary": {"columns": cols, "rows": _count_rows(prim, labels)},
        "primary_note": (f"Estimand: {prim_info.get('estimand', '')}. Model: {prim_info.get('formula')}, offset {prim_info.get('offset')}, "
                         f"{prim_info.get('cov')} standard errors. Test: {prim_info.get('test_rule', prim_info.get('test'))}. Multiplicity: {mult}. "
                         "CIs are per comparison (95%, not simultaneous); the adjusted p controls the family-wise error."),
        "sensitivity": None, "lesion_free": None, "lesion_free_note": "",
        **_extra_tables(sap, rec, labels),
    }
    sens = sap.get("sap_sensitivity")
    if sens is not None and len(sens):
        parts = [T.order_arms(g, arms_df) for _, g in sens.groupby("analysis", sort=False)]
        out["sensitivity"] = {"columns": ["Analysis", *cols], "rows": _count_rows(pd.concat(parts, ignore_index=True), labels, with_analysis=True)}
    lf = sap.get("lesion_free")
    if lf is not None and len(lf):
        lf = T.order_arms(lf, arms_df)
        rows = []
        for r in lf.to_dict("records"):
            note = r["note"] if isinstance(r.get("note"), str) else ""
            ref = r["arm"] == rec.get("reference_arm")
            ok = not N.flagged(r.get("estimable"))
            rows.append([labels.get(r["arm"], r["arm"]), f"{int(r['n_randomized'])} / {int(r['n'])}", str(int(r["lesion_free"])),
                         N.proportion_text(r["lesion_free_adjusted"], r["lf_ci_low"], r["lf_ci_high"]) if ok else N.ne_text(note),
                         "reference" if ref else N.ratio_text(r["odds_ratio"], r["or_ci_low"], r["or_ci_high"], estimable=r.get("estimable"), note=note),
                         "reference" if ref else (N.additive_text(r["risk_difference"], r["rd_ci_low"], r["rd_ci_high"]) if ok else N.ne_text(note))])
        info = rec["analyses"].get(sap.get("lesion_free_name") or "", {})
        out["lesion_free"] = {"columns": ["Arm", "Randomized / analysed, n", "Lesion-free, n", "Adjusted proportion lesion-free (95% CI)",
                                          "Odds ratio of being lesion-free (95% CI)", "Risk difference (95% CI)"], "rows": rows}
        out["lesion_free_note"] = (f"Odds ratio: {info.get('odds_ratio', '')}. Risk difference: {info.get('risk_difference', '')}. "
                                   f"Hazard ratio: {info.get('hazard_ratio', '')}.")
    return out


def sap_md(sap: dict[str, Any] | None, md_table: Callable[[dict[str, Any]], str]) -> list[str]:
    """The section as Markdown lines (empty without a plan); `md_table` renders a {columns, rows} table."""
    if not sap:
        return []
    out = [f"## Statistical analysis plan: {sap['title']}", "", f"Plan {sap['source']} (SHA-256 {sap['sha256']}...), as run:", ""]
    out += [f"- {line}" for line in sap["plan"]] + ["", "**Deviations from the plan:**", ""] + [f"- {d}" for d in sap["deviations"]] + [""]
    out += ["### Adjusted primary analysis", "", md_table(sap["primary"]), "", sap["primary_note"], ""]
    if sap["sensitivity"]:
        out += ["### Sensitivity analyses (beside the primary)", "", md_table(sap["sensitivity"]), ""]
    if sap["lesion_free"]:
        out += ["### Secondary: free of new/enlarging T2 lesions at the follow-up scan (adjusted)", "", md_table(sap["lesion_free"]), "",
                sap["lesion_free_note"], ""]
    if sap.get("consort"):
        out += ["### CONSORT flow (randomized, with each visit, analysed)", "", md_table(sap["consort"]), ""]
    for m in sap.get("mnar", []):
        out += [f"### Sensitivity: MNAR tipping point ({m['name']})", "", md_table(m["table"]), ""] + [f"- {a}" for a in m["assumptions"]] + [""]
    for sv in sap.get("several_visits", []):
        out += [f"### Secondary, several visits: {sv['name']}", "", md_table(sv["table"]), "", f"Estimand: {sv['estimand']}."]
        out += [f"Assumptions: {sv['assumptions']}", ""] if sv["assumptions"] else [""]
    return out
