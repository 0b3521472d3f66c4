"""The interval and test that `mseval effects` reports the observed rate ratios with (its primary endpoint).

The NB2 fit of the observed counts (`count_model.fit_count_model`, equal to R's `glm.nb`) gives the estimate. Its
model-based Wald CI assumes one NB2 dispersion for every arm; in MS trials the treated arms are more overdispersed
than placebo (a per-patient response spread, `../shared/WORLD_FACTS.md`), and that CI then under-covers at any
sample size (91.4% at 100 per arm in the simulated world, bench/RESULTS.md). The interval reported instead:

- ``auto`` (the default): ``bootstrap_t`` when the smallest compared arm has fewer than
  `small_sample.SMALL_SAMPLE_N` (1,000) patients, ``robust`` otherwise;
- ``bootstrap_t``: the studentized bootstrap of the NB2 arm coefficient (patients resampled within arms, each
  resample refitted, studentized by the patient-level sandwich SE; `small_sample.primary_tests(method="bootstrap_t")`),
  equal-tailed, with the p-value of its dual test (the CI excludes 1 exactly when p <= 0.05, up to Monte Carlo
  discreteness). Second-order accurate when the arms' laws differ; validated at 100 per arm in bench/RESULTS.md
  (rules R15, R16). A formula it cannot take (the arm in an interaction) gets ``robust``, with a note;
- ``robust``: the Wald CI with the patient-level sandwich SE (consistent whatever the arms' dispersions; at 100 per
  arm it covered 93.4%, so `auto` uses it only from 1,000 per arm, where it was not separately validated);
- ``model``: the fit's own Wald CI, with the SE it was fitted with (`cov`: ``expected`` is `glm.nb`'s summary).

Same seed, same data: identical intervals (the bootstrap's generator is `numpy.random.default_rng([seed, 2])`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.stats.count_model import CountModelFit, fit_count_model
from mseval.stats.small_sample import SMALL_SAMPLE_N, primary_tests

OBSERVED_CI_METHODS = ("auto", "bootstrap_t", "robust", "model")
BOOTSTRAP_REPLICATES = 999
CI_WORDS = {
    "bootstrap_t": "studentized bootstrap (patients resampled within arms, NB2 refitted, sandwich-SE pivot; {B} resamples; "
                   "equal-tailed, p from its dual test)",
    "robust": "Wald, patient-level sandwich SE",
    "model": "Wald, the NB2 fit's SE ({cov})",
}
COV_WORDS = {"expected": "expected information, as R's glm.nb", "observed": "inverse observed information",
             "robust": "patient-level sandwich"}


def ci_words(method: str, *, cov: str = "expected", n_bootstrap: int = BOOTSTRAP_REPLICATES) -> str:
    """The words naming interval `method` (a resolved key of `CI_WORDS`), for tables, captions and effects.json."""
    return CI_WORDS[method].format(B=n_bootstrap, cov=COV_WORDS.get(cov, cov))


def chosen_method(method: str, n_min: int) -> str:
    """The interval `method` resolves to when the smallest compared arm has `n_min` analysed patients."""
    if method not in OBSERVED_CI_METHODS:
        raise InputError(None, f"unknown observed interval {method!r} (one of {', '.join(OBSERVED_CI_METHODS)})", field="observed_ci")
    if method == "auto":
        return "bootstrap_t" if n_min < SMALL_SAMPLE_N else "robust"
    return method


def observed_intervals(data: pd.DataFrame, fit: CountModelFit, *, method: str = "auto", seed: int = 0,
                       n_bootstrap: int = BOOTSTRAP_REPLICATES, file: str | None = None) -> pd.DataFrame:
    """One row per compared arm of `fit` (the NB2 of the observed counts on `data`, one row per patient): arm,
    rate_ratio (the fit's), ci_low, ci_high, p_value, ci_method (words), method (the resolved key), estimable, note,
    p_value_symmetric (bootstrap only: the symmetric bootstrap-t p, NaN otherwise).

    The estimate is always the fit's; the interval and p-value are `method`'s (module docstring). A row the fit
    flags non-estimable stays so; a bootstrap that cannot give an interval (too few usable refits) says why."""
    arms = [a for a in fit.arm_categories if a != fit.reference]
    counts = fit.arm_counts.set_index("arm")["n"] if not fit.arm_counts.empty else pd.Series(dtype=float)
    n_min = int(min((counts.get(a, 0) for a in [fit.reference, *arms]), default=0))
    resolved = chosen_method(method, n_min)
    fallback = ""
    if resolved == "bootstrap_t":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                boot = primary_tests(data, fit.formula, arm_col=fit.arm_col, reference=fit.reference, method="bootstrap_t",
                                     offset_col=fit.offset_years, seed=seed, n_bootstrap=n_bootstrap, file=file,
                                     dispersion=fit.dispersion).table.set_index("arm")
        except InputError as exc:  # e.g. the arm in an interaction: the sandwich, said so
            resolved, fallback = "robust", f"sandwich Wald CI: the studentized bootstrap cannot take this model ({exc.problem})"
    if resolved == "robust":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = fit_count_model(data, fit.formula, offset_years=fit.offset_years, reference=fit.reference, arm_col=fit.arm_col,
                                    cov="robust", adjusted_means=False, file=file, dispersion=fit.dispersion)  # type: ignore[arg-type]
    words = ci_words(resolved, cov=fit.cov, n_bootstrap=n_bootstrap)
    rows: list[dict[str, Any]] = []
    for arm in arms:
        r = fit.rate_ratio(arm)
        ok, note = bool(r["estimable"]), "; ".join(x for x in (str(r["note"] or ""), fallback) if x)
        p_sym = float("nan")
        if resolved == "model":
            lo, hi, p = r["ci_low"], r["ci_high"], r["p_value"]
        elif resolved == "robust":
            s = other.rate_ratio(arm)
            lo, hi, p = s["ci_low"], s["ci_high"], s["p_value"]
            ok, note = ok and bool(s["estimable"]), "; ".join(x for x in (note, str(s["note"] or "")) if x)
        else:
            b = boot.loc[arm]
            lo, hi, p, p_sym = b["ci_low"], b["ci_high"], b["p_value"], b.get("p_value_symmetric", float("nan"))
            extra = str(b["note"] or "")
            ok = ok and bool(b["estimable"]) and bool(np.isfinite(lo) and np.isfinite(hi))
            note = "; ".join(dict.fromkeys(x for x in (note, extra) if x))
        rows.append({"arm": arm, "rate_ratio": float(r["rate_ratio"]), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p),
                     "ci_method": words, "method": resolved, "estimable": ok, "note": note, "p_value_symmetric": float(p_sym)})
    return pd.DataFrame(rows, columns=["arm", "rate_ratio", "ci_low", "ci_high", "p_value", "ci_method", "method", "estimable", "note",
                                       "p_value_symmetric"])


def with_intervals(fit: CountModelFit, intervals: pd.DataFrame) -> pd.DataFrame:
    """`fit.table` (one row per term) with each arm row's ci_low, ci_high, p_value, estimable and note taken from
    `intervals` (`observed_intervals`), and a ci_method column (the other terms keep the fit's model-based CI)."""
    t = fit.table.copy()
    t["ci_method"] = ci_words("model", cov=fit.cov)
    iv = intervals.set_index("arm")
    rows = t["term"].isin(iv.index)
    r = iv.loc[t.loc[rows, "term"]]
    for col in ("ci_low", "ci_high", "p_value", "ci_method", "note"):
        t.loc[rows, col] = r[col].to_numpy()
    t.loc[rows, "estimable"] = r["estimable"].to_numpy(dtype=bool)
    return t


__all__ = ["BOOTSTRAP_REPLICATES", "CI_WORDS", "COV_WORDS", "OBSERVED_CI_METHODS", "chosen_method", "ci_words", "observed_intervals", "with_intervals"]
