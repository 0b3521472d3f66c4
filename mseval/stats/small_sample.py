"""Primary tests of each arm vs the reference for the NB2 count model, for small trials.

Model (as `mseval.stats.count_model.fit_count_model`): y_i ~ NB2(mu_i, alpha),
log mu_i = x_i' beta + log(follow-up years_i), x_i = arm indicators + the SAP's covariates
(site, baseline Gd+ 0 vs >= 1, log T2 volume, ...). The estimand of every test and interval is the
arm's coefficient beta_j: the log rate ratio of arm j vs the reference, conditional on the covariates
in the model (for a randomized trial with a constant multiplicative effect, the same number as the
marginal rate ratio). A test of arm j compares the full model with the null model in which arm j is
merged into the reference (its indicator dropped); the other arms keep their own terms.

Methods (`method`), each with its interval:

- ``wald``: z = b / se (expected information at the fitted alpha, as `summary(glm.nb)`), N(0, 1);
  CI b +/- z se.
- ``t``: the same statistic against t with n - k degrees of freedom (k regression coefficients);
  CI b +/- t se.
- ``lrt``: 2 (l1 - l0), alpha re-estimated under the null (R's `anova(m0, m1)` on `glm.nb` fits),
  chi2(1); CI: the profile likelihood interval {b: 2 (l1 - l_p(b)) <= chi2_1(0.95)}.
- ``lrt_f``: the LRT against F(1, n - k) (a Bartlett-type small-sample calibration); profile
  interval with the F critical value.
- ``bootstrap_lrt``: the LRT calibrated by a parametric bootstrap from the null fit (B draws
  NB2(mu0, alpha0), each refitted under both models); the profile interval uses the bootstrap
  0.95-quantile of the LRT as its critical value.
- ``permutation``: a randomization test. Statistic: the efficient score statistic for beta_j at the
  null fit, U^2 / V (U = sum d_i (y_i - mu_i) / (1 + alpha mu_i), V its efficient variance after
  the nuisance terms); its reference distribution permutes the arm-j / reference labels (within
  `strata` when given) `n_permutations` times; p = (1 + #{T* >= T}) / (1 + B). The score statistic
  needs no refit per permutation (vectorised). CI: the test inverted: {b: the permutation score
  test of beta_j = b (offset b d_i, the dispersion of the b = 0 null fit, the same permutations)
  does not reject}; at b = 0 it is the primary test, so the CI excludes 1 when p <= 0.05.

- ``bootstrap_t``: the studentized (bootstrap-t) interval: patients resampled with replacement within
  their arm (and stratum) `n_bootstrap` times, each resample refitted once (the same model and dispersion
  choice; one set of resamples for every arm's contrast, `bootstrap_t_replicates`), t* = (b* - b) / se*, se the patient-level sandwich SE (the pivot must be consistent when the
  NB2 law is not); CI [b - t*_(0.975) se, b - t*_(0.025) se]; p the equal-tailed test that is the CI's
  dual, p = min(1, 2 min((1 + #{t* <= t}) / (1 + B), (1 + #{t* >= t}) / (1 + B))), t = b / se, so the CI
  excludes 1 exactly when p <= 0.05 up to the Monte Carlo discreteness (the symmetric
  (1 + #{|t*| >= |t|}) / (1 + B) is kept in `p_value_symmetric`). Nonparametric in the patients' counts, so it
  carries arm-specific overdispersion and heavy tails that the NB2 SE misses; use B >= 999 for a CI. The
  interval `mseval effects` reports for the observed rate ratios below 1,000 per arm (`mseval.stats.observed_ci`;
  validated in bench/RESULTS.md, rules R15-R16). Not yet offered by the SAP (`sap.schema.SMALL_SAMPLE_TESTS_AVAILABLE`)
  until validated on its benches.

Null hypotheses differ: the model-based tests (wald, t, lrt, lrt_f, bootstrap_lrt) test equal
adjusted mean rates within the NB2 model (beta_j = 0; the NB2 law and its common dispersion assumed);
the permutation test tests the sharp null that the arm changes no patient's count, and has exact
level (<= alpha for any B, up to the MC discreteness) under complete or within-stratum randomization;
it is not exact for "equal means, different dispersion" nulls.

Rule the SAP uses (`recommended_test`): fewer than 1,000 patients in the smallest compared arm ->
``permutation``; otherwise ``wald``. Chosen below 30 on tuning seeds and validated on fresh seeds by
bench/validity_stest.py (bench/RESULTS.md, section "Small-sample primary test"); raised from 30 to 1,000 by
rule R10 (the adjusted Wald test liberal at 30 and 100 per arm, 7.0% / 7.6%; the permutation CI covering
95.6% / 95.2% there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mseval.errors import InputError
from mseval.stats.count_model import _prepare_full, design
from mseval.stats.estimability import assess_ratio
from mseval.stats.nb2_by_arm import NB2ByArmResult, fit_beta_fixed_dispersions, fit_nb2_by_arm
from mseval.stats.nb2_mle import NB2Result, fit_nb2, inv_pd, nb2_sandwich, nb2_wald

METHODS = ("wald", "t", "lrt", "lrt_f", "bootstrap_lrt", "permutation", "bootstrap_t")
SMALL_SAMPLE_N = 1000

_NULL_MODEL = ("equal adjusted mean rates: beta_arm = 0 in the NB2 model with the other terms (NB2 law, common dispersion assumed)")
_NULL_SHARP = ("sharp null: the arm changes no patient's count (labels of arm and reference patients exchangeable within strata); "
               "exact under randomization, not for equal means with unequal dispersion")
_CI_METHOD = {"wald": "Wald, normal", "t": "Wald, t(n - k)", "lrt": "profile likelihood, chi2(1)", "lrt_f": "profile likelihood, F(1, n - k)",
              "bootstrap_lrt": "profile likelihood, parametric-bootstrap critical value", "permutation": "inverted permutation score test",
              "bootstrap_t": "studentized bootstrap, patients resampled within arms (and strata)"}


def recommended_test(n_per_arm_min: int) -> str:
    """The SAP's small-sample rule: `permutation` when the smallest compared arm has fewer than
    `SMALL_SAMPLE_N` (1,000) patients, else `wald` (bench/RESULTS.md, "Small-sample primary test", rule R10)."""
    return "permutation" if n_per_arm_min < SMALL_SAMPLE_N else "wald"


@dataclass(frozen=True)
class SmallSampleResult:
    """`table`: one row per compared arm: arm, rate_ratio, ci_low, ci_high, ci_method, statistic, df,
    p_value, method, null_hypothesis, n, k (regression coefficients), n_permutations (B of the
    Monte Carlo tests, 0 otherwise), estimable, note; with bootstrap_t also p_value_symmetric (the symmetric
    bootstrap-t p; p_value is the equal-tailed one, the CI's dual). The p-value and statistic of a test are shown
    whenever computable; `estimable` False (with `note`) means the rate ratio or its CI is not."""

    table: pd.DataFrame
    method: str
    n: int
    k: int
    alpha: float
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Primary test: {self.method} (n = {self.n}, k = {self.k} coefficients, NB2 alpha = {self.alpha:.3g}, seed {self.seed})"]
        for r in self.table.itertuples():
            test = f"stat {r.statistic:.4g} (df {r.df:g}), p = {r.p_value:.4g}" if np.isfinite(r.p_value) else "no test"
            if r.estimable:
                lines.append(f"  {r.arm:24s} RR {r.rate_ratio:.3f} (95% CI {r.ci_low:.3f} to {r.ci_high:.3f}; {r.ci_method}); {test}")
            else:
                lines.append(f"  {r.arm:24s} rate ratio not estimable: {r.note}; {test}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Model:
    y: np.ndarray
    X: np.ndarray
    off: np.ndarray
    arm_cols: dict[str, int]  # arm -> column of X
    arm: np.ndarray  # (n,) arm label per row
    reference: str
    strata: np.ndarray | None  # (n,) stratum codes


def build_model(data: pd.DataFrame, formula: str, arm_col: str, reference: str | None, *, offset_col: str | None = "followup_years",
                strata: str | None = None, file: str | None = None) -> _Model:
    """Response, design, offset and arm columns of `formula` (the arm a main effect, no interactions)."""
    if offset_col is not None and offset_col not in data.columns:
        raise InputError(file, f"offset column '{offset_col}' not found", field=offset_col)
    if strata is not None and strata not in data.columns:
        raise InputError(file, f"strata column '{strata}' not found", field=strata)
    extra = tuple(c for c in (offset_col, strata) if c)
    prep = _prepare_full(data, formula, arm_col, reference, file, extra=extra)
    df = prep.df
    if arm_col not in prep.cols:
        raise InputError(file, f"formula {formula!r} has no arm term '{arm_col}'", field="formula")
    off = np.zeros(len(df))
    if offset_col is not None:
        years = pd.to_numeric(df[offset_col], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(years) & (years > 0)):
            raise InputError(file, f"offset '{offset_col}' must be positive years", field=offset_col)
        off = np.log(years)
    y, X, info = design(formula, df, file)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise InputError(file, "the negative binomial model could not be fitted (singular design: a term is constant or collinear)", field="formula")
    arm_cols: dict[str, int] = {}
    for j, raw in enumerate(info.column_names):
        if f"{arm_col}[" in raw:
            m = re.fullmatch(rf"{re.escape(arm_col)}\[T\.(.+)\]", raw)
            if m is None:
                raise InputError(file, f"primary tests need '{arm_col}' as a main effect without interactions (got term {raw!r})", field="formula")
            arm_cols[m.group(1)] = j
    st = None if strata is None else pd.factorize(df[strata].astype(str))[0]
    return _Model(y, X, off, arm_cols, df[arm_col].astype(str).to_numpy(), str(df[arm_col].cat.categories[0]), st)


def _profile_ci(ll1: float, b_hat: float, se: float, crit: float, prof: Any) -> tuple[float, float]:
    """Profile-likelihood bounds (log scale) {b: 2 (ll1 - prof(b)) <= crit}; +/-inf when not crossed within 60 SE."""
    def f(b: float) -> float:
        return 2.0 * (ll1 - prof(b)) - crit

    out = []
    step0 = se if np.isfinite(se) and se > 0 else 1.0
    for sign in (-1.0, 1.0):
        inner, outer = b_hat, None
        for mult in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0):
            b = b_hat + sign * mult * step0 * np.sqrt(crit) / 1.96
            if f(b) > 0:
                outer = b
                break
            inner = b
        out.append(sign * np.inf if outer is None else float(optimize.brentq(f, min(inner, outer), max(inner, outer), xtol=1e-10, rtol=1e-12)))
    return out[0], out[1]


def _permutations(d: np.ndarray, pool: np.ndarray, strata: np.ndarray | None, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) arm indicators: d permuted among the `pool` rows (arm and reference), within strata."""
    D = np.zeros((B, len(d)))
    groups = [pool] if strata is None else [pool & (strata == s) for s in np.unique(strata[pool])]
    for g in groups:
        idx = np.flatnonzero(g)
        D[:, idx] = rng.permuted(np.tile(d[idx], (B, 1)), axis=1)
    return D


def _score_stats(D: np.ndarray, y: np.ndarray, Xr: np.ndarray, mu: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Efficient score statistics U^2 / V (one per row of D (B, n)) for adding column D[b] to Xr at the null fit (mu, alpha)."""
    w = mu / (1.0 + alpha * mu)
    r = (y - mu) / (1.0 + alpha * mu)
    Ainv, _ = inv_pd(Xr.T @ (Xr * w[:, None]))
    U = D @ r
    c = D @ (Xr * w[:, None])
    V = D @ w - np.einsum("bi,ij,bj->b", c, Ainv, c)
    return score_ratio(U, V, float(np.sum(w)))


def score_ratio(U: np.ndarray, V: np.ndarray, total_weight: float) -> np.ndarray:
    """U^2 / V elementwise; where V ~ 0 (below 1e-12 x total_weight: the indicator's patients carry no
    information at this fit, mu ~ 0) the statistic is +inf if U is not 0, else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(V > 1e-12 * total_weight, U * U / V, np.where(np.abs(U) > 1e-9, np.inf, 0.0))


def _perm_p(T: np.ndarray, t_obs: float) -> float:
    return float((1 + np.sum(T >= t_obs * (1 - 1e-9) - 1e-12)) / (1 + len(T)))


def _draw_nb2(mu: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    lam = mu * rng.gamma(1.0 / alpha, alpha, len(mu)) if alpha > 0 else mu
    return rng.poisson(lam).astype(float)


def arm_groups(model: _Model) -> np.ndarray:
    """(n,) integer code of each row's arm (the dispersion groups of `dispersion="by_arm"`)."""
    return np.unique(model.arm, return_inverse=True)[1]


def arm_tests(model: _Model, arm: str, methods: tuple[str, ...], *, seed: int = 0, n_permutations: int = 999, n_bootstrap: int = 199,
              conf_level: float = 0.95, full: NB2Result | None = None, ci: bool = True, dispersion: str = "common",
              full_by_arm: NB2ByArmResult | None = None, boot: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per method for arm `arm` vs the reference (see the module docstring), from shared fits.

    dispersion "by_arm" (module docstring): wald / t take b and its SE from the NB2 fit with one dispersion
    per arm (expected information X' W X, W = mu / (1 + alpha_arm mu)); permutation keeps its p value (the
    score test at the common null fit: exact under the sharp null) and inverts the test for the CI with
    each arm's dispersion fixed at the by-arm fit's. The likelihood-ratio methods stay common-dispersion."""
    y, X, off = model.y, model.X, model.off
    n, k = X.shape
    j = model.arm_cols[arm]
    keep = np.arange(k) != j
    Xr, d = X[:, keep], X[:, j]
    full = full or fit_nb2(y, X, off)
    null = fit_nb2(y, Xr, off)
    b, se = float(full.beta[j]), float(nb2_wald(X, off, full.beta, full.alpha).se[j])
    groups, row_alpha = None, None
    if dispersion == "by_arm":
        groups = arm_groups(model)
        full_by_arm = full_by_arm or fit_nb2_by_arm(y, X, groups, off)
        row_alpha = full_by_arm.alpha[groups]
        b, se = float(full_by_arm.beta[j]), float(nb2_wald(X, off, full_by_arm.beta, row_alpha).se[j])
    elif dispersion != "common":
        raise ValueError(f"unknown dispersion {dispersion!r}")
    lr = max(2.0 * (full.llf - null.llf), 0.0)
    dfree = n - k
    q = 1.0 - (1.0 - conf_level) / 2.0

    def prof(bj: float) -> float:
        return fit_nb2(y, Xr, off + bj * d, beta0=null.beta, alpha0=null.alpha if null.alpha > 0 else None).llf

    rows = []
    reasons = []
    if not (full.converged and null.converged) or (full_by_arm is not None and not full_by_arm.converged):
        reasons.append("a fit did not reach a verified maximum")
    ev_arm, ev_ref = y[model.arm == arm].sum(), y[model.arm == model.reference].sum()
    if ev_arm == 0 or ev_ref == 0:
        reasons.append(f"no events in {'the arm' if ev_arm == 0 else 'the reference arm'}: the rate ratio's MLE is at the boundary")
    for method in methods:
        stat, df_, p, lo, hi, B = np.nan, np.nan, np.nan, np.nan, np.nan, 0
        extra: dict[str, float] = {}
        why = list(reasons)
        if method in ("wald", "t"):
            stat = b / se if se > 0 else np.nan
            if method == "wald":
                df_, p, c = np.inf, 2 * stats.norm.sf(abs(stat)), stats.norm.ppf(q)
            else:
                df_, p, c = float(dfree), 2 * stats.t.sf(abs(stat), dfree), stats.t.ppf(q, dfree)
            lo, hi = b - c * se, b + c * se
        elif method in ("lrt", "lrt_f", "bootstrap_lrt"):
            stat, df_ = lr, 1.0
            if method == "lrt":
                p, crit = stats.chi2.sf(lr, 1), stats.chi2.ppf(conf_level, 1)
            elif method == "lrt_f":
                df_ = float(dfree)
                p, crit = stats.f.sf(lr, 1, dfree), stats.f.ppf(conf_level, 1, dfree)
            else:
                B = n_bootstrap
                rng = np.random.default_rng([seed, j, 1])
                mu0 = np.exp(Xr @ null.beta + off)
                lrs = np.empty(B)
                for i in range(B):
                    ys = _draw_nb2(mu0, null.alpha, rng)
                    if ys.sum() == 0:
                        lrs[i] = 0.0
                        continue
                    f1, f0 = fit_nb2(ys, X, off, check_boundary=True), fit_nb2(ys, Xr, off)
                    lrs[i] = max(2.0 * (f1.llf - f0.llf), 0.0)
                p = _perm_p(lrs, lr)
                crit = float(np.quantile(lrs, conf_level))
            if ci:
                lo, hi = _profile_ci(full.llf, b, se, crit, prof)
        elif method == "bootstrap_t":
            B = n_bootstrap
            extra["p_value_symmetric"] = float("nan")
            beta_f, alpha_f = (full_by_arm.beta, row_alpha) if dispersion == "by_arm" else (full.beta, full.alpha)
            se_s = _sandwich_se(y, X, off, beta_f, alpha_f, j)
            stat, df_ = (b / se_s if se_s > 0 else np.nan), np.inf
            if boot is None:
                boot = bootstrap_t_replicates(model, dispersion, B, seed, full, full_by_arm)
            tstar = boot[:, j][~np.isnan(boot[:, j])]  # +-inf: a resample whose arm (reference) had no events
            if len(tstar) >= 0.9 * B and se_s > 0:
                # order statistics where some t* are infinite (interpolating against -inf is undefined); else linear, as validated
                lo_q, hi_q = np.quantile(tstar, [1.0 - q, q], method="linear" if np.isfinite(tstar).all() else "inverted_cdf")
                lo, hi = b - hi_q * se_s, b - lo_q * se_s
                p = bootstrap_t_p(tstar, stat)
                extra["p_value_symmetric"] = float((1 + np.sum(np.abs(tstar) >= abs(stat))) / (1 + len(tstar)))
            else:
                why.append(f"only {len(tstar)} of {B} bootstrap refits usable")
        elif method == "permutation":
            B = n_permutations
            rng = np.random.default_rng([seed, j, 0])
            pool = (model.arm == arm) | (model.arm == model.reference)
            D = _permutations(d, pool, model.strata, B, rng)
            stat = float(_score_stats(d[None, :], y, Xr, np.exp(Xr @ null.beta + off), null.alpha)[0])
            p = _perm_p(_score_stats(D, y, Xr, np.exp(Xr @ null.beta + off), null.alpha), stat)
            df_ = 1.0
            if ci:
                by = None if groups is None else (groups, full_by_arm.alpha)
                lo, hi = _perm_ci(y, Xr, off, d, D, b, se, 1.0 - conf_level, null, by_arm=by)
        else:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        with np.errstate(over="ignore"):
            rr, cl, ch = np.exp(b), np.exp(lo), np.exp(hi)
        ok, note = assess_ratio(rr, cl if ci else None, ch if ci else None, converged=full.converged, reasons=why)
        rows.append({"arm": arm, "rate_ratio": rr, "ci_low": cl, "ci_high": ch, "ci_method": _CI_METHOD[method] if ci else "",
                     "statistic": float(stat), "df": float(df_), "p_value": float(p), "method": method,
                     "null_hypothesis": _NULL_SHARP if method == "permutation" else _NULL_MODEL, "n": n, "k": k,
                     "n_permutations": B, "estimable": ok, "note": note, "dispersion": dispersion, **extra})
    return rows


def bootstrap_t_p(tstar: np.ndarray, t: float) -> float:
    """Equal-tailed bootstrap-t p-value of t against the usable replicates t* (the dual of the equal-tailed CI):
    min(1, 2 min((1 + #{t* <= t}) / (1 + B), (1 + #{t* >= t}) / (1 + B)))."""
    B = len(tstar)
    return float(min(1.0, 2.0 * min((1 + np.sum(tstar <= t)) / (1 + B), (1 + np.sum(tstar >= t)) / (1 + B))))


def _sandwich_se(y: np.ndarray, X: np.ndarray, off: np.ndarray, beta: np.ndarray, alpha: float | np.ndarray, j: int) -> float:
    """Patient-level sandwich (HC0) SE of coefficient j at (beta, alpha) (alpha scalar or per row); NaN if the
    bread does not invert. The bootstrap-t's pivot: consistent whatever the law of the counts."""
    V, ok = nb2_sandwich(y, X, np.exp(X @ beta + off), alpha)
    return float(np.sqrt(V[j, j])) if ok and V[j, j] > 0 else float("nan")


def bootstrap_t_replicates(model: _Model, dispersion: str, B: int, seed: int, full: NB2Result,
                           full_by_arm: NB2ByArmResult | None = None) -> np.ndarray:
    """(B, k) studentized replicates (b*_j - b_j) / se*_j of every coefficient: rows resampled with replacement
    within each arm (x stratum) cell (generator `default_rng([seed, 2])`), each resample refitted once with the
    same dispersion choice, se* the patient-level sandwich SE. One set of resamples serves every arm's
    contrast (the arms' intervals are then computed from the same bootstrap world, as their estimates come
    from the same fit). Rows of refits that do not converge, and entries without a positive finite SE, are NaN.
    A resample in which an arm has no events has its coefficient at -inf with a finite sandwich SE: its entry is
    -inf (the pivot's limit, kept: dropping it would cut the lower tail of t* and shorten the CI), and the other
    coefficients come from the limit of the MLE, the fit without that arm's rows and column (rows whose mean tends to
    0 add nothing to the likelihood or the score; covariate columns left all-zero by it are dropped too, their
    entries NaN); a resample whose reference arm has no events puts every arm's entry at +inf. (Common dispersion;
    the by-arm fit refits as it is.)"""
    y, X, off = model.y, model.X, model.off
    groups = arm_groups(model) if dispersion == "by_arm" else None
    if dispersion == "by_arm":
        full_by_arm = full_by_arm or fit_nb2_by_arm(y, X, groups, off)
        b = full_by_arm.beta
    else:
        b = full.beta
    cell = model.arm.astype(str) if model.strata is None else np.char.add(model.arm.astype(str), "|" + model.strata.astype(str))
    cells = [np.flatnonzero(cell == c) for c in np.unique(cell)]
    rng = np.random.default_rng([seed, 2])
    out = np.full((B, X.shape[1]), np.nan)
    for r in range(B):
        idx = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells])
        ys, Xs, os_ = y[idx], X[idx], off[idx]
        cols = np.arange(X.shape[1])
        if dispersion == "by_arm":
            f = fit_nb2_by_arm(ys, Xs, groups[idx], os_)
            alpha = f.alpha[groups[idx]]
        else:
            arms_s = model.arm[idx]
            empty = [a for a in (model.reference, *model.arm_cols) if ys[arms_s == a].sum() == 0]
            if model.reference in empty:  # every arm's coefficient at +inf
                out[r, list(model.arm_cols.values())] = np.inf
                continue
            if empty:  # the limit MLE of the other coefficients: without the event-free arms' rows and columns
                out[r, [model.arm_cols[a] for a in empty]] = -np.inf
                rows = ~np.isin(arms_s, empty)
                gone = {model.arm_cols[a] for a in empty}
                kept = Xs[rows]
                cols = np.array([c for c in cols if c not in gone and (c == 0 or np.any(kept[:, c] != 0))])
                ys, Xs, os_ = ys[rows], kept[:, cols], os_[rows]
            f = fit_nb2(ys, Xs, os_, beta0=full.beta[cols], alpha0=full.alpha if full.alpha > 0 else None, check_boundary=full.alpha == 0)
            alpha = f.alpha
        if not f.converged:
            continue
        V, ok = nb2_sandwich(ys, Xs, np.exp(Xs @ f.beta + os_), alpha)
        if not ok:
            continue
        se = np.sqrt(np.where(np.diag(V) > 0, np.diag(V), np.nan))
        out[r, cols] = (f.beta - b[cols]) / se
    return out


def _fit_fixed_alpha(y: np.ndarray, X: np.ndarray, off: np.ndarray, alpha: float, beta0: np.ndarray) -> np.ndarray:
    """beta (k,) of the NB2 model at a fixed dispersion alpha (Poisson at 0): `fit_beta_fixed_dispersions` with one group."""
    return fit_beta_fixed_dispersions(y, X, np.zeros(len(y), dtype=int), np.array([max(float(alpha), 0.0)]), off, beta0)


def _perm_ci(y: np.ndarray, Xr: np.ndarray, off: np.ndarray, d: np.ndarray, D: np.ndarray, b_hat: float, se: float, level: float,
             null: NB2Result, alpha_ci: float | None = None, by_arm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """Bounds of {b: the permutation score test of beta_j = b does not reject at `level`}, by bisection (log scale).

    The test of b uses offset b d and the dispersion fixed at `alpha_ci` (default: the null fit's, so
    that at b = 0 it is the primary test itself: the CI excludes 1 exactly when p <= level, up to
    non-monotonicity). Re-estimating alpha at each b would let the dispersion absorb any b (the test
    then never rejects far from the estimate, and the bounds run off to 0 or infinity).
    by_arm = (groups (n,), alpha per group (m,)): each row's dispersion fixed at its arm's instead."""
    a: float | np.ndarray = null.alpha if alpha_ci is None else alpha_ci
    if by_arm is not None:
        a = by_arm[1][by_arm[0]]

    def beta_at(o: np.ndarray) -> np.ndarray:
        if by_arm is None:
            return _fit_fixed_alpha(y, Xr, o, float(a), null.beta)
        return fit_beta_fixed_dispersions(y, Xr, by_arm[0], by_arm[1], o, null.beta)

    def accepts(bj: float) -> bool:
        o = off + bj * d
        mu = np.exp(Xr @ beta_at(o) + o)
        t_obs = float(_score_stats(d[None, :], y, Xr, mu, a)[0])
        return _perm_p(_score_stats(D, y, Xr, mu, a), t_obs) > level

    return invert_test(accepts, b_hat, se)


def invert_test(accepts: Callable[[float], bool], b_hat: float, se: float) -> tuple[float, float]:
    """(low, high) bounds of {b: accepts(b)} around the estimate b_hat: steps of 1-60 SEs outward until a b is
    rejected, then bisection to 1e-4 SE; a side never rejected within 60 SEs is unbounded (-inf / +inf)."""
    step0 = se if np.isfinite(se) and se > 0 else 1.0
    out = []
    for sign in (-1.0, 1.0):
        inner, outer = b_hat, None
        for mult in (1.0, 2.0, 3.0, 5.0, 8.0, 16.0, 32.0, 60.0):
            bb = b_hat + sign * mult * step0
            if not accepts(bb):
                outer = bb
                break
            inner = bb
        if outer is None:
            out.append(sign * np.inf)
            continue
        for _ in range(40):
            if abs(outer - inner) < 1e-4 * step0:
                break
            mid = 0.5 * (inner + outer)
            inner, outer = (mid, outer) if accepts(mid) else (inner, mid)
        out.append(0.5 * (inner + outer))
    return out[0], out[1]


def primary_tests(
    data: pd.DataFrame,
    formula: str,
    arm_col: str = "arm",
    reference: str | None = None,
    *,
    method: str = "wald",
    offset_col: str | None = "followup_years",
    seed: int = 0,
    n_permutations: int = 999,
    n_bootstrap: int = 199,
    strata: str | None = None,
    conf_level: float = 0.95,
    file: str | None = None,
    dispersion: str = "common",
) -> SmallSampleResult:
    """Test every arm vs `reference` with `method` (one of METHODS, or "auto": `recommended_test` of the
    smallest compared arm; see the module docstring) in the
    NB2 model `formula` with offset log(data[offset_col]) and give the matching confidence interval.

    data: one row per patient; formula: e.g. "net2 ~ arm + site + gd_pos + log_t2"; strata: the
    column within which the permutation test permutes (the randomization strata; None: complete
    randomization). seed: the Monte Carlo tests' seed (the same seed gives the same p-values).
    dispersion: "common" or "by_arm" (one NB2 dispersion per arm for the estimate, its SE and the
    permutation CI; `arm_tests`)."""
    if dispersion not in ("common", "by_arm"):
        raise InputError(file, f"unknown dispersion {dispersion!r} (choose one of common, by_arm)", field="dispersion")
    if method not in (*METHODS, "auto"):
        raise InputError(file, f"unknown small-sample test {method!r} (one of {', '.join(METHODS)}, auto)", field="small_sample_test")
    model = build_model(data, formula, arm_col, reference, offset_col=offset_col, strata=strata, file=file)
    notes = []
    if method == "auto":
        n_min = min(int(np.sum(model.arm == a)) for a in [model.reference, *model.arm_cols])
        method = recommended_test(n_min)
        notes.append(f"test chosen by the SAP rule: smallest compared arm has {n_min} patients "
                     f"({'< ' if n_min < SMALL_SAMPLE_N else '>= '}{SMALL_SAMPLE_N}) -> {method}")
    full = fit_nb2(model.y, model.X, model.off)
    full_by_arm = fit_nb2_by_arm(model.y, model.X, arm_groups(model), model.off) if dispersion == "by_arm" else None
    boot = bootstrap_t_replicates(model, dispersion, n_bootstrap, seed, full, full_by_arm) if method == "bootstrap_t" else None
    rows = []
    for arm in model.arm_cols:
        rows += arm_tests(model, arm, (method,), seed=seed, n_permutations=n_permutations, n_bootstrap=n_bootstrap,
                          conf_level=conf_level, full=full, dispersion=dispersion, full_by_arm=full_by_arm, boot=boot)
    if not full.converged:
        notes.append("the full model did not reach a verified maximum")
    if full.boundary:
        notes.append("the NB2 maximum is at the Poisson boundary (alpha = 0)")
    return SmallSampleResult(pd.DataFrame(rows), method, len(model.y), model.X.shape[1], float(full.alpha), seed, notes)


__all__ = ["METHODS", "SMALL_SAMPLE_N", "SmallSampleResult", "arm_tests", "bootstrap_t_replicates", "build_model", "primary_tests", "recommended_test"]
