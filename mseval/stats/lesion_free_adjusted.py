"""The lesion-free endpoint with one follow-up scan, adjusted for the analysis plan's covariates.

With a single follow-up scan the time of the first new lesion is unknown (it lies anywhere before the
scan), so no hazard ratio is estimated here: a constant-hazard ("cloglog") ratio from one scan rests on
an assumption the NB2 frailty itself contradicts. Two quantities instead, per arm vs the reference:

- odds ratio (OR): logistic regression of being free of new/enlarging T2 lesions at the follow-up scan
  on arm + covariates; exp(b_arm) is the ratio of the odds of being lesion-free under the arm vs the
  reference *for patients with the same covariates* (a conditional OR: the odds ratio is
  non-collapsible, so it is not the population OR). Wald 95% CI, p value.
- risk difference (RD): the proportion lesion-free had every analysed patient received the arm minus
  the proportion had every one received the reference, standardised over the analysed patients'
  covariates (`mseval.stats.standardised.standardised_risks`), delta-method CI that conditions on those
  covariates. A marginal quantity over the follow-up windows as observed (not per year).

A hazard ratio needs several visits (interval-censored time to the first lesion: the discrete-time
cloglog model over visit intervals; not here). Separation (an arm or the reference entirely lesion-free
or entirely active) makes the MLE infinite: the arm's row is flagged `estimable` False with a note and
no number is given (the crude Newcombe RD in `mseval.stats.lesion_free` is always defined).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import _prepare, _term_name, design
from mseval.stats.estimability import assess_additive, assess_ratio
from mseval.stats.standardised import Z95, standardised_risks

OR_ESTIMAND = ("odds ratio of being free of new/enlarging T2 lesions at the follow-up scan, arm vs reference, for patients with the "
               "same covariates (conditional, non-collapsible: not the population odds ratio)")
RD_ESTIMAND = ("difference in the proportion free of new/enlarging T2 lesions at the follow-up scan had every analysed patient received "
               "the arm vs the reference (marginal standardisation over the analysed patients' covariates; over the follow-up as observed)")
COLUMNS = ["arm", "n", "lesion_free", "odds_ratio", "or_ci_low", "or_ci_high", "or_p_value", "lesion_free_adjusted", "lf_ci_low", "lf_ci_high",
           "risk_difference", "rd_ci_low", "rd_ci_high", "estimable", "note"]


def fit_lesion_free_adjusted(data: pd.DataFrame, terms: Sequence[str] = (), *, response: str = "net2", reference: str | None = None,
                             arm_col: str = "arm", file: str | None = None) -> pd.DataFrame:
    """One row per arm (reference first) with the columns of `COLUMNS`: n analysed, lesion-free count,
    conditional OR of being lesion-free (logistic on arm + `terms`), standardised proportion lesion-free
    (0-1) with CI, RD vs the reference with CI, `estimable`, `note`. Rows with missing values in a used
    column are left out (complete case)."""
    import statsmodels.api as sm

    rhs = " + ".join([arm_col, *terms])
    df, _, _ = _prepare(data, f"{response} ~ {rhs}", arm_col, reference, file)
    df = df.assign(_free=(df[response].to_numpy(dtype=float) == 0).astype(float))
    _, X, info = design(f"_free ~ {rhs}", df, file)
    names = [_term_name(n, arm_col) for n in info.column_names]
    arms = [str(a) for a in df[arm_col].cat.categories]
    free = df["_free"].to_numpy()
    arm_of = df[arm_col].astype(str).to_numpy()
    ref = arms[0]
    sep = {a: int(free[arm_of == a].sum()) in (0, int((arm_of == a).sum())) for a in arms}
    converged, b, V = False, np.full(X.shape[1], np.nan), np.full((X.shape[1],) * 2, np.nan)
    if not any(sep.values()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = sm.GLM(free, X, family=sm.families.Binomial()).fit(maxiter=200)
                b, V, converged = np.asarray(res.params), np.asarray(res.cov_params()), bool(res.converged)
            except Exception:  # noqa: BLE001 - perfect separation within covariates / singular fit: flagged below
                converged = False
    std = standardised_risks(info, b, V, df, arm_col, arms).set_index("arm") if converged else None
    rows = []
    for a in arms:
        m = arm_of == a
        row = {"arm": a, "n": int(m.sum()), "lesion_free": int(free[m].sum())}
        reasons = []
        if sep[a] or sep[ref]:
            who = a if sep[a] else f"the reference {ref!r}"
            state = "lesion-free" if (free[m].all() if sep[a] else free[arm_of == ref].all()) else "active"
            reasons.append(f"separation: every patient of {who} is {state}; the adjusted odds ratio and risk difference are not estimable "
                           "(the crude risk difference with its Newcombe CI is in lesion_free.csv)")
        elif not converged:
            reasons.append("the logistic model did not converge (quasi-separation within covariates?): not estimable")
        if a == ref:
            row.update({c: np.nan for c in COLUMNS[3:13]})
            if std is not None:
                row.update({"lesion_free_adjusted": std.loc[a, "risk"], "lf_ci_low": std.loc[a, "risk_ci_low"], "lf_ci_high": std.loc[a, "risk_ci_high"]})
            row.update({"estimable": not reasons, "note": "; ".join(["reference arm", *reasons])})
            rows.append(row)
            continue
        if reasons or std is None:
            row.update({c: np.nan for c in COLUMNS[3:13]})
            row.update({"estimable": False, "note": "; ".join(reasons)})
            rows.append(row)
            continue
        j = names.index(a)
        se = float(np.sqrt(V[j, j]))
        with np.errstate(over="ignore"):
            orr = (float(np.exp(b[j])), float(np.exp(b[j] - Z95 * se)), float(np.exp(b[j] + Z95 * se)))
        s = std.loc[a]
        ok_o, note_o = assess_ratio(*orr, converged=converged)
        ok_d, note_d = assess_additive(float(s["risk_difference"]), float(s["risk_difference_ci_low"]), float(s["risk_difference_ci_high"]))
        row.update({"odds_ratio": orr[0], "or_ci_low": orr[1], "or_ci_high": orr[2], "or_p_value": float(2 * stats.norm.sf(abs(b[j] / se))),
                    "lesion_free_adjusted": float(s["risk"]), "lf_ci_low": float(s["risk_ci_low"]), "lf_ci_high": float(s["risk_ci_high"]),
                    "risk_difference": float(s["risk_difference"]), "rd_ci_low": float(s["risk_difference_ci_low"]),
                    "rd_ci_high": float(s["risk_difference_ci_high"]), "estimable": bool(ok_o and ok_d),
                    "note": "; ".join(filter(None, [note_o, f"risk difference: {note_d}" if note_d else ""]))})
        rows.append(row)
    return pd.DataFrame(rows)[COLUMNS]
