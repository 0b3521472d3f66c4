"""Multi-visit endpoints from the per-visit table (`mseval.lesions.visit_counts`; the count-level world's
`CountTrial.visits`) joined with the per-patient table (manifest / `CountTrial.table`) on patient_id:

- `patient_totals` + `fit_cumulative_nb2`: the cumulative NET2 count over each patient's observed
  follow-up, NB2 with offset log(years of observed follow-up) (`fit_count_model`);
- `fit_gd_per_scan`: new Gd+ lesions per scan, NB2 of the patient's Gd+ total over its observed scans
  with offset log(number of scans), or an NB-GEE over the scans (`mseval.stats.gee`);
- `person_periods` + `fit_first_lesion_cloglog`: time to the first new or enlarging T2 lesion,
  interval-censored at the scans, as a discrete-time complementary log-log model (`HAZARD_ASSUMPTIONS`).

A visit that did not take place (`missing` set, count <NA>) contributes nothing; the next observed
visit's count covers the interval since the previous scan that took place (its start_weeks), so every
observed lesion is counted once and the exposure is each patient's observed follow-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import CountModelFit, _prepare_full, _term_name, design, fit_count_model
from mseval.stats.estimability import flag_table
from mseval.stats.gee import GeeFit, check_covariates, fit_gee, long_table, model_formula, ratio_lines
from mseval.units import WEEKS_PER_YEAR

HAZARD_ASSUMPTIONS = (
    "exp(coef) of an arm is a hazard ratio of the first new or enlarging T2 lesion vs the reference arm when "
    "(1) hazards are proportional in continuous time: the arm multiplies the hazard by one factor in every interval; "
    "(2) within each scheduled visit interval the baseline hazard is constant, so that the offset log(interval years) makes the "
    "interval's own intercept a log baseline hazard per year and patients' intervals of different length comparable; "
    "(3) the lesion is known only to have appeared between two scans (interval censoring, which the model uses as such); "
    "(4) leaving follow-up (dropout, missed scans, end of study) is non-informative given arm and covariates. "
    "It is conditional on the covariates in the model. Under patient-level heterogeneity (the NB2 frailty) the population "
    "hazard ratio drifts toward 1 over time as the most active patients have their first lesion early, so a single HR is "
    "an average over the visit intervals, not a constant of nature."
)


def _observed(visits: pd.DataFrame, response: str) -> pd.Series:
    keep = visits[response].notna()
    if "missing" in visits.columns:
        keep &= visits["missing"].fillna("").astype(str).eq("")
    return keep


def patient_totals(visits: pd.DataFrame, patients: pd.DataFrame, *, response: str = "net2", file: str | None = None) -> pd.DataFrame:
    """The per-patient table (every patient of `patients`, its order) with `response` replaced by the
    total over the patient's observed visits, `followup_years` by the observed exposure (the sum of the
    observed intervals, years: baseline to the last observed visit) and `scans` (observed visits).
    A patient without an observed visit gets <NA> in all three (the fits drop and name it)."""
    for col in ("patient_id", "start_weeks", "end_weeks", response):
        if col not in visits.columns:
            raise InputError(file, f"the per-visit table has no column '{col}'", field=col)
    obs = visits.loc[_observed(visits, response)]
    g = obs.assign(_y=pd.to_numeric(obs[response]).astype(float),
                   _t=(obs["end_weeks"].astype(float) - obs["start_weeks"].astype(float)) / WEEKS_PER_YEAR).groupby("patient_id")
    agg = pd.DataFrame({response: g["_y"].sum(), "followup_years": g["_t"].sum(), "scans": g.size()})
    out = patients.drop(columns=[c for c in (response, "followup_years", "scans") if c in patients.columns]).reset_index(drop=True)
    out = out.merge(agg, left_on="patient_id", right_index=True, how="left")
    out[response] = pd.array([None if pd.isna(v) else int(v) for v in out[response]], dtype="Int64")
    out["scans"] = pd.array([None if pd.isna(v) else int(v) for v in out["scans"]], dtype="Int64")
    return out


def fit_cumulative_nb2(
    visits: pd.DataFrame,
    patients: pd.DataFrame,
    *,
    covariates: Sequence[str] = (),
    reference: str | None = None,
    response: str = "net2",
    offset: str | None = "years",
    arm_col: str = "arm",
    cov: str = "bias_reduced",
    file: str | None = None,
    dispersion: str = "common",
) -> CountModelFit:
    """NB2 of each patient's total `response` over the observed visits on arm + covariates, offset
    log(observed follow-up years) (`offset="years"`) or log(number of observed scans) (`offset=None`:
    a rate per scan). Estimand: the NB2 rate ratio of the arm vs the reference at fixed covariates
    (with arm only: the ratio of the arms' mean rates, `population_rate_ratios`); Wald 95% CI.
    cov: 'bias_reduced' (default): Mancl and DeRouen's bias-reduced patient-level sandwich at the
    fitted alpha, valid when arms differ in overdispersion (the world's treated arms do, and one NB2
    alpha then makes the model-based CI under-cover: bench/RESULTS.md), or 'expected', 'observed',
    'robust' (HC0) as in `fit_count_model`. dispersion 'by_arm': one NB2 dispersion per arm
    (`fit_count_model(dispersion="by_arm")`); with it cov must be 'expected', 'observed' or 'robust' (the
    bias-reduced sandwich here is built from an NB-GEE family, which holds one alpha)."""
    check_covariates(covariates, patients, file)
    if dispersion == "by_arm" and cov == "bias_reduced":
        raise InputError(file, "dispersion 'by_arm' needs cov 'expected', 'observed' or 'robust' (the bias-reduced sandwich holds one alpha)",
                         field="dispersion")
    table = patient_totals(visits, patients, response=response, file=file)
    off = "followup_years" if offset else "scans"
    fit = fit_count_model(table, model_formula(response, arm_col, covariates), offset_years=off, reference=reference, arm_col=arm_col,
                          cov="expected" if cov == "bias_reduced" else cov, file=file, dispersion=dispersion)  # type: ignore[arg-type]
    if cov != "bias_reduced":
        return fit
    # the NB2 MLE's beta solves the NB(alpha-hat) GLM's score: an independence NB-GEE over one row per patient at the
    # fitted alpha has the same coefficients, and its bias-reduced sandwich is the one we want
    # (offset: log of the `off` column, passed as an interval of that many "years")
    one = table.loc[table[response].notna()]
    rows = pd.DataFrame({"patient_id": one["patient_id"].to_numpy(), "visit_index": 1, "start_weeks": 0.0,
                         "end_weeks": one[off].to_numpy(dtype=float) * WEEKS_PER_YEAR, response: one[response].to_numpy()})
    gee = fit_gee(rows, patients.drop(columns=[c for c in (response,) if c in patients.columns]), covariates=covariates, corr="independence",
                  family="nb", reference=fit.reference, response=response, offset="years", arm_col=arm_col,
                  nb_alpha=fit.alpha if fit.alpha > 0 else 1e-12, file=file)
    if gee.se_type != "bias_reduced":  # I - H_i singular: a patient with leverage 1 (e.g. the only one at a covariate level)
        return replace(fit, notes=[*fit.notes, "the bias-reduced sandwich is not computable (a patient's leverage is 1, e.g. the only "
                                               "patient at a covariate level): SEs and CIs are expected-information ones"])
    g = gee.table.set_index("term")
    t = fit.table.copy()
    est = t["estimable"].to_numpy()
    t["se"] = g.loc[t["term"], "se"].to_numpy()
    for col in ("ci_low", "ci_high", "p_value"):
        t[col] = g.loc[t["term"], col].to_numpy()
    t["estimable"] = est & g.loc[t["term"], "estimable"].to_numpy()
    t["note"] = [n or (gn if not ok else "") for n, gn, ok in zip(t["note"], g.loc[t["term"], "note"], g.loc[t["term"], "estimable"])]
    names = list(gee.vcov.index)
    return replace(fit, table=t, cov="bias_reduced", vcov=gee.vcov.loc[names, names],
                   notes=[*fit.notes, "SEs: Mancl-DeRouen bias-reduced sandwich at the fitted alpha (patient-level)"])


def fit_gd_per_scan(
    visits: pd.DataFrame,
    patients: pd.DataFrame,
    *,
    covariates: Sequence[str] = (),
    reference: str | None = None,
    method: str = "nb2",
    corr: str = "exchangeable",
    arm_col: str = "arm",
    file: str | None = None,
) -> CountModelFit | GeeFit:
    """New Gd+ lesions per scan (`gd_count` of each observed scan) on arm + covariates.

    method 'nb2': NB2 of the patient's Gd+ total over its observed scans with offset log(scans) (the
    rate ratio of Gd+ lesions per scan, conditional on covariates); 'gee': NB-GEE over the scans
    (`fit_gee`, no offset; the population-averaged rate ratio per scan, robust CI).
    """
    if method == "nb2":
        return fit_cumulative_nb2(visits, patients, covariates=covariates, reference=reference, response="gd_count", offset=None,
                                  arm_col=arm_col, file=file)
    if method == "gee":
        return fit_gee(visits, patients, covariates=covariates, corr=corr, family="nb", reference=reference, response="gd_count",
                       offset=None, arm_col=arm_col, file=file)
    raise InputError(file, f"unknown Gd+ method {method!r} (choose nb2 or gee)", field="method")


def person_periods(visits: pd.DataFrame, patients: pd.DataFrame, *, response: str = "net2", arm_col: str = "arm",
                   file: str | None = None) -> pd.DataFrame:
    """Person-period data for the time to the first new/enlarging lesion: one row per patient and
    observed interval up to and including the first with `response` > 0 (event 1; earlier ones 0),
    the patient's covariates joined; `interval` names the interval by its end visit (a categorical
    in visit order), `years` its length. Patients without an observed visit contribute no row."""
    long = long_table(visits, patients, response=response, arm_col=arm_col, file=file)
    long["event"] = (long[response] > 0).astype(int)
    before = long.groupby("patient_id", sort=False)["event"].cumsum() - long["event"]
    pp = long.loc[before.to_numpy() == 0].reset_index(drop=True)
    label = "visit" if "visit" in pp.columns else "visit_index"
    order = pp.drop_duplicates("visit_index").sort_values("visit_index")[label].astype(str).tolist()
    pp["interval"] = pd.Categorical(pp[label].astype(str), categories=list(dict.fromkeys(order)))
    return pp


@dataclass(frozen=True)
class HazardFit:
    """The discrete-time cloglog fit. table: arm and covariate terms (term, coef, se, hazard_ratio,
    ci_low, ci_high, p_value, estimable, note), model-based Wald 95% CI; params/vcov: every
    coefficient (interval intercepts included); assumptions: when exp(coef) is a hazard ratio."""

    table: pd.DataFrame
    params: pd.Series
    vcov: pd.DataFrame
    formula: str
    reference: str
    n_patients: int
    n_periods: int
    events: int
    converged: bool
    notes: list[str] = field(default_factory=list)
    assumptions: str = HAZARD_ASSUMPTIONS

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Discrete-time cloglog (interval-censored first new/enlarging T2 lesion): {self.formula}; "
                 f"{self.n_patients} patients, {self.n_periods} patient-intervals, {self.events} first lesions; "
                 f"{'converged' if self.converged else 'NOT CONVERGED'}"]
        lines += ratio_lines(self.table, "hazard_ratio", "HR")
        lines.append(f"  assumptions: {self.assumptions}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def fit_first_lesion_cloglog(
    visits: pd.DataFrame,
    patients: pd.DataFrame,
    *,
    covariates: Sequence[str] = (),
    reference: str | None = None,
    response: str = "net2",
    arm_col: str = "arm",
    file: str | None = None,
) -> HazardFit:
    """P(first lesion in interval j | none before) = 1 - exp(-exp(gamma_j + x'beta + log(years_ij))):
    a binomial GLM with cloglog link on the person-period data (`person_periods`), one intercept per
    interval (`C(interval)`), arm + covariates, offset log(interval years). exp(beta_arm) is the hazard
    ratio under `HAZARD_ASSUMPTIONS`. An arm in which nobody (or everybody at risk) has an event
    separates the data: its HR is flagged not estimable."""
    import statsmodels.api as sm

    check_covariates(covariates, patients, file)
    pp = person_periods(visits, patients, response=response, arm_col=arm_col, file=file)
    formula = " + ".join(["event ~ interval", arm_col, *covariates])
    prep = _prepare_full(pp, formula, arm_col, reference, file, extra=("years",))
    df = prep.df
    notes = [prep.dropped_note.replace("rows", "patient-intervals", 1)] if prep.dropped_note else []
    ref = str(df[arm_col].cat.categories[0])
    arms = list(df[arm_col].cat.categories)
    separated: dict[str, str] = {}
    for arm in arms:
        ev = df.loc[df[arm_col] == arm, "event"].to_numpy()
        why = ("nobody in this arm had a new/enlarging lesion (separation: the HR's estimate is 0)" if ev.sum() == 0 else
               "every patient at risk in this arm had a lesion in every interval observed (separation)" if ev.all() else "")
        if why:
            separated[arm] = why
    if ref in separated:
        notes.append(f"reference arm {ref!r}: {separated[ref]}; no hazard ratio against it is estimable")
        separated = {a: f"the reference arm {ref!r} separates the data" for a in arms[1:]} | {ref: separated[ref]}
    elif separated:
        # a separated arm's rows drop out of the likelihood at its limit (its own intercept shift absorbs them): the other
        # coefficients' MLE is the fit without them
        notes.append(f"{', '.join(map(repr, separated))} separate(s) the data: fitted without their patient-intervals; "
                     "their hazard ratio is not estimable")
        df = df[~df[arm_col].isin(list(separated))].copy()
        df[arm_col] = df[arm_col].cat.remove_unused_categories()
    df["interval"] = df["interval"].cat.remove_unused_categories()
    y, X, info = design(formula, df, file)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise InputError(file, "the cloglog model could not be fitted (singular design: a term is constant or collinear, "
                               "e.g. an interval in which nobody is at risk)", field="formula")
    names = [_term_name(n, arm_col) for n in info.column_names]
    model = sm.GLM(y, X, family=sm.families.Binomial(link=sm.families.links.CLogLog()), offset=np.log(df["years"].to_numpy(dtype=float)))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(method="IRLS", tol=1e-13, tol_criterion="params", maxiter=200)  # the deviance is flat at the optimum
    converged = bool(res.converged) and not any("separation" in str(w.message).lower() for w in caught)
    beta, V = np.asarray(res.params, dtype=float), np.asarray(res.cov_params(), dtype=float)
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    z = stats.norm.ppf(0.975)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        table = pd.DataFrame({"term": names, "coef": beta, "se": se, "hazard_ratio": np.exp(beta), "ci_low": np.exp(beta - z * se),
                              "ci_high": np.exp(beta + z * se), "p_value": 2 * stats.norm.sf(np.abs(beta / se)), "converged": converged})
    missing_arms = [a for a in arms[1:] if a not in names]
    if missing_arms:
        table = pd.concat([table, pd.DataFrame({"term": missing_arms, "converged": converged})], ignore_index=True)
    reasons = [separated.get(t, "") if t != ref else "" for t in table["term"]]
    table["estimable"] = [not r for r in reasons]
    table["note"] = reasons
    table = flag_table(table, "hazard_ratio", "ci_low", "ci_high", converged="converged").drop(columns="converged")
    table["note"] = [r or n for r, n in zip(reasons, table["note"])]
    if not converged:
        notes.append("the cloglog fit did not converge; estimates are the last ones")
    keep = ~table["term"].str.startswith("interval") & (table["term"] != "Intercept")
    return HazardFit(table=table[keep].reset_index(drop=True), params=pd.Series(beta, index=names),
                     vcov=pd.DataFrame(V, index=names, columns=names), formula=formula + " + offset(log(interval years))", reference=ref,
                     n_patients=int(prep.df["patient_id"].nunique()), n_periods=int(len(prep.df)), events=int(prep.df["event"].sum()), converged=converged, notes=notes)
