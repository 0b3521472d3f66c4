"""Missing scans and dropout in an analysis plan: the plan's `missing_data.strategy` applied to the
analysis table, the CONSORT flow, and the MNAR tipping-point sensitivity analysis.

Strategies (`prepare`), on a cohort with several visits (the per-visit table of
`mseval.lesions.visit_counts.per_visit_counts`):

- ``exposure`` (default; ICH E9(R1) treatment policy): every patient contributes the NET2 count from
  baseline to their last scan that took place, with offset log(observed years)
  (`mseval.stats.missing_data.exposure_from_visits`); valid under missing at random given the model's
  covariates and the counts already observed (`mseval.stats.missing_data.MAR_ASSUMPTION`).
- ``complete_case``: only the patients whose every scheduled follow-up visit took place.

On a single-visit cohort the two coincide: a patient without the follow-up scan has no exposure and
is randomized, not analysed; the plan's strategy is recorded.

`mnar_analysis` runs `mseval.stats.missing_data.mnar_sensitivity` (delta-adjusted multiple
imputation of each patient's unobserved follow-up, Rubin's rules, and the delta at which the primary
conclusion flips) on the primary model; it needs the planned follow-up of each patient, so it runs on
a cohort with visits only (recorded as a deviation and skipped otherwise).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mseval.sap.covariates import derive, full_rank_terms
from mseval.stats.missing_data import MAR_ASSUMPTION, consort_counts, exposure_from_visits, mnar_assumptions, mnar_sensitivity

STRATEGY_WORDS = {
    "exposure": "exposure-based (treatment policy): every scan that took place is used, offset log(observed years); valid under MAR",
    "complete_case": "complete case: only patients with every scheduled follow-up scan (a single-visit cohort: with the follow-up scan)",
}
_EXPOSURE_COLUMNS = ("observed_net2", "observed_years", "visits_observed", "planned_years")


def prepare(data: pd.DataFrame, visits: pd.DataFrame | None, strategy: str) -> tuple[pd.DataFrame, str]:
    """(analysis table, words) of `data` (one row per randomized patient: patient_id, arm, net2,
    followup_years, covariates) under `strategy`; with `visits` (per-visit table), `net2` and
    `followup_years` are replaced by the strategy's count and years (NaN: not analysed) and
    `planned_years` (the last scheduled visit, years) is added."""
    d = data.copy()
    d["net2"] = pd.to_numeric(d["net2"], errors="coerce").astype(float)
    if visits is None:
        return d, STRATEGY_WORDS[strategy] + " (single follow-up scan: patients without it are randomized, not analysed)"
    ex = exposure_from_visits(visits).astype({"patient_id": str})
    d = d.drop(columns=[c for c in _EXPOSURE_COLUMNS if c in d.columns])
    d = d.assign(_pid=d["patient_id"].astype(str)).merge(ex.rename(columns={"patient_id": "_pid"}), on="_pid", how="left").drop(columns="_pid")
    count = pd.to_numeric(d["observed_net2"], errors="coerce").astype(float)
    years = pd.to_numeric(d["observed_years"], errors="coerce").astype(float)
    if strategy == "exposure":
        d["net2"], d["followup_years"] = count, years
    else:
        scheduled = visits[visits["visit_index"] > 0].groupby(visits["patient_id"].astype(str)).size()
        complete = (d["visits_observed"].to_numpy() == d["patient_id"].astype(str).map(scheduled).fillna(-1).to_numpy())
        d["net2"], d["followup_years"] = count.where(complete), years.where(complete)
    return d, STRATEGY_WORDS[strategy]


def analysed_ids(data: pd.DataFrame) -> list[str]:
    """Patients with an analysable follow-up: a count and follow-up years > 0."""
    y = pd.to_numeric(data["net2"], errors="coerce")
    t = pd.to_numeric(data["followup_years"], errors="coerce")
    return data.loc[(y.notna() & t.notna() & (t > 0)).to_numpy(), "patient_id"].astype(str).tolist()


def consort(data: pd.DataFrame, visits: pd.DataFrame | None) -> pd.DataFrame:
    """The CONSORT flow per arm and in all (`consort_counts`): randomized, with each visit, completed,
    lost by reason, analysed, not analysed."""
    return consort_counts(data[["patient_id", "arm"]], visits, analysed_ids(data))


def mnar_analysis(data: pd.DataFrame, section: dict[str, Any], primary: dict[str, Any], ctx: Any, *, has_visits: bool) -> dict[str, Any]:
    """The plan's `mnar_tipping_point` sensitivity analysis `section` (deltas, imputations, delta_arms)
    on the primary model (`primary`: its covariates). Returns {'grid': arm x delta table, 'tipping': per
    arm table, 'deviations': [...], 'info': {...}}; grid and tipping empty (with a deviation) on a
    cohort without visits."""
    deltas = [float(x) for x in section.get("deltas", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0])]
    imputations = int(section.get("imputations", 20))
    delta_arms = str(section.get("delta_arms", "active"))
    words = mnar_assumptions("delta", delta_arms, imputations, ctx.seed)
    info = {"method": "delta-adjusted multiple imputation (tipping point)", "deltas": deltas, "imputations": imputations,
            "delta_arms": delta_arms, "assumptions": words, "mar_assumption": MAR_ASSUMPTION}
    if not has_visits:
        return {"grid": pd.DataFrame(), "tipping": pd.DataFrame(), "info": info,
                "deviations": ["not run: the MNAR tipping point needs each patient's planned follow-up and partial follow-up (a cohort with visits.csv)"]}
    rows = analysed_ids(data)
    keep = data["patient_id"].astype(str).isin(rows).to_numpy()
    cov = derive(data, primary.get("covariates", []), analysed=keep, file=ctx.file)
    cov = full_rank_terms(cov.data.loc[keep], "net2", ["arm"], cov, file=ctx.file)
    formula = " + ".join(["net2 ~ arm", *cov.terms])
    d = cov.data[cov.data["planned_years"].notna()].reset_index(drop=True)
    res = mnar_sensitivity(d, formula, years="followup_years", planned_years="planned_years", reference=ctx.reference, deltas=deltas,
                           delta_arms=delta_arms, imputations=imputations, seed=ctx.seed)
    info["formula"] = formula
    return {"grid": res.table, "tipping": res.tipping, "info": info, "deviations": list(cov.deviations)}


__all__ = ["STRATEGY_WORDS", "analysed_ids", "consort", "mnar_analysis", "prepare"]
