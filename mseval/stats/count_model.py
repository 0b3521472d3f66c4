"""Negative binomial (NB2) regression of lesion counts, the primary analysis of RRMS MRI trials.

    log E[count_i] = x_i' beta + log(follow-up years_i),   Var = mu + alpha mu^2

fitted by maximum likelihood over (beta, alpha >= 0) with `mseval.stats.nb2_mle.fit_nb2`: joint
Newton on (beta, log theta) with step halving, alternating steps (R's `MASS::glm.nb` scheme) where
the Hessian is not negative definite, convergence declared on the Newton decrement (a gradient
criterion) at a negative definite Hessian, and the Poisson fit with alpha = 0 when that is the
maximum (the boundary; a note says so). This is the model of R's `glm.nb`; the live test in
tests/stats/test_count_model.py checks 1e-6 relative agreement against
`glm.nb(control = glm.control(epsilon = 1e-12, maxit = 500))` on random trials and on R's
`MASS::epil`, `MASS::quine` and `MASS::Insurance` (it runs where Rscript and MASS are installed;
CI installs them), and a stored R reference covers machines without R.

Standard errors: by default (`cov="expected"`) the Wald standard errors of beta come from the
expected (Fisher) information of the GLM at the fitted alpha, (X' W X)^-1 with
W = mu / (1 + alpha mu) -- what R's `summary(glm.nb(...))` reports. `cov="observed"` uses the
inverse Hessian of the full (beta, alpha) log-likelihood; the two differ slightly in finite samples.
`cov="robust"`: the patient-level sandwich (HC0) at the fitted alpha, A^-1 B A^-1 with A the observed
information of beta, X' diag(mu (1 + alpha y) / (1 + alpha mu)^2) X, and B = sum_i s_i s_i',
s_i = x_i (y_i - mu_i) / (1 + alpha mu_i): valid when the variance function
is wrong, e.g. treated arms more overdispersed than placebo (one alpha for all arms); equal to
statsmodels' GLM(NegativeBinomial(alpha)) with cov_type="HC0" (tested).

Every estimates table carries `estimable` and `note` (the shared rule of
`mseval.stats.estimability`): an arm without events has no finite rate ratio (its MLE is 0) and is
flagged, whatever number the optimiser stopped at. Rows with a missing value in a column the model
uses are dropped, counted (`n_dropped`) and named (`dropped_rows`, 1-based data rows) in the fit;
an error about a row names it as numbered in the data given (data rows from 1), also after rows were dropped.
A term without an estimate keeps only the reason (e.g. no events), not the optimiser's number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError, row_hint
from mseval.stats.estimability import flag_table
from mseval.stats.nb2_by_arm import NB2ByArmResult, fit_nb2_by_arm
from mseval.stats.nb2_mle import NB2Result, fit_nb2, inv_pd, nb2_sandwich, nb2_wald

DISPERSIONS = ("common", "by_arm")
"""NB2 dispersion models: one alpha for all rows, or one per arm (heterogeneous overdispersion)."""

_FORMULA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_FUNCTIONS = {"C", "np", "log", "exp", "I", "Treatment", "center", "standardize", "scale", "bs", "cr", "Q", "reference"}


def _formula_columns(formula: str) -> list[str]:
    rhs_lhs = re.sub(r"(['\"]).*?\1", " ", formula)  # drop quoted strings (e.g. reference='placebo')
    names = []
    for m in _FORMULA_NAME.finditer(rhs_lhs):
        name = m.group(0)
        after = rhs_lhs[m.end() : m.end() + 1]
        if after == "(" or name in _FUNCTIONS or name.split(".")[0] in {"np"}:
            continue
        names.append(name)
    return names


def check_formula(formula: str, data: pd.DataFrame, file: str | None = None) -> tuple[str, list[str]]:
    """Split `formula` into its response and the columns it uses; InputError for unknown columns."""
    if "~" not in formula:
        raise InputError(file, f"formula {formula!r} has no '~' (expected e.g. 'net2 ~ arm + age')", field="formula")
    lhs, rhs = formula.split("~", 1)
    response = lhs.strip()
    cols = _formula_columns(lhs) + _formula_columns(rhs)
    unknown = [c for c in dict.fromkeys(cols) if c not in data.columns]
    if unknown:
        raise InputError(file, f"formula names unknown column '{unknown[0]}' (columns: {', '.join(map(str, data.columns))})", field="formula")
    if response not in data.columns:
        raise InputError(file, f"response {response!r} must be a column", field="formula")
    return response, list(dict.fromkeys(cols))


@dataclass(frozen=True)
class CountModelFit:
    """A fitted NB2 model. `table`: one row per term (term, coef, se, rate_ratio, ci_low, ci_high,
    p_value, estimable, note); arm terms are named by the arm. `arm_means`: adjusted annualised
    rate per arm (marginal standardisation over the analysed patients), % reduction vs the
    reference, estimable, note. `alpha` = 0 with `boundary` True: the Poisson fit is the maximum."""

    table: pd.DataFrame
    arm_means: pd.DataFrame
    alpha: float
    alpha_se: float
    converged: bool
    n: int
    llf: float
    formula: str
    reference: str | None
    cov: str
    method: str
    notes: list[str] = field(default_factory=list)
    vcov: pd.DataFrame | None = None
    boundary: bool = False
    n_dropped: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    gradient_decrement: float = float("nan")
    iterations: int = 0
    design_info: Any = field(default=None, repr=False, compare=False)  # patsy design of the fit, for `predict`
    coef: np.ndarray | None = field(default=None, repr=False, compare=False)  # (k,) log-scale coefficients, intercept included
    offset_years: str | None = None
    arm_col: str = "arm"
    arm_categories: tuple[str, ...] = ()
    arm_counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per arm of the analysed rows: arm, n, events (sum of the response), exposure_years (sum of the offset column; NaN without one)."""
    dispersion: str = "common"
    alpha_by_arm: pd.DataFrame | None = None
    """dispersion "by_arm": arm, alpha, alpha_se, poisson_boundary per arm (alpha = the reference arm's)."""

    def rate_ratios(self) -> pd.DataFrame:
        """term, rate_ratio, ci_low, ci_high, p_value (the public contract) plus coef, se, estimable, note."""
        return self.table

    def rate_ratio(self, term: str) -> pd.Series:
        hit = self.table[self.table["term"] == term]
        if hit.empty:
            raise KeyError(f"no term {term!r}; terms: {', '.join(self.table['term'])}")
        return hit.iloc[0]

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def predict(self, data: pd.DataFrame) -> np.ndarray:
        """Fitted mean count (n,) of each row of new `data` (same columns as the fit; arms among the
        fitted ones), over the row's follow-up (offset column of the fit) or per year without one."""
        import patsy

        if self.design_info is None or self.coef is None:
            raise ValueError("this fit holds no design to predict from")
        df = data.copy()
        if self.arm_categories and self.arm_col in df:
            df[self.arm_col] = pd.Categorical(df[self.arm_col].astype(str), categories=list(self.arm_categories))
        offset = np.zeros(len(df))
        if self.offset_years is not None:
            offset = np.log(pd.to_numeric(df[self.offset_years]).to_numpy(dtype=float))
        (X,) = patsy.build_design_matrices([self.design_info], df)
        return np.exp(np.asarray(X) @ self.coef + offset)

    def model_info(self) -> dict[str, Any]:
        notes = list(self.notes)
        if self.boundary:
            notes.append("theta is infinite and alpha_se undefined at the Poisson boundary (written as null)")
        elif not np.isfinite(self.alpha_se):
            notes.append("alpha_se undefined (written as null)")
        return {
            "model": "negative binomial (NB2), log link, offset log(follow-up years)",
            "formula": self.formula, "reference": self.reference, "n": self.n, "n_dropped": self.n_dropped,
            "dropped_rows": list(self.dropped_rows), "alpha": self.alpha, "alpha_se": self.alpha_se,
            "theta": 1.0 / self.alpha if self.alpha > 0 else float("inf"), "boundary": self.boundary,
            "converged": self.converged, "convergence_criterion": "Newton decrement g'(-H)^-1 g < 1e-20 at a negative definite Hessian",
            "newton_decrement": self.gradient_decrement, "iterations": self.iterations, "log_likelihood": self.llf, "cov": self.cov,
            "optimizer": self.method, "notes": notes, "dispersion": self.dispersion,
            **({} if self.alpha_by_arm is None else {"alpha_by_arm": {r.arm: {"alpha": r.alpha, "alpha_se": r.alpha_se}
                                                                    for r in self.alpha_by_arm.itertuples()}}),
        }

    def summary(self) -> str:
        a = "alpha=0 (Poisson boundary)" if self.boundary else f"alpha={self.alpha:.3f}"
        lines = [f"NB2 regression: {self.formula} (n={self.n}, {a}, {'converged' if self.converged else 'NOT CONVERGED'}; {self.cov} information)"]
        if not self.arm_counts.empty:
            lines.append(f"  {'arm':28s} {'n':>6s} {'events':>8s} {'exposure (years)':>17s}")
            for r in self.arm_counts.itertuples():
                exposure = f"{r.exposure_years:17.2f}" if np.isfinite(r.exposure_years) else f"{'-':>17s}"
                ref = "  (reference)" if r.arm == self.reference else ""
                lines.append(f"  {r.arm:28s} {r.n:6d} {r.events:8d} {exposure}{ref}")
        for r in self.table.itertuples():
            if r.estimable:
                lines.append(f"  {r.term:28s} RR {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}  p={r.p_value:.3g}")
            else:
                lines.append(f"  {r.term:28s} not estimable: {r.note}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Prepared:
    df: pd.DataFrame
    response: str
    cols: list[str]
    dropped_rows: list[int]
    dropped_note: str
    rows: np.ndarray  # (n,) the data row (1-based, as given) of each kept row of `df`


def _prepare(data: pd.DataFrame, formula: str, arm_col: str, reference: str | None, file: str | None,
             extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str, list[str]]:
    p = _prepare_full(data, formula, arm_col, reference, file, extra)
    return p.df, p.response, p.cols


def _prepare_full(data: pd.DataFrame, formula: str, arm_col: str, reference: str | None, file: str | None,
                  extra: tuple[str, ...] = ()) -> _Prepared:
    """Check the formula and data; drop (and name) rows with a missing value in a used column."""
    response, cols = check_formula(formula, data, file)
    used = list(dict.fromkeys([*cols, *[c for c in extra if c]]))
    df = data.copy()
    raw_y = df[response]
    y = pd.to_numeric(raw_y, errors="coerce")
    bad = y.isna() & raw_y.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(file, f"response '{response}' must hold non-negative whole counts (got {_value(raw_y.iloc[i])!r}"
                         f"{_patient(data, i + 1)}){row_hint(file, i + 1)}",
                         row=i + 1, field=response)
    df[response] = y
    missing = df[used].isna().any(axis=1).to_numpy()
    dropped_rows = [int(i) + 1 for i in np.flatnonzero(missing)]
    rows = np.arange(1, len(df) + 1)[~missing]
    note = ""
    if dropped_rows:
        by_col = {c: int(df[c].isna().sum()) for c in used if df[c].isna().any()}
        ids = df.loc[missing, "patient_id"].astype(str).tolist() if "patient_id" in df else [f"row {r}" for r in dropped_rows]
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        note = (f"{len(dropped_rows)} of {len(df)} rows dropped for missing values "
                f"({', '.join(f'{c}: {k}' for c, k in by_col.items())}): {shown}")
        df = df.loc[~missing].reset_index(drop=True)
    if df.empty:
        raise InputError(file, "no rows left after dropping missing values", field=response)
    y = df[response].to_numpy(dtype=float)
    if (y < 0).any() or not np.allclose(y, np.round(y)):
        row = int(rows[np.flatnonzero((y < 0) | (np.abs(y - np.round(y)) > 1e-8))[0]])
        raise InputError(file, f"response '{response}' must hold non-negative whole counts (got {_value(data[response].iloc[row - 1])!r}"
                         f"{_patient(data, row)}){row_hint(file, row)}",
                         row=row, field=response)
    if (y == 0).all():
        raise InputError(file, f"all counts in '{response}' are zero: no rate ratio is estimable", field=response)
    if arm_col in cols:
        arms = list(pd.unique(df[arm_col].astype(str)))
        if len(arms) < 2:
            raise InputError(file, f"only one arm ({arms[0]!r}) in '{arm_col}': a rate ratio needs two", field=arm_col)
        ref = reference if reference is not None else sorted(arms)[0]
        if ref not in arms:
            from mseval.io.arm_names import closest

            near = closest(ref, arms)
            raise InputError(file, f"reference arm {ref!r} is not in '{arm_col}'" + (f"; did you mean {near!r}?" if near else "")
                             + f" (arms: {', '.join(sorted(arms))})", field=arm_col)
        order = [ref] + sorted(a for a in arms if a != ref)
        df[arm_col] = pd.Categorical(df[arm_col].astype(str), categories=order)
    return _Prepared(df, response, cols, dropped_rows, note, rows)


def _value(v: Any) -> Any:
    """A cell as Python shows it in a message (0.0, not np.float64(0.0))."""
    return v.item() if isinstance(v, np.generic) else v


def _patient(data: pd.DataFrame, row: int) -> str:
    """", patient P06" for data row `row` (1-based) when the table has a patient_id column, else ""."""
    return f", patient {data['patient_id'].iloc[row - 1]}" if "patient_id" in data.columns else ""


def _term_name(raw: str, arm_col: str) -> str:
    m = re.fullmatch(rf"{re.escape(arm_col)}\[T\.(.+)\]", raw)
    return m.group(1) if m else raw


_EVAL_FUNCS = {"np": np, "log": np.log, "exp": np.exp, "sqrt": np.sqrt}


def design(formula: str, df: pd.DataFrame, file: str | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Response (n,), design matrix (n, k) and patsy design info of `formula` on `df` (no missing values)."""
    import patsy

    env = patsy.EvalEnvironment([_EVAL_FUNCS])
    try:
        yd, Xd = patsy.dmatrices(formula, df, eval_env=env, NA_action="raise")
    except patsy.PatsyError as exc:
        raise InputError(file, f"cannot build the model from formula {formula!r}: {str(exc).splitlines()[0]}", field="formula") from None
    return np.asarray(yd, dtype=float)[:, 0], np.asarray(Xd, dtype=float), Xd.design_info


def _zero_event_terms(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(k,) bool: indicator (0/1) columns whose rows hold no event -- their rate ratio's MLE is 0."""
    ind = np.all((X == 0) | (X == 1), axis=0) & ~np.all(X == 1, axis=0)
    ev = (X * (y > 0)[:, None]).sum(axis=0)
    return ind & (ev == 0) & (X.sum(axis=0) > 0)


def fit_count_model(
    data: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    offset_years: str | None = "followup_years",
    reference: str | None = None,
    arm_col: str = "arm",
    cov: Literal["expected", "observed", "robust"] = "expected",
    maxiter: int = 500,
    file: str | None = None,
    adjusted_means: bool = True,
    dispersion: Literal["common", "by_arm"] = "common",
) -> CountModelFit:
    """Fit NB2 `formula` on `data` with offset log(data[offset_years]) (None: no offset).

    The reference arm is the comparator of every arm's rate ratio (default: first in sort order).
    Non-convergence and the Poisson boundary are reported (`converged`, `boundary`, notes), never
    hidden behind NaN. adjusted_means=False skips the marginal means (faster, for simulation loops).
    dispersion "by_arm": one NB2 dispersion per arm (`mseval.stats.nb2_by_arm`; `alpha_by_arm` holds
    them, `alpha` is the reference arm's); with it, cov "expected" is X' W X with each row's own alpha,
    "observed" the inverse observed information of the joint (beta, log alpha per arm) (R's glmmTMB),
    "robust" the sandwich at the arms' alphas.
    """
    if dispersion not in DISPERSIONS:
        raise InputError(file, f"unknown dispersion {dispersion!r} (choose one of {', '.join(DISPERSIONS)})", field="dispersion")
    if offset_years is not None and offset_years not in data.columns:
        raise InputError(file, f"offset column '{offset_years}' not found", field=offset_years)
    prep = _prepare_full(data, formula, arm_col, reference, file, extra=(offset_years,) if offset_years else ())
    df, response, cols = prep.df, prep.response, prep.cols
    notes: list[str] = [prep.dropped_note] if prep.dropped_note else []
    off: np.ndarray | float = 0.0
    if offset_years is not None:
        years = pd.to_numeric(df[offset_years], errors="coerce")
        if years.isna().any() or (years <= 0).any():
            row = int(prep.rows[np.flatnonzero((years.isna() | (years <= 0)).to_numpy())[0]])
            raise InputError(file, f"offset '{offset_years}' must be positive years (got {_value(data[offset_years].iloc[row - 1])!r}"
                             f"{_patient(data, row)}){row_hint(file, row)}",
                             row=row, field=offset_years)
        off = np.log(years.to_numpy(dtype=float))
    y, X, info = design(formula, df, file)
    k = X.shape[1]
    if np.linalg.matrix_rank(X) < k:
        raise InputError(file, "the negative binomial model could not be fitted (singular design: a term is constant or collinear)", field="formula")
    by_arm = None
    if dispersion == "by_arm":
        if arm_col not in cols:
            raise InputError(file, f"dispersion 'by_arm' needs the arm column '{arm_col}' in the formula", field="dispersion")
        res, by_arm = _fit_by_arm(y, X, off, df[arm_col], maxiter)
    else:
        res = fit_nb2(y, X, off, maxiter=maxiter)
    beta = res.beta
    alpha = float(res.alpha[0]) if by_arm is not None else float(res.alpha)  # by arm: the reference arm's
    names = [_term_name(n, arm_col) for n in info.column_names]
    if res.boundary:
        notes.append("the maximum likelihood is at the Poisson boundary (no overdispersion): alpha = 0, the Poisson fit is reported")
    if not res.converged:
        notes.append(f"the fit did not reach a verified maximum (Newton decrement {res.decrement:.3g} after {res.iterations} iterations); "
                     "estimates are the best found")
    V, ok_inv = _covariance(res, X, off, cov, y, None if by_arm is None else by_arm.row_alpha)
    if not ok_inv:
        notes.append("singular information matrix: pseudo-inverse used")
    se = np.sqrt(np.clip(np.diag(V)[:k], 0, None))
    z = stats.norm.ppf(0.975)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pvals = 2 * stats.norm.sf(np.abs(beta / se))
        rr, lo, hi = np.exp(beta), np.exp(beta - z * se), np.exp(beta + z * se)
    zero = _zero_event_terms(y, X)
    reasons = ["" for _ in names]
    for j in np.flatnonzero(zero):
        reasons[j] = "no events in this group: the rate ratio's maximum-likelihood estimate is 0 (not estimable)"
        notes.append(f"{names[j]!r} has no events: its rate ratio is not estimable (estimate at the boundary)")
    if arm_col in cols:
        ref_rows = (df[arm_col] == df[arm_col].cat.categories[0]).to_numpy()
        if y[ref_rows].sum() == 0:
            ref_name = df[arm_col].cat.categories[0]
            notes.append(f"the reference arm {ref_name!r} has no events: no rate ratio against it is estimable")
            for j, nm in enumerate(names):
                if nm in set(df[arm_col].cat.categories[1:]):
                    reasons[j] = f"the reference arm {ref_name!r} has no events: the rate ratio's maximum-likelihood estimate is infinite (not estimable)"
    table = pd.DataFrame({"term": names, "coef": beta, "se": se, "rate_ratio": rr, "ci_low": lo, "ci_high": hi, "p_value": pvals,
                          "estimable": [not r for r in reasons], "note": reasons})
    table["converged"] = res.converged
    table = flag_table(table, "rate_ratio", "ci_low", "ci_high", kind="ratio", converged="converged").drop(columns="converged")
    # a known reason (no events) says why; the optimiser's symptoms (an estimate of 1e-21, an infinite CI) add nothing
    table["note"] = [r or n for r, n in zip(reasons, table["note"])]
    ref = None
    arm_means = pd.DataFrame()
    arm_counts = pd.DataFrame()
    if arm_col in cols:
        cats = list(df[arm_col].cat.categories)
        ref = cats[0]
        arm_counts = _arm_counts(df, arm_col, y, years.to_numpy(dtype=float) if offset_years is not None else None)
        if adjusted_means:
            arm_means = _adjusted_means(info, beta, df, arm_col, cats, table, res.converged)
    table = table[table["term"] != "Intercept"].reset_index(drop=True)
    alpha_se = float("nan")
    if by_arm is not None:
        alpha_se = float(by_arm.table["alpha_se"].iloc[0])
        notes.append("dispersion by arm: " + ", ".join(f"{r.arm} alpha {r.alpha:.3g}" for r in by_arm.table.itertuples()))
    elif not res.boundary and cov is not None:
        Vfull, _ = inv_pd(-res.hessian)
        var_t = float(Vfull[k, k])
        alpha_se = float(alpha * np.sqrt(var_t)) if np.isfinite(var_t) and var_t >= 0 else float("nan")
    vcov = pd.DataFrame(V[:k, :k], index=names, columns=names)
    method = "Newton on (beta, log theta) with step halving; Poisson at the boundary" if not res.boundary else "Poisson (alpha = 0 boundary)"
    if by_arm is not None:
        method = "Newton on (beta, log theta per arm) with step halving; an arm's Poisson law at its boundary"
    return CountModelFit(table, arm_means, float(alpha), alpha_se, bool(res.converged), int(len(df)), float(res.llf), formula, ref, cov, method,
                         notes, vcov, bool(res.boundary), len(prep.dropped_rows), prep.dropped_rows, float(res.decrement), int(res.iterations),
                         design_info=info, coef=np.asarray(beta, dtype=float), offset_years=offset_years, arm_col=arm_col,
                         arm_categories=tuple(df[arm_col].cat.categories) if arm_col in cols else (), arm_counts=arm_counts,
                         dispersion=dispersion, alpha_by_arm=None if by_arm is None else by_arm.table)


@dataclass(frozen=True)
class _ByArm:
    table: pd.DataFrame  # arm, alpha, alpha_se (delta method from gamma = log alpha), poisson_boundary
    row_alpha: np.ndarray  # (n,) each row's arm's alpha


def _fit_by_arm(y: np.ndarray, X: np.ndarray, off: np.ndarray | float, arm: pd.Series, maxiter: int) -> tuple[NB2ByArmResult, _ByArm]:
    """The NB2 fit with one dispersion per arm (categories order) and its per-arm table."""
    codes = arm.cat.codes.to_numpy()
    res = fit_nb2_by_arm(y, X, codes, off, maxiter=maxiter)
    gse = res.gamma_se()
    table = pd.DataFrame({"arm": [str(a) for a in arm.cat.categories], "alpha": res.alpha, "alpha_se": res.alpha * gse,
                          "poisson_boundary": res.poisson_groups})
    return res, _ByArm(table, res.alpha[codes])


def _arm_counts(df: pd.DataFrame, arm_col: str, y: np.ndarray, years: np.ndarray | None) -> pd.DataFrame:
    """arm, n, events, exposure_years per arm (categories order, reference first) of the analysed rows."""
    rows = []
    for arm in df[arm_col].cat.categories:
        sel = (df[arm_col] == arm).to_numpy()
        rows.append({"arm": str(arm), "n": int(sel.sum()), "events": int(round(float(y[sel].sum()))),
                     "exposure_years": float(years[sel].sum()) if years is not None else float("nan")})
    return pd.DataFrame(rows)


def _covariance(res: NB2Result | NB2ByArmResult, X: np.ndarray, off: np.ndarray | float, cov: str, y: np.ndarray,
                row_alpha: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """(k, k) covariance of beta: `cov` as in `fit_count_model`; row_alpha (n,): each row's dispersion (by arm)."""
    k = X.shape[1]
    if cov == "observed":
        V, ok = inv_pd(-res.hessian)
        return V[:k, :k], ok
    a = res.alpha if row_alpha is None else row_alpha
    wald = nb2_wald(X, off, res.beta, a)
    if cov == "robust":
        return nb2_sandwich(y, X, wald.mu, a)
    return wald.vcov, wald.ok


def _adjusted_means(info: Any, beta: np.ndarray, df: pd.DataFrame, arm_col: str, arms: list[str], table: pd.DataFrame,
                    converged: bool) -> pd.DataFrame:
    """Adjusted annualised rate per arm: every analysed patient predicted under the arm (1 year)."""
    import patsy

    flags = table.set_index("term")
    rows = []
    for arm in arms:
        alt = df.copy()
        alt[arm_col] = pd.Categorical([arm] * len(df), categories=arms)
        (Xa,) = patsy.build_design_matrices([info], alt)
        with np.errstate(over="ignore"):
            rate = float(np.mean(np.exp(np.asarray(Xa) @ beta)))
        ok, note = True, ""
        if arm in flags.index and not bool(flags.loc[arm, "estimable"]):
            ok, note = False, f"the rate ratio of {arm!r} vs the reference is not estimable ({flags.loc[arm, 'note']})"
        elif not converged:
            ok, note = False, "the fit did not converge"
        rows.append({"arm": arm, "adjusted_rate_per_year": rate, "estimable": ok, "note": note})
    out = pd.DataFrame(rows)
    ref_rate = out["adjusted_rate_per_year"].iloc[0]
    out["reduction_pct"] = 100.0 * (1.0 - out["adjusted_rate_per_year"] / ref_rate)
    return out[["arm", "adjusted_rate_per_year", "reduction_pct", "estimable", "note"]]


@dataclass(frozen=True)
class BootstrapRateRatios:
    """Patient-level bootstrap of every term's rate ratio: `table` (term, rate_ratio, ci_low,
    ci_high, se_log, method, replicates, n_failed, n_boundary, estimable, note), the replicate log
    rate ratios (B, K) in `replicates` (NaN where that term failed in that replicate) and `failed`,
    the number of replicates whose fit did not reach a verified maximum (every term failed)."""

    table: pd.DataFrame
    replicates: np.ndarray
    failed: int

    def to_frame(self) -> pd.DataFrame:
        return self.table


def bootstrap_rate_ratios(
    data: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    reference: str | None = None,
    offset_years: str | None = "followup_years",
    n_resamples: int = 2000,
    seed: int = 0,
    arm_col: str = "arm",
    workers: int = 1,
) -> BootstrapRateRatios:
    """Percentile CIs of the NB2 rate ratios from `n_resamples` patient resamples (with replacement).

    Each replicate refits the full NB2 likelihood with `fit_nb2` (warm-started at the full-data
    estimate). A replicate at the Poisson boundary (alpha = 0) is a valid estimate and is kept
    (`n_boundary` counts them). A term is failed in a replicate when its group is absent or has no
    events in that resample (its MLE does not exist); a replicate whose fit does not reach a
    verified maximum fails for every term. Failures are counted per term (`n_failed`) and the
    percentiles use that term's remaining replicates, so one degenerate arm never erases the
    others' intervals; a term failing in more than 5% of replicates is flagged (`estimable` False:
    the interval would condition on the resamples where it exists). Percentile rather than BCa: BCa
    would add one jackknife refit per patient. Replicates come in fixed chunks with seeds derived
    from (seed, chunk), so the result is the same for any number of `workers` (processes)."""
    if offset_years is not None and offset_years not in data.columns:
        raise InputError(None, f"offset column '{offset_years}' not found", field=offset_years)
    prep = _prepare_full(data, formula, arm_col, reference, None, extra=(offset_years,) if offset_years else ())
    df = prep.df
    offset = np.log(df[offset_years].to_numpy(dtype=float)) if offset_years else None
    y, X, info = design(formula, df)
    names = [_term_name(n, arm_col) for n in info.column_names]
    full = fit_nb2(y, X, 0.0 if offset is None else offset)
    start0 = np.append(full.beta, full.alpha)
    n = len(y)
    chunks = [(y, X, offset, start0, seed, k, min(_CHUNK, n_resamples - k * _CHUNK)) for k in range((n_resamples + _CHUNK - 1) // _CHUNK)]
    if workers > 1 and len(chunks) > 1:
        from mseval.parallel import process_pool

        with process_pool(workers) as pool:
            parts = list(pool.map(_bootstrap_chunk, chunks))
    else:
        parts = [_bootstrap_chunk(c) for c in chunks]
    R = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, X.shape[1]))
    failed = int(sum(p[1] for p in parts))
    n_boundary = int(sum(p[2] for p in parts))
    keep = [k for k, nm in enumerate(names) if nm != "Intercept"]
    zero_full = _zero_event_terms(y, X)
    rows = []
    for j in keep:
        col = R[:, j]
        ok = np.isfinite(col)
        n_fail = int((~ok).sum())
        lo = hi = se_log = float("nan")
        if ok.sum() >= 2:
            lo, hi = np.percentile(col[ok], [2.5, 97.5])
            se_log = float(col[ok].std(ddof=1))
        reasons = []
        if zero_full[j]:
            reasons.append("no events in this group: the rate ratio's maximum-likelihood estimate is 0 (not estimable)")
        if n_fail > 0.05 * max(len(col), 1):
            reasons.append(f"{n_fail} of {len(col)} replicates failed for this term (group absent or without events, or fit failed); "
                           "the interval would condition on the others")
        note = "; ".join(reasons) if reasons else (f"{n_fail} of {len(col)} replicates failed for this term and were left out" if n_fail else "")
        rows.append({"term": names[j], "rate_ratio": float(np.exp(full.beta[j])), "ci_low": float(np.exp(lo)), "ci_high": float(np.exp(hi)),
                     "se_log": se_log, "method": "percentile", "replicates": int(ok.sum()), "n_failed": n_fail, "n_boundary": n_boundary,
                     "estimable": not reasons, "note": note})
    table = flag_table(pd.DataFrame(rows), "rate_ratio", "ci_low", "ci_high", kind="ratio")
    if not full.converged:
        table["estimable"] = False
        table["note"] = [("; ".join(filter(None, [nt, "the full-data fit did not reach a verified maximum"]))) for nt in table["note"]]
    return BootstrapRateRatios(table, R[:, keep], failed)


_CHUNK = 250


def nb2_newton(
    y: np.ndarray, X: np.ndarray, offset: np.ndarray | None, beta: np.ndarray, alpha: float, *, tol: float = 1e-20, maxiter: int = 200
) -> tuple[np.ndarray, float, bool]:
    """(beta, alpha, converged) of the NB2 MLE from a warm start: `mseval.stats.nb2_mle.fit_nb2`
    (kept under this name for callers; alpha = 0 at the Poisson boundary)."""
    r = fit_nb2(y, X, 0.0 if offset is None else offset, beta0=np.asarray(beta, dtype=float), alpha0=alpha, tol=tol, maxiter=maxiter)
    return r.beta, r.alpha, r.converged


def _bootstrap_chunk(args: tuple) -> tuple[np.ndarray, int, int]:
    """Replicates (size, k) of beta (NaN where a term failed), fits failed, fits at the Poisson boundary."""
    y, X, offset, start0, seed, chunk, size = args
    k = X.shape[1]
    rng = np.random.default_rng([seed, chunk])
    n = len(y)
    out = np.full((size, k), np.nan)
    failed = boundary = 0
    interior = start0[k] > 0
    for b in range(size):
        idx = rng.integers(0, n, n)
        Xb, yb = X[idx], y[idx]
        ob = None if offset is None else offset[idx]
        zero = _zero_event_terms(yb, Xb)
        if zero.any():  # their rows contribute nothing at the MLE (rate -> 0): leave rows and term out
            rows = ~np.any(Xb[:, zero] == 1, axis=1)
            Xb, yb, ob = Xb[rows], yb[rows], None if ob is None else ob[rows]
        cols = np.flatnonzero(np.any(Xb != 0, axis=0) & ~zero)
        if cols.size == 0 or yb.sum() == 0:
            failed += 1
            continue
        Xs = Xb[:, cols]
        with np.errstate(all="ignore"):
            r = fit_nb2(yb, Xs, 0.0 if ob is None else ob, beta0=start0[cols], alpha0=float(start0[k]), check_boundary=not interior)
        if r.converged and np.all(np.isfinite(r.beta)):
            out[b, cols] = r.beta
            boundary += int(r.boundary)
        else:
            failed += 1
    return out, failed, boundary


def __getattr__(name: str) -> Any:
    """`fit_lesion_free` and its result lived here before `mseval.stats.lesion_free`: still importable from here."""
    if name in ("fit_lesion_free", "LesionFreeFit", "LogitFit"):
        from mseval.stats import lesion_free

        return getattr(lesion_free, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BootstrapRateRatios", "CountModelFit", "LesionFreeFit", "LogitFit", "bootstrap_rate_ratios", "check_formula", "design",
           "fit_count_model", "fit_lesion_free", "nb2_newton"]
