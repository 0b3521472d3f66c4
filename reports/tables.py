"""Report tables: Table 1 (baseline characteristics by arm, CONSORT style) and the result tables
in the form a report shows them (arms in arms-table order, labels, formatted numbers).

Every function takes DataFrames and returns a DataFrame; `format_*` helpers give strings for
HTML/Markdown, the builder writes the numeric frames to tables/*.csv.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reports import numbers as N
from reports.style import arm_labels, arm_order

TOTAL = "Total"


def _fmt(x: float, digits: int = 1) -> str:
    return N.num(x, digits)


def _mean_sd(v: pd.Series, digits: int = 1) -> str:
    v = v.dropna().astype(float)
    if len(v) == 0:
        return N.NOT_COMPUTED
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{_fmt(v.mean(), digits)} ({_fmt(sd, digits)})"


def _median_iqr(v: pd.Series, digits: int = 1) -> str:
    v = v.dropna().astype(float)
    if len(v) == 0:
        return N.NOT_COMPUTED
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return f"{_fmt(med, digits)} ({_fmt(q1, digits)} to {_fmt(q3, digits)})"


def _n_pct(mask: pd.Series) -> str:
    n, tot = int(mask.sum()), int(len(mask))
    return f"{n} ({100.0 * n / tot:.0f}%)" if tot else "0"


def table1(manifest: pd.DataFrame, arms: pd.DataFrame | Sequence[str], *, total: bool = True) -> pd.DataFrame:
    """Table 1: baseline characteristics by randomized arm (CONSORT item 15; no p-values: with
    randomization, baseline differences are chance by construction, CONSORT 2010 explanation 15).

    manifest: one row per patient (columns of manifest.csv: arm, age, sex, edss, t2_volume_mm3,
    gd_count, followup_weeks, site; missing columns are skipped).
    Returns columns `characteristic`, `statistic`, one column per arm label ("Label (N=n)") in
    arms-table order, and `Total (N=n)`.
    """
    order, labels = arm_order(arms), arm_labels(arms)
    groups: list[tuple[str, pd.DataFrame]] = [(f"{labels[a]} (N={int((manifest['arm'] == a).sum())})", manifest[manifest["arm"] == a]) for a in order]
    if total:
        groups.append((f"{TOTAL} (N={len(manifest)})", manifest))
    rows: list[tuple[str, str, list[str]]] = []

    def add(name: str, stat: str, fn) -> None:  # noqa: ANN001
        rows.append((name, stat, [fn(g) for _, g in groups]))

    add("Patients randomized", "n", lambda g: str(len(g)))
    if "age" in manifest:
        add("Age, years", "mean (SD)", lambda g: _mean_sd(g["age"]))
    if "sex" in manifest:
        add("Female", "n (%)", lambda g: _n_pct(g["sex"].astype(str).str.upper() == "F"))
    if "edss" in manifest:
        add("EDSS score", "median (IQR)", lambda g: _median_iqr(g["edss"]))
    if "t2_volume_mm3" in manifest:
        add("T2 lesion volume, mL", "median (IQR)", lambda g: _median_iqr(g["t2_volume_mm3"] / 1000.0, 2))
    if "gd_count" in manifest:
        add("Gd+ lesions, number", "mean (SD)", lambda g: _mean_sd(g["gd_count"], 2))
        add("Patients with >= 1 Gd+ lesion", "n (%)", lambda g: _n_pct(g["gd_count"] >= 1))
    if "followup_weeks" in manifest:
        add("Follow-up visit, weeks", "mean (SD)", lambda g: _mean_sd(g["followup_weeks"]))
    if "site" in manifest:
        for site in sorted(manifest["site"].astype(str).unique()):
            add(f"Site: {site}", "n (%)", lambda g, s=site: _n_pct(g["site"].astype(str) == s))
    df = pd.DataFrame([[n, s, *v] for n, s, v in rows], columns=["characteristic", "statistic", *[name for name, _ in groups]])
    return df


TABLE1_NOTE = ("Values are mean (SD), median (IQR: interquartile range, 25th-75th percentile) or n (%). "
               "EDSS: Expanded Disability Status Scale (0-10). T2 lesion volume: baseline T2-hyperintense lesion volume. "
               "Gd+: gadolinium-enhancing lesions on baseline T1-weighted post-contrast MRI. "
               "No p-values: differences at baseline between randomized arms are due to chance (CONSORT 2010).")


def order_arms(df: pd.DataFrame, arms: pd.DataFrame | Sequence[str], column: str = "arm") -> pd.DataFrame:
    """Rows sorted by arms-table order (unknown arms last, stable), with a `label` column after `column`."""
    order, labels = arm_order(arms), arm_labels(arms)
    pos = {a: i for i, a in enumerate(order)}
    out = df.copy()
    key = out[column].map(lambda a: pos.get(str(a), len(pos)))
    out = out.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    if "label" not in out.columns:
        out.insert(list(out.columns).index(column) + 1, "label", out[column].map(lambda a: labels.get(str(a), str(a))))
    return out


def ci_text(est: float, lo: float, hi: float, digits: int = 2) -> str:
    """'0.52 (0.31 to 0.87)' at the estimate's precision; 'not estimable' for a missing estimate."""
    return N._with_ci(est, lo, hi, digits) if N.is_number(est) else N.NOT_ESTIMABLE


def p_text(p: float) -> str:
    """A p-value in journal style (`reports.numbers.p_text`)."""
    return N.p_text(p)


FORECAST_COL = "Forecast RR (95% CI, conditional on the forecaster)"
COUNTERFACTUAL_COL = "Counterfactual RR (95% CI, conditional on the forecaster)"


def primary_table(primary: pd.DataFrame, arms: pd.DataFrame | Sequence[str], reference: str | None = None) -> pd.DataFrame:
    """The primary endpoint as shown: one row per arm (the reference first, '1 (reference)'):
    observed RR (95% CI) and p, and the true ratio when present. Observed effects only: the
    forecast-derived ratios (FORECAST_COL, COUNTERFACTUAL_COL) are model-based projections, shown
    apart (`reports.projections`)."""
    order, labels = arm_order(arms), arm_labels(arms)
    p = primary.set_index("arm")
    has_truth = "true_ratio_of_means" in p.columns and p["true_ratio_of_means"].notna().any()
    rows = []
    for a in order:
        if a not in p.index:
            if a == reference:
                r = {"Arm": labels[a], "Observed RR (95% CI)": "1 (reference)", "p": ""}
                if has_truth:
                    r["True RR"] = "1 (reference)"
                rows.append(r)
            continue
        x = p.loc[a]
        r = {"Arm": labels[a],
             "Observed RR (95% CI)": ci_text(x["observed_rate_ratio"], x["observed_ci_low"], x["observed_ci_high"]),
             "p": p_text(x.get("observed_p_value", float("nan")))}
        if has_truth:
            r["True RR"] = _fmt(x["true_ratio_of_means"], 2)
        rows.append(r)
    return pd.DataFrame(rows)


def formula_covariates(formula: str, arm: str = "arm") -> list[str]:
    """Right-hand-side terms of a Patsy formula other than the arm ('net2 ~ arm + age' -> ['age'])."""
    rhs = formula.split("~", 1)[1] if "~" in formula else formula
    terms = [t.strip() for t in rhs.replace("-", "+").split("+")]
    return [t for t in terms if t and t not in (arm, "1", "0") and not t.startswith(f"C({arm}")]


def consort_primary(
    observed: pd.DataFrame, primary: pd.DataFrame, arms: pd.DataFrame | Sequence[str], *, reference: str, n_randomized: dict[str, int],
    adjusted_means: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The primary endpoint, CONSORT item 17a, as numbers (one row per arm, arms-table order).

    observed: one row per analysed patient with `arm`, `observed_count` (NET2 lesions) and
    `followup_years`. primary: the effects' primary_endpoint table. Columns: arm, n_randomized,
    n_analysed, events, patient_years, rate_per_patient_year (events / patient-years, crude),
    model_rate_per_year, observed RR, CI, p, Holm-adjusted p (over the comparisons with the
    reference) and the true ratio when simulated. Observed effects only: the forecast and
    counterfactual RRs are model-based projections (tables/projections.csv).
    """
    from statsmodels.stats.multitest import multipletests

    order = arm_order(arms)
    p = primary.set_index("arm") if len(primary) else pd.DataFrame()
    am = adjusted_means.set_index("arm") if adjusted_means is not None and len(adjusted_means) else pd.DataFrame()
    rows = []
    for a in order:
        d = observed[observed["arm"].astype(str) == a]
        d = d[d["observed_count"].notna()]
        events, py = float(d["observed_count"].sum()), float(d["followup_years"].sum())
        r: dict = {"arm": a, "n_randomized": int(n_randomized.get(a, 0)), "n_analysed": int(len(d)), "events": int(events),
                   "patient_years": py, "rate_per_patient_year": events / py if py > 0 else float("nan"),
                   "model_rate_per_year": float(am.loc[a, "adjusted_rate_per_year"]) if a in am.index else float("nan")}
        for c in ("observed_rate_ratio", "observed_ci_low", "observed_ci_high", "observed_p_value", "true_ratio_of_means", "observed_estimable",
                  "observed_note"):
            if c in p.columns and a in p.index:
                r[c] = p.loc[a, c]
        rows.append(r)
    df = pd.DataFrame(rows)
    if "observed_p_value" in df:
        pv = df["observed_p_value"].astype(float)
        ok = pv.notna() & (df["arm"] != reference)
        df["observed_p_holm"] = float("nan")
        if ok.any():
            df.loc[ok, "observed_p_holm"] = multipletests(pv[ok].to_numpy(), method="holm")[1]
    return df

