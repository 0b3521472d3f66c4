"""Negative binomial (NB2) regression of lesion counts, the primary analysis of RRMS MRI trials.

    log E[count_i] = x_i' beta + log(follow-up years_i),   Var = mu + alpha mu^2

fitted by maximum likelihood over (beta, alpha) with statsmodels' discrete `NegativeBinomial`
(which estimates alpha; the GLM family would need it fixed). This is the model of R's
`MASS::glm.nb`: point estimates agree to optimiser tolerance (tests/stats/test_count_model.py
checks 1e-5 relative against R output stored in tests/stats/data/).

Standard errors: by default (`cov="expected"`) the Wald standard errors of beta come from the
expected (Fisher) information of the GLM at the fitted alpha, (X' W X)^-1 with
W = mu / (1 + alpha mu) -- what R's `summary(glm.nb(...))` reports. `cov="observed"` uses the
inverse Hessian of the full (beta, alpha) log-likelihood (statsmodels' default); the two differ
slightly in finite samples.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from mseval.errors import InputError

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
    p_value); arm terms are named by the arm. `arm_means`: adjusted annualised rate per arm
    (marginal standardisation over the analysed patients) and % reduction vs the reference."""

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
    result: Any = field(default=None, repr=False, compare=False)  # the statsmodels results, for `predict`
    offset_years: str | None = None

    def rate_ratios(self) -> pd.DataFrame:
        """term, rate_ratio, ci_low, ci_high, p_value (the public contract) plus coef and se."""
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
        if self.result is None:
            raise ValueError("this fit holds no statsmodels results to predict from")
        df = data.copy()
        offset = np.zeros(len(df))
        if self.offset_years is not None:
            offset = np.log(pd.to_numeric(df[self.offset_years]).to_numpy(dtype=float))
        return np.asarray(self.result.predict(df, offset=offset), dtype=float)

    def model_info(self) -> dict[str, Any]:
        return {
            "model": "negative binomial (NB2), log link, offset log(follow-up years)",
            "formula": self.formula, "reference": self.reference, "n": self.n, "alpha": self.alpha,
            "alpha_se": self.alpha_se, "theta": 1.0 / self.alpha if self.alpha > 0 else float("inf"),
            "converged": self.converged, "log_likelihood": self.llf, "cov": self.cov,
            "optimizer": self.method, "notes": list(self.notes),
        }

    def summary(self) -> str:
        lines = [f"NB2 regression: {self.formula} (n={self.n}, alpha={self.alpha:.3f}, {'converged' if self.converged else 'NOT CONVERGED'}; {self.cov} information)"]
        for r in self.table.itertuples():
            lines.append(f"  {r.term:28s} RR {r.rate_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}  p={r.p_value:.3g}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _prepare(data: pd.DataFrame, formula: str, arm_col: str, reference: str | None, file: str | None) -> tuple[pd.DataFrame, str, list[str]]:
    response, cols = check_formula(formula, data, file)
    df = data.copy()
    y = pd.to_numeric(df[response], errors="coerce")
    if y.isna().any() or (y < 0).any() or not np.allclose(y, np.round(y)):
        raise InputError(file, f"response '{response}' must hold non-negative whole counts", field=response)
    if (y == 0).all():
        raise InputError(file, f"all counts in '{response}' are zero: no rate ratio is estimable", field=response)
    if arm_col in cols:
        arms = list(pd.unique(df[arm_col].astype(str)))
        if len(arms) < 2:
            raise InputError(file, f"only one arm ({arms[0]!r}) in '{arm_col}': a rate ratio needs two", field=arm_col)
        ref = reference if reference is not None else sorted(arms)[0]
        if ref not in arms:
            raise InputError(file, f"reference arm {ref!r} is not in '{arm_col}' ({', '.join(sorted(arms))})", field=arm_col)
        order = [ref] + sorted(a for a in arms if a != ref)
        df[arm_col] = pd.Categorical(df[arm_col].astype(str), categories=order)
    return df, response, cols


def _term_name(raw: str, arm_col: str) -> str:
    m = re.fullmatch(rf"{re.escape(arm_col)}\[T\.(.+)\]", raw)
    return m.group(1) if m else raw


def fit_count_model(
    data: pd.DataFrame,
    formula: str = "net2 ~ arm",
    *,
    offset_years: str | None = "followup_years",
    reference: str | None = None,
    arm_col: str = "arm",
    cov: Literal["expected", "observed"] = "expected",
    maxiter: int = 500,
    file: str | None = None,
    adjusted_means: bool = True,
) -> CountModelFit:
    """Fit NB2 `formula` on `data` with offset log(data[offset_years]) (None: no offset).

    The reference arm is the comparator of every arm's rate ratio (default: first in sort order).
    Non-convergence is reported (`converged=False`, a note), never hidden behind NaN.
    adjusted_means=False skips the marginal means (faster, for simulation loops).
    """
    from statsmodels.discrete.discrete_model import NegativeBinomial

    df, response, cols = _prepare(data, formula, arm_col, reference, file)
    if offset_years is not None:
        if offset_years not in df.columns:
            raise InputError(file, f"offset column '{offset_years}' not found", field=offset_years)
        years = pd.to_numeric(df[offset_years], errors="coerce")
        if years.isna().any() or (years <= 0).any():
            raise InputError(file, f"offset '{offset_years}' must be positive years", field=offset_years)
        df["_log_years"] = np.log(years.to_numpy(dtype=float))
    used = [c for c in cols if c in df.columns] + (["_log_years"] if offset_years else [])
    df = df.dropna(subset=used).reset_index(drop=True)
    kwargs = {"offset": df["_log_years"].to_numpy()} if offset_years else {}
    notes: list[str] = []
    model = NegativeBinomial.from_formula(formula, df, loglike_method="nb2", **kwargs)
    res, method, converged = None, "", False
    for method in ("newton", "bfgs", "nm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if method == "nm":
                    cand = model.fit(method="nm", maxiter=20 * maxiter, disp=0)
                elif method == "newton":
                    cand = model.fit(method="newton", maxiter=maxiter, disp=0, tol=1e-10)
                else:
                    cand = model.fit(method="bfgs", maxiter=maxiter, disp=0, gtol=1e-10)
            except (np.linalg.LinAlgError, ValueError, OverflowError):
                continue
        ok = bool(cand.mle_retvals.get("converged", False)) and np.all(np.isfinite(cand.params))
        if res is None or (np.isfinite(cand.llf) and cand.llf > res.llf + 1e-9) or ok:
            res = cand
        if ok:
            converged = True
            break
    if res is None:
        raise InputError(file, "the negative binomial model could not be fitted (singular design?)", field="formula")
    if not converged:
        notes.append(f"optimiser did not converge (last tried: {method}); estimates are the best found")
    names = list(res.params.index)
    beta_names = [n for n in names if n != "alpha"]
    beta = res.params[beta_names].to_numpy(dtype=float)
    alpha = float(res.params["alpha"])
    X = model.exog
    if cov == "expected":
        mu = np.exp(X @ beta + (kwargs["offset"] if kwargs else 0.0))
        w = mu / (1.0 + alpha * mu)
        info = X.T @ (X * w[:, None])
        try:
            V = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            V = np.linalg.pinv(info)
            notes.append("singular information matrix: pseudo-inverse used")
    else:
        try:
            V = res.cov_params().loc[beta_names, beta_names].to_numpy(dtype=float)
        except ValueError:
            raise InputError(file, f"no observed information after the {method} optimiser; use cov='expected'", field="cov") from None
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    z = stats.norm.ppf(0.975)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pvals = 2 * stats.norm.sf(np.abs(beta / se))
    with np.errstate(over="ignore"):
        rr, lo, hi = np.exp(beta), np.exp(beta - z * se), np.exp(beta + z * se)
    table = pd.DataFrame(
        {
            "term": [_term_name(n, arm_col) for n in beta_names],
            "coef": beta,
            "se": se,
            "rate_ratio": rr,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": pvals,
        }
    )
    ref = None
    arm_means = pd.DataFrame()
    if arm_col in cols:
        cats = list(df[arm_col].cat.categories)
        ref = cats[0]
        y = df[response].to_numpy(dtype=float)
        for arm in cats[1:]:
            if y[(df[arm_col] == arm).to_numpy()].sum() == 0:
                notes.append(f"arm {arm!r} has no events: its rate ratio is not estimable (estimate at the boundary)")
        if adjusted_means:
            arm_means = _adjusted_means(model, res, df, arm_col, cats, beta_names)
    table = table[table["term"] != "Intercept"].reset_index(drop=True)
    try:
        alpha_var = float(res.cov_params().loc["alpha", "alpha"])
    except ValueError:  # no Hessian-based covariance (e.g. Nelder-Mead)
        alpha_var = float("nan")
    alpha_se = float(np.sqrt(alpha_var)) if np.isfinite(alpha_var) and alpha_var >= 0 else float("nan")
    vcov = pd.DataFrame(V, index=[_term_name(n, arm_col) for n in beta_names], columns=[_term_name(n, arm_col) for n in beta_names])
    return CountModelFit(table, arm_means, alpha, alpha_se, converged, int(len(df)), float(res.llf), formula, ref, cov, method, notes, vcov,
                         result=res, offset_years=offset_years)


def _adjusted_means(model: Any, res: Any, df: pd.DataFrame, arm_col: str, arms: list[str], beta_names: list[str]) -> pd.DataFrame:
    """Adjusted annualised rate per arm: every analysed patient predicted under the arm (1 year)."""
    rows = []
    for arm in arms:
        alt = df.copy()
        alt[arm_col] = pd.Categorical([arm] * len(df), categories=arms)
        pred = res.predict(alt, offset=np.zeros(len(alt)))
        rows.append({"arm": arm, "adjusted_rate_per_year": float(np.mean(pred))})
    out = pd.DataFrame(rows)
    ref_rate = out["adjusted_rate_per_year"].iloc[0]
    out["reduction_pct"] = 100.0 * (1.0 - out["adjusted_rate_per_year"] / ref_rate)
    return out


@dataclass(frozen=True)
class LogitFit:
    """Logistic regression of being free of NET2 lesions: odds ratios vs the reference arm."""

    table: pd.DataFrame
    proportions: pd.DataFrame
    converged: bool
    n: int

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Logistic regression of lesion-free status (n={self.n})"]
        for r in self.table.itertuples():
            lines.append(f"  {r.term:28s} OR {r.odds_ratio:8.3f}  95% CI {r.ci_low:8.3f} to {r.ci_high:8.3f}  p={r.p_value:.3g}")
        return "\n".join(lines)


def fit_lesion_free(
    data: pd.DataFrame, response: str = "net2", rhs: str = "arm", *, reference: str | None = None, arm_col: str = "arm", file: str | None = None
) -> LogitFit:
    """Odds ratios of being free of lesions (`response == 0`) by arm (+ covariates in `rhs`)."""
    import statsmodels.formula.api as smf

    df, _, _ = _prepare(data, f"{response} ~ {rhs}", arm_col, reference, file)
    df["_lesion_free"] = (df[response].to_numpy(dtype=float) == 0).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = smf.logit(f"_lesion_free ~ {rhs}", df).fit(disp=0, maxiter=200)
    ci = res.conf_int()
    table = pd.DataFrame(
        {
            "term": [_term_name(n, arm_col) for n in res.params.index],
            "odds_ratio": np.exp(res.params.to_numpy()),
            "ci_low": np.exp(ci[0].to_numpy()),
            "ci_high": np.exp(ci[1].to_numpy()),
            "p_value": res.pvalues.to_numpy(),
        }
    )
    table = table[table["term"] != "Intercept"].reset_index(drop=True)
    props = df.groupby(arm_col, observed=True)["_lesion_free"].agg(["mean", "size"]).reset_index()
    props.columns = ["arm", "lesion_free_pct", "n"]
    props["lesion_free_pct"] *= 100.0
    return LogitFit(table, props, bool(res.mle_retvals.get("converged", True)), int(len(df)))


@dataclass(frozen=True)
class BootstrapRateRatios:
    """Patient-level bootstrap of every term's rate ratio: `table` (term, rate_ratio, ci_low,
    ci_high, se_log, method), and the replicate log rate ratios (B, K) in `replicates`."""

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

    Each replicate refits the full NB2 likelihood (Newton, warm-started at the full-data estimate);
    replicates whose fit fails are dropped and counted in `failed`. Percentile rather than BCa: BCa
    would add one jackknife refit per patient. Replicates come in fixed chunks with seeds derived
    from (seed, chunk), so the result is the same for any number of `workers` (processes)."""
    from statsmodels.discrete.discrete_model import NegativeBinomial

    df, _, _ = _prepare(data, formula, arm_col, reference, None)
    offset = np.log(df[offset_years].to_numpy(dtype=float)) if offset_years else None
    base = NegativeBinomial.from_formula(formula, df, loglike_method="nb2", **({"offset": offset} if offset is not None else {}))
    y, X = base.endog, base.exog
    names = [_term_name(n, arm_col) for n in base.exog_names[: X.shape[1]]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start0 = np.asarray(base.fit(method="newton", disp=0, maxiter=200).params)
    n = len(y)
    chunks = [(y, X, offset, start0, seed, k, min(_CHUNK, n_resamples - k * _CHUNK)) for k in range((n_resamples + _CHUNK - 1) // _CHUNK)]
    if workers > 1 and len(chunks) > 1:
        import concurrent.futures as cf

        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_bootstrap_chunk, chunks))
    else:
        parts = [_bootstrap_chunk(c) for c in chunks]
    reps = [r for p, _ in parts for r in p]
    failed = sum(f for _, f in parts)
    R = np.array(reps)
    keep = [k for k, nm in enumerate(names) if nm != "Intercept"]
    lo, hi = np.percentile(R[:, keep], [2.5, 97.5], axis=0) if len(R) else (np.full(len(keep), np.nan),) * 2
    table = pd.DataFrame({
        "term": [names[k] for k in keep], "rate_ratio": np.exp(start0[keep]), "ci_low": np.exp(lo), "ci_high": np.exp(hi),
        "se_log": R[:, keep].std(axis=0, ddof=1) if len(R) > 1 else np.nan, "method": "percentile", "replicates": len(R),
    })
    return BootstrapRateRatios(table, R[:, keep] if len(R) else R, failed)


_CHUNK = 250


def nb2_newton(
    y: np.ndarray, X: np.ndarray, offset: np.ndarray | None, beta: np.ndarray, alpha: float, *, tol: float = 1e-9, maxiter: int = 100
) -> tuple[np.ndarray, float, bool]:
    """Maximum likelihood of the NB2 model by alternating Fisher scoring for beta (at fixed alpha)
    and Newton steps for log(1/alpha) (at fixed beta) -- the scheme of R's glm.nb -- from a warm
    start. A lean inner loop for bootstrap replicates; `fit_count_model` (statsmodels) stays the
    primary fitter, and tests/stats/test_count_model.py checks the two agree."""
    from scipy.special import digamma, polygamma

    off = 0.0 if offset is None else offset
    beta = np.asarray(beta, dtype=float).copy()
    log_r = -np.log(max(alpha, 1e-8))
    for _ in range(maxiter):
        r = np.exp(log_r)
        eta = X @ beta + off
        mu = np.exp(np.clip(eta, -30, 30))
        w = mu / (1.0 + mu / r)
        z = (y - mu) / mu
        try:
            step = np.linalg.solve(X.T @ (X * w[:, None]), X.T @ (w * z))
        except np.linalg.LinAlgError:
            return beta, float(1.0 / r), False
        beta = beta + step
        mu = np.exp(np.clip(X @ beta + off, -30, 30))
        score = np.sum(digamma(y + r) - digamma(r) + np.log(r / (r + mu)) + (mu - y) / (r + mu))
        hess = np.sum(polygamma(1, y + r) - polygamma(1, r) + 1.0 / r - 2.0 / (r + mu) + (y + r) / (r + mu) ** 2)
        g, h = score * r, hess * r * r + score * r  # derivatives with respect to log r
        d_log_r = -g / h if h < 0 else np.sign(g) * 0.5
        log_r = float(np.clip(log_r + np.clip(d_log_r, -2.0, 2.0), -20.0, 20.0))
        if np.max(np.abs(step)) < tol and abs(d_log_r) < tol:
            return beta, float(np.exp(-log_r)), True
    return beta, float(np.exp(-log_r)), False


def _bootstrap_chunk(args: tuple) -> tuple[list[np.ndarray], int]:
    y, X, offset, start0, seed, chunk, size = args
    k = X.shape[1]
    rng = np.random.default_rng([seed, chunk])
    n = len(y)
    reps, failed = [], 0
    for _ in range(size):
        idx = rng.integers(0, n, n)
        with np.errstate(all="ignore"):
            beta, _, ok = nb2_newton(y[idx], X[idx], None if offset is None else offset[idx], start0[:k], float(start0[k]))
        if ok and np.all(np.isfinite(beta)):
            reps.append(beta)
        else:
            failed += 1
    return reps, failed
