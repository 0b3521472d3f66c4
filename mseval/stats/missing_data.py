"""Missing scans and dropout: exposure-based NB2, CONSORT counts, intercurrent events, MNAR sensitivity.

Plain functions on plain tables (issue 23 item 3):

- `exposure_nb2`: the NB2 rate ratio on partial follow-up. Each patient contributes the NET2 count over
  the intervals observed (baseline to the last scan that took place) with offset log(observed years).
  Valid under MAR: under the NB2 law (a gamma-frailty Poisson process per patient: the model whose
  total count is NB2), the likelihood of a patient's observed intervals is, up to a factor free of the
  parameters, the NB2 likelihood of their total over their exposure; so a dropout that depends on the
  patient's covariates in the model and on the counts already observed (missing at random) is
  ignorable and the fit is the maximum likelihood of all data observed. It is not valid when dropout
  depends on the unobserved future rate itself (MNAR): see `mnar_sensitivity`.
- `consort_counts` / `not_analysed`: per arm, randomized, with each visit observed, completed, lost by
  reason, analysed; and the patients not analysed with the reason.
- `estimand` / `apply_intercurrent`: the ICH E9(R1) estimand of the primary analysis with a named
  strategy per intercurrent event (treatment policy by default; hypothetical where the event's week is
  recorded: the visits after it are set missing and handled under MAR).
- `mnar_sensitivity`: delta-adjusted multiple imputation (tipping point) or jump to reference, pooled
  with Rubin's rules (`mseval.stats.synthetic.rubin_combine`), and the delta at which the primary
  conclusion flips.

Tables: one row per patient (`patient_id`, `arm`, covariates, the count and the observed years, the
planned years); the per-visit table of the shared contract (`patient_id, visit, visit_index,
start_weeks, end_weeks, net2, missing`: '' or NA observed, otherwise the reason).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import CountModelFit, fit_count_model
from mseval.stats.estimability import assess_ratio
from mseval.stats.synthetic import rubin_combine
from mseval.units import WEEKS_PER_YEAR

MAR_ASSUMPTION = ("missing at random: whether a scan is missing may depend on the model's covariates and on the NET2 counts "
                  "already observed, not on the unobserved counts given those (the NB2 law, a gamma-frailty Poisson process per "
                  "patient, is assumed: then the total over the observed intervals with offset log(observed years) is the full "
                  "likelihood of the observed data)")
EXPOSURE_ESTIMAND = ("ratio of NET2 rates (per year of follow-up) on the arm vs the reference in the randomized population, "
                     "estimated from every scan that took place (exposure-based NB2, offset log(observed years))")
STRATEGIES = ("treatment policy", "hypothetical")
DEFAULT_EVENTS: dict[str, str] = {
    "treatment discontinuation": "treatment policy",
    "switch to another disease-modifying therapy": "treatment policy",
}


def _is_observed(missing: pd.Series) -> np.ndarray:
    """True where the per-visit `missing` cell says the visit took place ('' or NA)."""
    m = missing.astype("string").fillna("")
    return (m.str.strip() == "").to_numpy(dtype=bool)


def exposure_from_visits(visits: pd.DataFrame, count: str = "net2") -> pd.DataFrame:
    """Per patient: `observed_net2` (sum of `count` over the observed follow-up visits = the count from
    baseline to the last observed scan, since a visit after a missed one counts from the previous scan
    that took place), `observed_years` (end_weeks of the last observed visit / 52.1775; NaN without one),
    `visits_observed`, `planned_years` (the last scheduled visit: its `scheduled_weeks` where the table has
    them (visits.csv), else its `end_weeks`, / 52.1775; the follow-up `mnar_sensitivity` completes). One
    row per patient of `visits`, sorted by patient_id."""
    v = visits[visits["visit_index"] > 0] if "visit_index" in visits else visits
    seen = _is_observed(v["missing"]) if "missing" in v else np.ones(len(v), dtype=bool)
    obs = v[seen]
    g = obs.groupby("patient_id")
    out = pd.DataFrame({"patient_id": sorted(v["patient_id"].unique())}).set_index("patient_id")
    out["observed_net2"] = g[count].sum().astype("Int64")
    out["observed_years"] = g["end_weeks"].max() / WEEKS_PER_YEAR
    out["visits_observed"] = g.size()
    out["visits_observed"] = out["visits_observed"].fillna(0).astype(np.int64)
    sched = "scheduled_weeks" if "scheduled_weeks" in v else "end_weeks"
    out["planned_years"] = v.groupby("patient_id")[sched].max() / WEEKS_PER_YEAR
    return out.reset_index()


# ---------------------------------------------------------------- exposure-based analysis


@dataclass(frozen=True)
class ExposureAnalysis:
    """fit: the NB2 fit on the analysed patients (`CountModelFit`); counts: per arm randomized,
    analysed, events, exposure_years; not_analysed: patient_id, arm, reason; estimand and assumption
    in words."""

    fit: CountModelFit
    counts: pd.DataFrame
    not_analysed: pd.DataFrame
    estimand: str = EXPOSURE_ESTIMAND
    assumption: str = MAR_ASSUMPTION

    def to_frame(self) -> pd.DataFrame:
        """The fit's terms (rate_ratio, CI, p, estimable, note) with the estimand and the assumption."""
        return self.fit.table.assign(estimand=self.estimand, missing_data=self.assumption)

    def summary(self) -> str:
        lines = [f"Exposure-based NB2 ({self.fit.formula}, offset log(observed years))", f"  estimand: {self.estimand}",
                 f"  assumption: {self.assumption}"]
        for r in self.counts.itertuples():
            lines.append(f"  {r.arm:24s} randomized {r.randomized:4d}  analysed {r.analysed:4d}  events {r.events:5d}  "
                         f"exposure {r.exposure_years:8.2f} years")
        for r in self.fit.table.itertuples():
            lines.append(f"  {r.term:24s} RR {r.rate_ratio:.3f}  95% CI {r.ci_low:.3f} to {r.ci_high:.3f}  p={r.p_value:.3g}" if r.estimable
                         else f"  {r.term:24s} not estimable: {r.note}")
        return "\n".join(lines)


def exposure_nb2(data: pd.DataFrame, formula: str = "net2 ~ arm", *, years: str = "followup_years", reference: str | None = None,
                 cov: str = "expected", arm_col: str = "arm", file: str | None = None, dispersion: str = "common") -> ExposureAnalysis:
    """NB2 of the observed count (the formula's response) with offset log(data[years]) on the patients
    with an observed follow-up (response present, years > 0); the others are randomized, not analysed
    (listed with the reason). `data`: one row per randomized patient. Rate ratios: see EXPOSURE_ESTIMAND,
    valid under MAR_ASSUMPTION. dispersion: "common" or "by_arm" (one NB2 dispersion per arm, `fit_count_model`)."""
    response = formula.split("~")[0].strip()
    for col in (response, years, arm_col):
        if col not in data.columns:
            raise InputError(file, f"column {col!r} not found (columns: {', '.join(map(str, data.columns))})", field=col)
    y = pd.to_numeric(data[response], errors="coerce")
    t = pd.to_numeric(data[years], errors="coerce")
    ok = (y.notna() & t.notna() & (t > 0)).to_numpy()
    rows = data.loc[~ok]
    gone = pd.DataFrame({"patient_id": rows.get("patient_id", pd.Series(rows.index.astype(str), index=rows.index)).to_numpy(),
                         "arm": rows[arm_col].to_numpy(),
                         "reason": np.where(y[~ok].isna().to_numpy(), "no follow-up scan (no observed count)", "no observed follow-up time")})
    analysed = data.loc[ok].copy()
    analysed[response] = y[ok].astype(np.int64)
    fit = fit_count_model(analysed, formula, offset_years=years, reference=reference, cov=cov, arm_col=arm_col, file=file,  # type: ignore[arg-type]
                          dispersion=dispersion)  # type: ignore[arg-type]
    arms = list(fit.arm_categories) or sorted(data[arm_col].astype(str).unique())
    counts = pd.DataFrame({"arm": arms})
    counts["randomized"] = [int((data[arm_col].astype(str) == a).sum()) for a in arms]
    counts["analysed"] = [int((analysed[arm_col].astype(str) == a).sum()) for a in arms]
    counts["events"] = [int(analysed.loc[analysed[arm_col].astype(str) == a, response].sum()) for a in arms]
    counts["exposure_years"] = [float(t[ok][(analysed[arm_col].astype(str) == a).to_numpy()].sum()) for a in arms]
    return ExposureAnalysis(fit, counts, gone.reset_index(drop=True))


# ---------------------------------------------------------------- CONSORT


def consort_counts(patients: pd.DataFrame, visits: pd.DataFrame | None = None, analysed: Iterable[str] | None = None,
                   *, arm_col: str = "arm") -> pd.DataFrame:
    """CONSORT flow per arm (one row per arm, then `all`): randomized; `with_<visit>`: patients whose
    scheduled <visit> took place; completed: every scheduled follow-up visit took place; `lost_<reason>`:
    patients whose last scheduled visit did not take place, by its reason (dropout, missed, ...);
    analysed; not_analysed. `patients`: patient_id and arm of every randomized patient; `visits`: the
    per-visit table (baseline rows, visit_index 0, ignored); None: a single-visit cohort (only randomized
    / analysed). `analysed`: patient_ids analysed (default: those with an observed follow-up visit, or
    every patient without `visits`)."""
    pats = patients[["patient_id", arm_col]].astype({"patient_id": str, arm_col: str})
    arms = list(dict.fromkeys(pats[arm_col]))
    cols: dict[str, pd.Series] = {}
    if visits is not None:
        v = visits[visits["visit_index"] > 0].copy()
        v["patient_id"] = v["patient_id"].astype(str)
        v["_seen"] = _is_observed(v["missing"])
        order = v[["visit", "visit_index"]].drop_duplicates().sort_values("visit_index")["visit"].tolist()
        for label in order:
            cols[f"with_{label}"] = v[(v["visit"] == label) & v["_seen"]].groupby("patient_id").size()
        per = v.groupby("patient_id")["_seen"]
        cols["completed"] = per.all()[per.all()]
        last = v.sort_values("visit_index").groupby("patient_id").last()
        lost = last[~last["_seen"]]
        for reason in sorted(lost["missing"].astype(str).str.strip().unique()):
            cols[f"lost_{reason}"] = lost[lost["missing"].astype(str).str.strip() == reason]["_seen"]
        default = set(v.loc[v["_seen"], "patient_id"])
    else:
        default = set(pats["patient_id"])
    done = default if analysed is None else {str(p) for p in analysed}
    rows = []
    for arm in [*arms, "all"]:
        ids = set(pats["patient_id"] if arm == "all" else pats.loc[pats[arm_col] == arm, "patient_id"])
        row: dict[str, Any] = {"arm": arm, "randomized": len(ids)}
        for name, s in cols.items():
            row[name] = len(ids & set(s.index))
        row["analysed"] = len(ids & done)
        row["not_analysed"] = len(ids) - row["analysed"]
        rows.append(row)
    return pd.DataFrame(rows)


def not_analysed(patients: pd.DataFrame, visits: pd.DataFrame | None, analysed: Iterable[str], *, arm_col: str = "arm",
                 no_visits_reason: str = "no net2_mask in the manifest (no observed follow-up)") -> pd.DataFrame:
    """The randomized patients not analysed: patient_id, arm, reason (from the per-visit table: the
    reasons of their follow-up visits, e.g. 'no follow-up scan: dropout from w24'; without visits:
    `no_visits_reason`)."""
    done = {str(p) for p in analysed}
    gone = patients[~patients["patient_id"].astype(str).isin(done)]
    reasons = []
    for pid in gone["patient_id"].astype(str):
        why = no_visits_reason
        if visits is not None:
            v = visits[(visits["patient_id"].astype(str) == pid) & (visits["visit_index"] > 0)].sort_values("visit_index")
            if len(v):
                parts = [f"{m} from {lab}" if m == "dropout" else f"{m} {lab}" for m, lab in
                         zip(v["missing"].astype("string").fillna("").str.strip(), v["visit"]) if m]
                parts = [p for k, p in enumerate(parts) if not (p.startswith("dropout") and any(q.startswith("dropout") for q in parts[:k]))]
                why = "no follow-up scan: " + ", ".join(parts) if parts else no_visits_reason
        reasons.append(why)
    return pd.DataFrame({"patient_id": gone["patient_id"].astype(str).to_numpy(), "arm": gone[arm_col].astype(str).to_numpy(), "reason": reasons})


def split_analysed(table: pd.DataFrame, visits: pd.DataFrame | None = None, *, count: str = "net2",
                   arm_col: str = "arm") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(analysed rows, CONSORT counts, not analysed) of a one-row-per-randomized-patient table whose
    `count` is <NA> for a patient without an observed follow-up (`analysis_table(...,
    require_observed=False)`). The analysed rows keep `count` as int64; `visits` (the cohort's
    visits.csv, or None) gives the per-visit CONSORT columns and the reasons."""
    has = pd.to_numeric(table[count], errors="coerce").notna().to_numpy()
    analysed = table.loc[has].reset_index(drop=True)
    analysed[count] = pd.to_numeric(analysed[count]).astype(np.int64)
    if "net2_volume_mm3" in analysed and analysed["net2_volume_mm3"].dtype == object:  # analysis_table's <NA> rows gone
        analysed["net2_volume_mm3"] = pd.to_numeric(analysed["net2_volume_mm3"]).astype(float)
    ids = analysed["patient_id"].astype(str)
    return analysed, consort_counts(table, visits, ids, arm_col=arm_col), not_analysed(table, visits, ids, arm_col=arm_col)


# ---------------------------------------------------------------- estimand, intercurrent events


@dataclass(frozen=True)
class Estimand:
    """The ICH E9(R1) attributes of an analysis: population, treatment, variable, the handling of each
    intercurrent event (event -> strategy and what it means for the data), the summary measure, and the
    missing-data assumption of the main estimator."""

    population: str
    treatment: str
    variable: str
    intercurrent: dict[str, tuple[str, str]]
    summary_measure: str
    missing_data: str

    def to_frame(self) -> pd.DataFrame:
        rows = [("population", "", self.population), ("treatment", "", self.treatment), ("variable", "", self.variable)]
        rows += [("intercurrent event", f"{ev}: {st}", how) for ev, (st, how) in self.intercurrent.items()]
        rows += [("summary measure", "", self.summary_measure), ("missing data", "", self.missing_data)]
        return pd.DataFrame(rows, columns=["attribute", "strategy", "description"])

    def summary(self) -> str:
        return "\n".join(f"{a}{' (' + s + ')' if s else ''}: {d}" for a, s, d in self.to_frame().itertuples(index=False))


def _handling(strategy: str) -> str:
    if strategy == "treatment policy":
        return ("the event is part of the treatment regimen compared: every scan after it is used as observed, "
                "whatever the treatment then taken")
    return ("the rate the patient would have had had the event not occurred: the scans after it are set missing and "
            "handled under MAR by the exposure-based analysis")


def estimand(events: dict[str, str] | None = None, *, population: str = "patients with relapsing MS randomized in the trial",
             treatment: str = "the randomized arm vs the reference arm",
             variable: str = "number of new or enlarging T2 lesions per year of follow-up over the scheduled visits",
             summary_measure: str = "rate ratio vs the reference arm (NB2), with its 95% CI") -> Estimand:
    """The estimand in ICH E9(R1) words. `events`: intercurrent event -> strategy ('treatment policy',
    the default for every event, or 'hypothetical'); default DEFAULT_EVENTS. Unknown strategy: InputError."""
    events = dict(DEFAULT_EVENTS if events is None else events)
    for ev, st in events.items():
        if st not in STRATEGIES:
            raise InputError(None, f"intercurrent event {ev!r}: strategy {st!r} is not one of {', '.join(STRATEGIES)}", field="strategy")
    return Estimand(population, treatment, variable, {ev: (st, _handling(st)) for ev, st in events.items()}, summary_measure,
                    "dropout and missed scans are missing data, not intercurrent events: " + MAR_ASSUMPTION
                    + "; MNAR sensitivity by delta-adjusted imputation (tipping point)")


def apply_intercurrent(visits: pd.DataFrame, events: pd.DataFrame, strategy: str = "treatment policy") -> pd.DataFrame:
    """The per-visit table the strategy analyses. `events`: patient_id, event, weeks (when it occurred).
    treatment policy: `visits` unchanged. hypothetical: every visit ending after the patient's event is
    set missing ('intercurrent'; net2 <NA>), so the exposure stops at the last scan before it."""
    if strategy not in STRATEGIES:
        raise InputError(None, f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}", field="strategy")
    if strategy == "treatment policy" or events.empty:
        return visits
    first = events.groupby(events["patient_id"].astype(str))["weeks"].min()
    out = visits.copy()
    at = out["patient_id"].astype(str).map(first)
    after = (at.notna() & (out["end_weeks"] > at) & (out["visit_index"] > 0)).to_numpy() & _is_observed(out["missing"])
    out["missing"] = out["missing"].astype("string").fillna("").astype(object)
    out.loc[after, "missing"] = "intercurrent"
    out["net2"] = out["net2"].astype("Int64")
    out.loc[after, "net2"] = pd.NA
    return out


# ---------------------------------------------------------------- MNAR sensitivity


@dataclass(frozen=True)
class MNARSensitivity:
    """table: one row per arm x delta (or per arm for jump to reference): pooled rate_ratio, ci_low,
    ci_high, p_value, se (log), df, fmi (fraction of missing information), significant, estimable,
    note; tipping: per arm the MAR estimate, whether it is significant and the smallest delta on the grid
    at which it no longer is (`tipping_delta`, and `tipping_rate_multiplier` = exp(delta)), with a
    note when nothing flips; assumptions: the words printed with it."""

    table: pd.DataFrame
    tipping: pd.DataFrame
    assumptions: list[str] = field(default_factory=list)
    method: str = "delta"

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"MNAR sensitivity ({'delta-adjusted tipping point' if self.method == 'delta' else 'jump to reference'})"]
        lines += [f"  assumption: {a}" for a in self.assumptions]
        for r in self.tipping.itertuples():
            lines.append(f"  {r.arm}: MAR RR {r.mar_rate_ratio:.3f}; " + (r.note or f"conclusion flips at delta = {r.tipping_delta:.3g} "
                                                                           f"(missing rate x {r.tipping_rate_multiplier:.3g})"))
        return "\n".join(lines)


def _design(fit: CountModelFit, df: pd.DataFrame) -> np.ndarray:
    import patsy

    d = df.copy()
    d[fit.arm_col] = pd.Categorical(d[fit.arm_col].astype(str), categories=list(fit.arm_categories))
    (X,) = patsy.build_design_matrices([fit.design_info], d)
    return np.asarray(X)


MAX_IMPUTED_MEAN = 1e5
"""Largest imputed mean count (lesions) for one patient's missing follow-up; a draw beyond (or not finite)
comes from a degenerate direction of the MAR fit (an arm without events: its coefficient drifts, its SE
is huge) and that imputation is counted as failed, never cast into a count."""


def mnar_sensitivity(data: pd.DataFrame, formula: str = "net2 ~ arm", *, years: str = "followup_years", planned_years: str = "planned_years",
                     reference: str | None = None, deltas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0), method: str = "delta",
                     delta_arms: str = "active", imputations: int = 20, seed: int = 0, level: float = 0.05,
                     arm_col: str = "arm") -> MNARSensitivity:
    """Multiple imputation of every patient's unobserved follow-up (planned_years - observed years; the
    whole planned follow-up for a patient without a scan) from the fitted NB2 law, then the NB2 on the
    completed data (offset log(planned years)) pooled with Rubin's rules.

    Per imputation: beta* ~ N(beta_hat, V) (the MAR fit's Wald law; alpha fixed at its MLE); the
    patient's frailty g ~ Gamma(1/alpha + y_obs, rate 1/alpha + mu_i t_obs) (its posterior given the
    counts observed, so delta = 0 reproduces the MAR analysis); unobserved count ~ Poisson(mu_i g t_miss x
    exp(delta)) where method 'delta' multiplies the rate of the missing intervals by exp(delta) on the
    `delta_arms` ('active': every arm but the reference; 'all'; 'reference'), or method 'j2r' (jump to
    reference: the missing intervals follow the reference arm's rate mu_i(ref), with the patient's own
    frailty). Common random numbers over deltas (imputed counts by the Poisson inverse CDF of the same
    uniforms), so the estimates move monotonically with delta. Tipping point: per arm whose MAR CI
    excludes 1, the smallest grid delta at which the pooled CI no longer does. Seeded."""
    if method not in ("delta", "j2r"):
        raise InputError(None, f"method {method!r}: choose delta or j2r", field="method")
    if delta_arms not in ("active", "all", "reference"):
        raise InputError(None, f"delta_arms {delta_arms!r}: choose active, all or reference", field="delta_arms")
    if planned_years not in data.columns:
        raise InputError(None, f"column {planned_years!r} (planned follow-up years) not found", field=planned_years)
    response = formula.split("~")[0].strip()
    mar = exposure_nb2(data, formula, years=years, reference=reference, arm_col=arm_col)
    fit = mar.fit
    ref = fit.reference
    arms = [a for a in fit.arm_categories if a != ref]
    df = data.reset_index(drop=True).copy()
    y_obs = pd.to_numeric(df[response], errors="coerce")
    t_obs = pd.to_numeric(df[years], errors="coerce")
    seen = (y_obs.notna() & t_obs.notna() & (t_obs > 0)).to_numpy()
    y0 = np.where(seen, y_obs.fillna(0).to_numpy(dtype=float), 0.0)
    t0 = np.where(seen, t_obs.fillna(0).to_numpy(dtype=float), 0.0)
    planned = pd.to_numeric(df[planned_years], errors="coerce").to_numpy(dtype=float)
    t_miss = np.clip(planned - t0, 0.0, None)
    total_t = np.maximum(planned, t0)
    X = _design(fit, df)
    Xref = _design(fit, df.assign(**{arm_col: ref}))
    arm_of = df[arm_col].astype(str).to_numpy()
    on = {"active": arm_of != ref, "all": np.ones(len(df), bool), "reference": arm_of == ref}[delta_arms]
    V = fit.vcov.to_numpy() if fit.vcov is not None else np.zeros((X.shape[1], X.shape[1]))
    beta_hat, alpha = np.asarray(fit.coef, dtype=float), float(fit.alpha)
    rng = np.random.default_rng(seed)
    grid = [0.0] if method == "j2r" else [float(d) for d in deltas]
    est = np.full((len(grid), imputations, len(arms)), np.nan)
    var = np.full_like(est, np.nan)
    failed = np.zeros(len(grid), dtype=int)
    comp = df.copy()
    comp["_years"] = total_t
    usable = bool(fit.converged and np.all(np.isfinite(beta_hat)) and np.all(np.isfinite(V)) and np.isfinite(alpha))
    for m in range(imputations if usable else 0):
        beta = rng.multivariate_normal(beta_hat, V, method="eigh")
        with np.errstate(over="ignore", invalid="ignore"):
            mu = np.exp(X @ beta)  # per year
        if alpha > 0:
            k = 1.0 / alpha
            g = rng.gamma(k + y0, 1.0 / (k + mu * t0))
        else:
            g = np.ones(len(df))
        u = rng.random(len(df))
        with np.errstate(over="ignore", invalid="ignore"):
            base = (np.exp(Xref @ beta) if method == "j2r" else mu) * g * t_miss
        lam_top = base * np.where(on, np.exp(max(grid)), 1.0) if method == "delta" else base
        if not np.all(np.isfinite(lam_top)) or lam_top.max(initial=0.0) > MAX_IMPUTED_MEAN:
            failed += 1  # a draw of beta far out on a degenerate direction (an arm without events): no usable law at any
            continue     # delta (judged at the largest, so every delta keeps the same imputations: common random numbers)
        for i, d in enumerate(grid):
            lam = base * np.where(on, np.exp(d), 1.0) if method == "delta" else base
            comp[response] = (y0 + stats.poisson.ppf(u, lam).astype(float)).astype(np.int64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fit_count_model(comp, formula, offset_years="_years", reference=ref, arm_col=arm_col, adjusted_means=False)
            if not f.converged:
                failed[i] += 1
                continue
            tab = f.table.set_index("term")
            est[i, m] = tab.loc[arms, "coef"].to_numpy()
            var[i, m] = tab.loc[arms, "se"].to_numpy() ** 2
    mar_tab = fit.table.set_index("term")
    mar_estimable = {a: bool(mar_tab.loc[a, "estimable"]) for a in arms if a in mar_tab.index and "estimable" in mar_tab}
    rows = []
    for i, d in enumerate(grid):
        ok = ~np.isnan(est[i, :, 0])
        if ok.sum() < 2:
            for a in arms:
                rows.append({"arm": a, "delta": d, "rate_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "se": np.nan,
                             "df": np.nan, "fmi": np.nan, "imputations": int(ok.sum()), "significant": False, "estimable": False,
                             "note": (f"{failed[i]} of {imputations} imputations failed (an imputed law not finite, or the fit on the "
                                      "completed data did not converge)") if usable else
                                     "not estimable: the MAR fit is not usable for imputation (not converged, or a coefficient or its "
                                     "covariance not finite)"})
            continue
        q, se, dof, fmi = rubin_combine(est[i, ok], var[i, ok])
        tq = np.where(np.isfinite(dof), stats.t.ppf(1 - level / 2, np.where(np.isfinite(dof), dof, 1.0)), stats.norm.ppf(1 - level / 2))
        p = np.where(np.isfinite(dof), 2 * stats.t.sf(np.abs(q / se), np.where(np.isfinite(dof), dof, 1.0)), 2 * stats.norm.sf(np.abs(q / se)))
        for j, a in enumerate(arms):
            with np.errstate(over="ignore"):
                rr, lo, hi = float(np.exp(q[j])), float(np.exp(q[j] - tq[j] * se[j])), float(np.exp(q[j] + tq[j] * se[j]))
            mar_ok = bool(mar_estimable.get(a, True))
            ok_a, why = assess_ratio(rr, lo, hi, reasons=[] if mar_ok else ["the MAR estimate of this arm is not estimable"])
            notes = [why] if why else []
            if failed[i]:
                notes.append(f"{failed[i]} imputations failed (left out)")
            rows.append({"arm": a, "delta": d, "rate_ratio": rr, "ci_low": lo, "ci_high": hi, "p_value": float(p[j]), "se": float(se[j]),
                         "df": float(dof[j]), "fmi": float(fmi[j]), "imputations": int(ok.sum()), "significant": bool(ok_a and p[j] < level),
                         "estimable": ok_a, "note": "; ".join(notes)})
    table = pd.DataFrame(rows)
    if method == "j2r":
        table = table.drop(columns="delta").assign(method="jump to reference")
    tipping = _tipping(table, mar.fit, arms, level) if method == "delta" else pd.DataFrame()
    return MNARSensitivity(table, tipping, mnar_assumptions(method, delta_arms, imputations, seed), method)


def _tipping(table: pd.DataFrame, fit: CountModelFit, arms: list[str], level: float) -> pd.DataFrame:
    tab = fit.table.set_index("term")
    rows = []
    for a in arms:
        mar_rr, mar_p = float(tab.loc[a, "rate_ratio"]), float(tab.loc[a, "p_value"])
        sig = bool(tab.loc[a, "estimable"]) and mar_p < level
        t = table[(table["arm"] == a) & table["estimable"]].sort_values("delta")
        flip = t[~t["significant"]]
        row = {"arm": a, "mar_rate_ratio": mar_rr, "mar_p_value": mar_p, "mar_significant": sig, "tipping_delta": np.nan,
               "tipping_rate_multiplier": np.nan, "flips": False, "note": ""}
        if not sig:
            row["note"] = "not significant under MAR: no conclusion to tip"
        elif flip.empty:
            row["note"] = f"still significant at every delta up to {t['delta'].max():g} (missing rate x {np.exp(t['delta'].max()):.3g})"
        else:
            d = float(flip["delta"].iloc[0])
            row.update(tipping_delta=d, tipping_rate_multiplier=float(np.exp(d)), flips=True)
        rows.append(row)
    return pd.DataFrame(rows)


def mnar_assumptions(method: str, delta_arms: str, imputations: int, seed: int) -> list[str]:
    """The assumptions of `mnar_sensitivity` (method, delta_arms, imputations, seed) in words, as printed with it."""
    out = ["the observed data follow the fitted NB2 law; beta drawn from its Wald law, alpha fixed at its MLE",
           "each patient's unobserved follow-up (planned minus observed years) is imputed given the counts observed (gamma frailty posterior)"]
    if method == "delta":
        who = {"active": "on every arm but the reference", "all": "on every arm", "reference": "on the reference arm"}[delta_arms]
        out.append(f"after dropout the NET2 rate is exp(delta) times the MAR prediction {who} (delta = 0: MAR; delta > 0: the patients "
                   "who leave do worse than those who stay with the same history)")
    else:
        out.append("jump to reference: after dropout a patient's NET2 rate is the reference arm's for the same covariates (treatment "
                   "stopped at dropout, its effect lost at once)")
    out.append(f"{imputations} imputations pooled by Rubin's rules (t reference with the Rubin 1987 degrees of freedom), seed {seed}")
    return out
