"""NB-GEE and Poisson GEE of per-visit lesion counts (statsmodels `GEE`), with robust (sandwich) SEs.

Model, per patient i and observed follow-up visit j (the per-visit table of
`mseval.lesions.visit_counts`, joined with the per-patient covariates on patient_id):

    log E[Y_ij | x_i] = x_i' beta + log(t_ij),    t_ij = (end_weeks - start_weeks) / 52.1775 years

Y_ij is the visit's NET2 count over its interval (start_weeks, end_weeks] (or, with `offset=None`,
a per-scan count such as Gd+ lesions). Var(Y_ij) = phi V(mu_ij), V(mu) = mu (Poisson) or
mu + alpha mu^2 (NB: statsmodels' `NegativeBinomial(alpha)` family); a working correlation
(independence, exchangeable, AR(1) over the visit index) links a patient's visits.

Estimand: exp(beta_arm) is the **population-averaged (marginal) rate ratio** of the arm vs the
reference over the visit intervals, at fixed covariates: the ratio of the mean NET2 rate per year of
the arm's patients to the reference arm's. With no covariates it is E[rate | arm] / E[rate | ref]
over the trial population, the quantity `mseval.simulate.counts_only.population_rate_ratios`
computes. Its 95% CI is Wald on the log scale with the robust (sandwich, patient-level clusters)
variance: valid when the working variance and correlation are wrong, asymptotically in the number of
patients; it conditions on nothing but the randomisation and the covariates. The default sandwich is
Mancl and DeRouen's (2001) bias-reduced one (each patient's residuals scaled by (I - H_i)^-1, statsmodels
`cov_type="bias_reduced"`): the Liang-Zeger sandwich under-covers at 20 patients per arm (91% in
bench/RESULTS.md); `se="robust"` gives Liang-Zeger's, the one geepack reports.
Missing visits: each observed visit counts over its own interval (against the previous scan that took
place), so partial follow-up enters with its exposure; valid under missing completely at random
(GEE needs MCAR for unweighted estimating equations, not MAR).

Working correlation parameter and scale, as R's geepack estimates them (for parity, tested live
against `geepack::geeglm`): phi = mean of the squared Pearson residuals over all N observations
(no N - p), and the correlation from the products z_ijk = r_ij r_ik / phi of a patient's standardized
Pearson residuals over all within-patient pairs: exchangeable alpha = mean z (statsmodels'
`Exchangeable` with ddof_scale = 0 is exactly this); AR(1) rho solving sum E_jk (z_jk - rho^d_jk) = 0,
d_jk = |visit_index_j - visit_index_k| and E_jk = d rho^(d-1) (the least squares fit of rho^d to z;
`GeepackAR1` below, because statsmodels' `Autoregressive` uses positions within the cluster instead of
the visit index when a visit is missing, and a weighted lag regression). The scale does not enter the
coefficients or the robust SEs.

NB variance: alpha is fixed at the cumulative NB2 fit's (`mseval.stats.visits.fit_cumulative_nb2`,
same covariates, the patient totals over their observed follow-up): under a gamma frailty shared by
a patient's visits, every interval's count is marginally NB2 with that same alpha whatever its length,
so the cumulative fit's maximum likelihood alpha is the right variance function for each interval; a
moment estimate from per-visit residuals would mix the variance with the within-patient correlation.
geepack has no NB variance (its variances are gaussian, binomial, poisson and Gamma), so the NB-GEE has
no R reference; the tests check it against statsmodels' GLM(NegativeBinomial(alpha)) with
patient-clustered sandwich under independence, which it must equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError
from mseval.stats.count_model import CountModelFit, _prepare_full, _term_name, _zero_event_terms, design
from mseval.stats.estimability import flag_table
from mseval.units import WEEKS_PER_YEAR

CORRELATIONS = ("independence", "exchangeable", "ar1")
FAMILIES = ("poisson", "nb")
SE_TYPES = ("bias_reduced", "robust")
CI_REFERENCES = ("normal", "t", "t_arms")
ESTIMAND = ("population-averaged (marginal) rate ratio vs the reference arm over the visit intervals, "
            "at fixed covariates; Wald 95% CI with the robust (sandwich) variance, patients as clusters "
            "(Mancl-DeRouen bias-reduced unless se='robust')")


def _geepack_ar1_class():  # noqa: ANN202 - built lazily so that importing this module does not import statsmodels
    from statsmodels.genmod.cov_struct import CovStruct

    class GeepackAR1(CovStruct):
        """AR(1) working correlation rho^|t_j - t_k| over the `time` (visit index) of each observation,
        rho estimated as R's geepack does (module docstring)."""

        def initialize(self, model) -> None:  # noqa: ANN001
            super().initialize(model)
            self.dep_params = 0.0

        def update(self, params) -> None:  # noqa: ANN001
            m = self.model
            pr = []
            for i in range(m.num_group):
                mu, _ = m.cached_means[i]
                pr.append((m.endog_li[i] - mu) / np.sqrt(m.family.variance(mu)))
            phi = float(np.mean(np.concatenate(pr) ** 2))
            z, d = [], []
            for i, r in enumerate(pr):
                t = m.time_li[i][:, 0]
                j, k = np.triu_indices(len(r), 1)
                z.append(r[j] * r[k] / phi)
                d.append(np.abs(t[k] - t[j]))
            z, d = np.concatenate(z), np.concatenate(d)
            if z.size == 0:
                self.dep_params = 0.0
                return
            rho = float(self.dep_params)
            for _ in range(200):  # Gauss-Newton, geepack's step
                e = np.where(d == 1, 1.0, d * rho ** np.maximum(d - 1, 0))
                step = float(e @ (z - rho ** d)) / float(e @ e)
                rho += step
                if abs(step) < 1e-14:
                    break
            self.dep_params = rho

        def covariance_matrix(self, expval, index):  # noqa: ANN001, ANN201
            t = self.model.time_li[index][:, 0]
            return self.dep_params ** np.abs(t[:, None] - t[None, :]), True

        def summary(self) -> str:
            return f"AR(1) over the visit index, rho = {self.dep_params:.4f}"

    return GeepackAR1


@dataclass(frozen=True)
class GeeFit:
    """A fitted GEE. table: one row per term but the intercept (term, coef, se, rate_ratio, ci_low,
    ci_high, p_value, estimable, note); arm terms are named by the arm; `se` is robust. params and
    vcov: every coefficient (intercept included, log scale) and their robust covariance (`se_type`);
    vcov_liang_zeger: the uncorrected sandwich (geepack's san.se), whatever `se_type`. dep_param: the working
    correlation parameter (exchangeable alpha or AR(1) rho; 0 under independence); scale: geepack's phi;
    nb_alpha: the NB variance's alpha (None for Poisson) and where it came from (`nb_alpha_source`)."""

    table: pd.DataFrame
    params: pd.Series
    family: str
    corr: str
    dep_param: float
    scale: float
    nb_alpha: float | None
    nb_alpha_source: str
    n_patients: int
    n_obs: int
    max_visits: int
    converged: bool
    iterations: int
    formula: str
    reference: str
    response: str
    offset: str | None
    vcov: pd.DataFrame
    se_type: str
    vcov_liang_zeger: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    estimand: str = ESTIMAND
    ci_reference: str = "normal"
    """Reference law of the Wald statistic and CI: "normal", or "t(df)" with df = patients - coefficients."""

    def to_frame(self) -> pd.DataFrame:
        return self.table

    rate_ratio = CountModelFit.rate_ratio  # the row of one term (KeyError naming the terms when absent)

    def summary(self) -> str:
        fam = "Poisson" if self.family == "poisson" else f"NB (alpha {self.nb_alpha:.3f}, {self.nb_alpha_source})"
        per = "per year" if self.offset else "per scan"
        lines = [f"GEE {fam}, log link, rate {per}: {self.formula}; working correlation {self.corr} "
                 f"({self.dep_param:.3f}); {self.n_patients} patients, {self.n_obs} visits; "
                 f"{'converged' if self.converged else 'NOT CONVERGED'}; Wald CI, {self.ci_reference} reference",
                 f"  estimand: {self.estimand}"]
        lines += ratio_lines(self.table, "rate_ratio", "RR")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def ratio_lines(table: pd.DataFrame, column: str, label: str) -> list[str]:
    """One summary line per term: the ratio `column` (named `label`) with its 95% CI and p, or "not
    estimable" with the reason."""
    lines = []
    for r in table.itertuples():
        if r.estimable:
            lines.append(f"  {r.term:28s} {label} {getattr(r, column):8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}  p={r.p_value:.3g}")
        else:
            lines.append(f"  {r.term:28s} not estimable: {r.note}")
    return lines


def model_formula(response: str, arm_col: str, covariates: Sequence[str]) -> str:
    return " + ".join([f"{response} ~ {arm_col}", *covariates])


def long_table(visits: pd.DataFrame, patients: pd.DataFrame, *, response: str, arm_col: str = "arm", file: str | None = None) -> pd.DataFrame:
    """The observed visits (response present, `missing` empty) joined with the per-patient table on
    patient_id, sorted by patient_id and visit_index, with `years` = the interval length in years.
    InputError naming the field for a column that is not there or a visit of an unknown patient."""
    for col in ("patient_id", "visit_index", "start_weeks", "end_weeks", response):
        if col not in visits.columns:
            raise InputError(file, f"the per-visit table has no column '{col}'", field=col)
    for col in ("patient_id", arm_col):
        if col not in patients.columns:
            raise InputError(file, f"the per-patient table has no column '{col}'", field=col)
    unknown = ~visits["patient_id"].isin(set(patients["patient_id"]))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0]) + 1
        raise InputError(file, f"patient {visits['patient_id'].iloc[row - 1]!r} of the per-visit table is not in the per-patient table",
                         row=row, field="patient_id")
    keep = visits[response].notna()
    if "missing" in visits.columns:
        keep &= visits["missing"].fillna("").astype(str).eq("")
    per_visit = {"visit", "visit_index", "start_weeks", "end_weeks", "net2", "gd_count", "missing", response}
    vcols = [c for c in visits.columns if c == "patient_id" or c in per_visit or c not in patients.columns]
    pcols = [c for c in patients.columns if c == "patient_id" or c not in vcols]  # per-visit columns win over cumulative ones
    v = visits.loc[keep, vcols].merge(patients[pcols], on="patient_id", how="left", validate="many_to_one")
    v["years"] = (v["end_weeks"].astype(float) - v["start_weeks"].astype(float)) / WEEKS_PER_YEAR
    bad = ~(v["years"] > 0)
    if bad.any():
        r = v.loc[bad].iloc[0]
        raise InputError(file, f"visit {r.get('visit', r['visit_index'])!r} of patient {r['patient_id']!r} has an empty interval "
                         f"(start_weeks {r['start_weeks']:g}, end_weeks {r['end_weeks']:g})", field="end_weeks")
    v[response] = pd.to_numeric(v[response]).astype(float)
    return v.sort_values(["patient_id", "visit_index"], kind="stable").reset_index(drop=True)


def check_covariates(covariates: Sequence[str], patients: pd.DataFrame, file: str | None = None) -> None:
    """InputError (field 'covariates') naming the first column a covariate term uses that the per-patient table lacks."""
    from mseval.stats.count_model import _formula_columns

    for term in covariates:
        for col in _formula_columns(str(term)):
            if col not in patients.columns:
                raise InputError(file, f"covariate {term!r} names column '{col}', which the per-patient table does not have "
                                       f"(columns: {', '.join(map(str, patients.columns))})", field="covariates")


def check_choices(corr: str, family: str, file: str | None = None) -> None:
    if corr not in CORRELATIONS:
        raise InputError(file, f"unknown working correlation {corr!r} (choose one of {', '.join(CORRELATIONS)})", field="corr")
    if family not in FAMILIES:
        raise InputError(file, f"unknown GEE family {family!r} (choose one of {', '.join(FAMILIES)})", field="family")


def gee_design(visits: pd.DataFrame, patients: pd.DataFrame, *, covariates: Sequence[str] = (), corr: str = "exchangeable",
               reference: str | None = None, response: str = "net2", arm_col: str = "arm",
               file: str | None = None) -> tuple[str, pd.DataFrame, np.ndarray, np.ndarray, list[str], list[str]]:
    """(formula, the analysed long table (one row per observed visit, sorted by patient and visit; `years` the
    interval, `arm_col` categorical with the reference first), y (N,), X (N, k), term names (k,), notes) of the GEE
    of `fit_gee`; InputError for a design it cannot fit (one visit per patient with a working correlation, a
    singular design)."""
    formula = model_formula(response, arm_col, covariates)
    check_covariates(covariates, patients, file)
    long = long_table(visits, patients, response=response, arm_col=arm_col, file=file)
    prep = _prepare_full(long, formula, arm_col, reference, file, extra=("visit_index", "years"))
    df = prep.df
    notes = [prep.dropped_note.replace("rows", "visits", 1)] if prep.dropped_note else []
    if corr != "independence" and df.groupby("patient_id", sort=False).size().max() < 2:
        raise InputError(file, f"working correlation {corr!r} needs patients with two or more observed visits; every patient here has one "
                               "(use corr 'independence' or a cumulative analysis)", field="corr")
    y, X, info = design(formula, df, file)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise InputError(file, "the GEE could not be fitted (singular design: a term is constant or collinear)", field="formula")
    return formula, df, y, X, [_term_name(n, arm_col) for n in info.column_names], notes


def _max_leverage(model: object, res: object) -> float:  # a fitted statsmodels GEE and its result
    """The largest eigenvalue modulus over patients of H_i = D_i (sum_j D_j' V_j^-1 D_j)^-1 D_i' V_i^-1, the cluster
    leverage in Mancl and DeRouen's bias-reduced sandwich (statsmodels' `_bc_covmat` solves (I - H_i) r = e): 1 when
    a patient alone determines a coefficient, where the correction does not exist."""
    cov_naive = np.asarray(res.cov_naive, dtype=float) / model.scaling_factor
    scale = model.estimate_scale()
    worst = 0.0
    for i in range(model.num_group):
        expval, lpr = model.cached_means[i]
        dmat = model.mean_deriv(model.exog_li[i], lpr)
        sdev = np.sqrt(model.family.variance(expval))
        vinv_d = model.cov_struct.covariance_matrix_solve(expval, i, sdev, (dmat,))[0] / scale
        h = (vinv_d @ cov_naive @ dmat.T).T
        worst = max(worst, float(np.abs(np.linalg.eigvals(h)).max()))
    return worst


def fit_gee(
    visits: pd.DataFrame,
    patients: pd.DataFrame,
    *,
    covariates: Sequence[str] = (),
    corr: str = "exchangeable",
    family: str = "nb",
    reference: str | None = None,
    response: str = "net2",
    offset: str | None = "years",
    arm_col: str = "arm",
    nb_alpha: float | None = None,
    se: str = "bias_reduced",
    ci_reference: str = "normal",
    file: str | None = None,
) -> GeeFit:
    """GEE of the per-visit `response` on arm (+ `covariates`, formula terms over the per-patient
    table), offset log(interval years) (`offset="years"`) or none (`offset=None`: a per-scan count).

    family 'poisson' or 'nb' (NB variance with `nb_alpha`, default: the cumulative NB2 fit's alpha,
    module docstring); corr 'independence', 'exchangeable' or 'ar1' (over visit_index); se
    'bias_reduced' (default: Mancl and DeRouen's small-sample correction of the sandwich, which the
    Liang-Zeger sandwich needs with 20 patients per arm, bench/RESULTS.md) or 'robust' (Liang-Zeger,
    geepack's san.se). InputError
    for an unknown choice, a covariate not in the data, or a working correlation the data cannot
    support (every patient with one observed visit). ci_reference 'normal' (Wald z) or 't': the Wald
    statistic and CI against t with (patients - coefficients) degrees of freedom, the usual small-sample
    reference for a sandwich estimated from few clusters (the sandwich's variance has about that many
    degrees of freedom); 't_arms': an arm's term against t(patients in the arm + in the reference - 2),
    the clusters whose residuals carry that contrast's sandwich variance (other terms: patients -
    coefficients).
    """
    if ci_reference not in CI_REFERENCES:
        raise InputError(file, f"unknown CI reference {ci_reference!r} (choose one of {', '.join(CI_REFERENCES)})", field="ci_reference")
    import statsmodels.api as sm
    from statsmodels.genmod.generalized_estimating_equations import GEE

    check_choices(corr, family, file)
    if se not in SE_TYPES:
        raise InputError(file, f"unknown GEE standard error {se!r} (choose one of {', '.join(SE_TYPES)})", field="se")
    if offset not in (None, "years"):
        raise InputError(file, f"offset must be 'years' or None, got {offset!r}", field="offset")
    formula, df, y, X, names, notes = gee_design(visits, patients, covariates=covariates, corr=corr, reference=reference, response=response,
                                                 arm_col=arm_col, file=file)
    sizes = df.groupby("patient_id", sort=False).size()
    ref = str(df[arm_col].cat.categories[0])
    alpha_source = ""
    if family == "nb":
        if nb_alpha is None:
            from mseval.stats.visits import fit_cumulative_nb2

            cum = fit_cumulative_nb2(visits, patients, covariates=covariates, reference=ref, response=response, arm_col=arm_col,
                                     offset=offset, cov="expected", file=file)
            nb_alpha, alpha_source = float(cum.alpha), "from the cumulative NB2 fit"
            if cum.boundary:
                notes.append("the cumulative NB2 fit is at the Poisson boundary (alpha = 0): the NB-GEE uses the Poisson variance")
        else:
            alpha_source = "given"
        fam = sm.families.NegativeBinomial(alpha=max(float(nb_alpha), 1e-12))
    else:
        fam = sm.families.Poisson()
    cov_struct = {"independence": sm.cov_struct.Independence, "exchangeable": sm.cov_struct.Exchangeable,
                  "ar1": _geepack_ar1_class()}[corr]()
    off = np.log(df["years"].to_numpy(dtype=float)) if offset else None
    groups = pd.factorize(df["patient_id"])[0]
    model = GEE(y, X, groups=groups, time=df["visit_index"].to_numpy(dtype=float)[:, None], family=fam, cov_struct=cov_struct, offset=off)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = model.fit(maxiter=200, ctol=1e-12, ddof_scale=0, cov_type=se)
            if se == "bias_reduced" and _max_leverage(model, res) > 1 - 1e-8:
                raise np.linalg.LinAlgError("a cluster's leverage is 1")  # statsmodels >= 0.15 / numpy 2.4 may solve it to noise
        except np.linalg.LinAlgError:
            if se != "bias_reduced":
                raise
            # Mancl-DeRouen's (I - H_i)^-1 does not exist: a patient with leverage 1 (e.g. alone at a covariate level)
            se = "robust"
            notes.append("the bias-reduced sandwich is not computable (a patient's leverage is 1, e.g. the only patient at a covariate "
                         "level): Liang-Zeger sandwich SEs")
            res = model.fit(maxiter=200, ctol=1e-12, ddof_scale=0, cov_type=se)
    iterations = len(res.fit_history["params"]) - 1
    converged = iterations < 200 and not any("converge" in str(w.message).lower() for w in caught)
    if not converged:
        notes.append(f"the GEE did not converge in {iterations} iterations; estimates are the last ones")
    beta = np.asarray(res.params, dtype=float)
    V = np.asarray(res.cov_robust_bc if se == "bias_reduced" else res.cov_robust, dtype=float)
    dof: np.ndarray | None = None
    if ci_reference != "normal":
        if len(sizes) - X.shape[1] < 1:
            raise InputError(file, f"a t reference needs more patients ({len(sizes)}) than coefficients ({X.shape[1]})", field="ci_reference")
        dof = np.full(len(names), float(len(sizes) - X.shape[1]))
        if ci_reference == "t_arms":
            per_arm = df.groupby(arm_col, observed=True)["patient_id"].nunique()
            for j, nm in enumerate(names):
                if nm in per_arm.index and nm != ref:
                    dof[j] = float(per_arm[nm] + per_arm[ref] - 2)
    table = _wald_table(names, beta, V, _zero_event_terms(y, X), converged, dof)
    ref_rows = (df[arm_col] == ref).to_numpy()
    if y[ref_rows].sum() == 0:
        notes.append(f"the reference arm {ref!r} has no events: no rate ratio against it is estimable")
        arms = set(df[arm_col].cat.categories[1:])
        table.loc[table["term"].isin(arms), "estimable"] = False
        table.loc[table["term"].isin(arms), "note"] = f"the reference arm {ref!r} has no events: the rate ratio is infinite (not estimable)"
    for term in table.loc[table["note"].str.startswith("no events"), "term"]:
        notes.append(f"{term!r} has no events: its rate ratio is not estimable (estimate at the boundary)")
    pr = (y - res.fittedvalues) / np.sqrt(fam.variance(np.asarray(res.fittedvalues)))
    dep = float(np.atleast_1d(cov_struct.dep_params)[0]) if corr != "independence" else 0.0
    params = pd.Series(beta, index=names)
    table = table[table["term"] != "Intercept"].reset_index(drop=True)
    return GeeFit(table=table, params=params, family=family, corr=corr, dep_param=dep, scale=float(np.mean(pr ** 2)),
                  nb_alpha=float(nb_alpha) if family == "nb" else None, nb_alpha_source=alpha_source,
                  n_patients=int(len(sizes)), n_obs=int(len(df)), max_visits=int(sizes.max()), converged=converged,
                  iterations=iterations, formula=formula + (" + offset(log(interval years))" if offset else ""), reference=ref,
                  response=response, offset=offset, vcov=pd.DataFrame(V, index=names, columns=names), se_type=se,
                  vcov_liang_zeger=pd.DataFrame(np.asarray(res.cov_robust, dtype=float), index=names, columns=names), notes=notes,
                  ci_reference="normal" if dof is None else (f"t({dof[0]:g})" if ci_reference == "t"
                                                             else "t(patients in the arm + reference - 2)"))


def _wald_table(names: list[str], beta: np.ndarray, V: np.ndarray, zero_event: np.ndarray, converged: bool,
                dof: np.ndarray | None = None) -> pd.DataFrame:
    """term, coef, se, rate_ratio, ci_low, ci_high, p_value, estimable, note (Wald; normal reference, or t with each
    term's dof (k,))."""
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    ref = stats.norm if dof is None else stats.t(dof)  # (k,) dof: elementwise
    z = ref.ppf(0.975)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        table = pd.DataFrame({"term": names, "coef": beta, "se": se, "rate_ratio": np.exp(beta), "ci_low": np.exp(beta - z * se),
                              "ci_high": np.exp(beta + z * se), "p_value": 2 * ref.sf(np.abs(beta / se)),
                              "converged": converged})
    table["estimable"] = ~zero_event
    table["note"] = np.where(zero_event, "no events in this group: the rate ratio's estimate is 0", "")
    table = flag_table(table, "rate_ratio", "ci_low", "ci_high", converged="converged")
    return table.drop(columns="converged")
