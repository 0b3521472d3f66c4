"""The lesion-free endpoint: who stays free of new/enlarging lesions, by arm, respecting follow-up.

Three estimates per arm against the reference, side by side in one row (`LesionFreeFit.table`):

- hazard ratio (primary, respects follow-up): a binomial GLM of *any* NET2 lesion with the
  complementary log-log link and offset log(follow-up years),
      P(active_i) = 1 - exp(-exp(x_i' b) * years_i),
  i.e. a constant hazard of the first new lesion within each arm; exp(b_arm) is the ratio of
  hazards of becoming active (< 1 favours the arm). Patients followed longer have had more time to
  develop a lesion, and the model accounts for it. Wald 95% CI, p-value.
- odds ratio of being lesion-free (logistic, crude: follow-up is not modelled; comparable with
  trial reports when follow-up is fixed by design). Wald 95% CI, p-value.
- risk difference: proportion lesion-free in the arm minus the reference's (crude proportions),
  with the Newcombe hybrid-score CI built from the two Wilson intervals (Newcombe 1998, method 10;
  statsmodels `confint_proportions_2indep(method="newcomb")`).

Separation (an arm -- or the reference -- entirely lesion-free or entirely active) makes the
ratios' MLE infinite; it is detected from the data (not from the optimiser), the row is flagged
`estimable = False` with a note, and the risk difference (always defined) is kept with its CI.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mseval.stats.count_model import _prepare, _term_name, design
from mseval.stats.estimability import assess_additive, assess_ratio

COLUMNS = ["arm", "n", "lesion_free", "lesion_free_pct", "hazard_ratio", "hr_ci_low", "hr_ci_high", "hr_p_value",
           "odds_ratio", "ci_low", "ci_high", "p_value", "risk_difference", "rd_ci_low", "rd_ci_high", "estimable", "note"]


@dataclass(frozen=True)
class LesionFreeFit:
    """`table`: one row per arm (reference first: its ratios blank) with the columns of `COLUMNS`;
    `proportions`: arm, lesion_free_pct, n (kept for older callers); `converged`: both GLMs converged."""

    table: pd.DataFrame
    proportions: pd.DataFrame
    converged: bool
    n: int
    reference: str
    notes: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = [f"Lesion-free endpoint (n={self.n}): cloglog hazard ratio of any NET2 lesion with offset log(years); "
                 "risk difference of lesion-free proportions (Newcombe CI)"]
        for r in self.table.itertuples():
            head = f"  {r.arm:20s} {int(r.lesion_free)}/{int(r.n)} lesion-free ({r.lesion_free_pct:.1f}%)"
            if r.arm == self.reference:
                lines.append(head + "  (reference)")
            elif r.estimable:
                lines.append(head + f"  HR {r.hazard_ratio:.3f} ({r.hr_ci_low:.3f} to {r.hr_ci_high:.3f})  OR {r.odds_ratio:.3f}"
                             f"  RD {r.risk_difference:+.3f} ({r.rd_ci_low:+.3f} to {r.rd_ci_high:+.3f})")
            else:
                lines.append(head + f"  RD {r.risk_difference:+.3f} ({r.rd_ci_low:+.3f} to {r.rd_ci_high:+.3f}); ratios not estimable: {r.note}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


LogitFit = LesionFreeFit  # the old name of this result


def _glm(yb: np.ndarray, X: np.ndarray, link: object, offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = sm.GLM(yb, X, family=sm.families.Binomial(link=link), offset=offset).fit(maxiter=200)
            return np.asarray(res.params), np.asarray(res.bse), np.asarray(res.pvalues), bool(res.converged)
        except Exception:  # noqa: BLE001 - perfect separation / singular fit: flagged below, never silent
            k = X.shape[1]
            return np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan), False


def fit_lesion_free(
    data: pd.DataFrame, response: str = "net2", rhs: str = "arm", *, reference: str | None = None, arm_col: str = "arm",
    offset_years: str | None = "followup_years", file: str | None = None,
) -> LesionFreeFit:
    """Hazard ratio (cloglog, offset log(years)), odds ratio (logistic) and risk difference of being
    free of lesions (`response == 0`) by arm, + covariates in `rhs` for the two models.

    offset_years None (or a column absent from `data`): the cloglog model has no offset (a fixed
    follow-up window, stated in the notes)."""
    import statsmodels.api as sm
    from statsmodels.stats.proportion import confint_proportions_2indep

    use_off = offset_years is not None and offset_years in data.columns
    df, _, _ = _prepare(data, f"{response} ~ {rhs}", arm_col, reference, file, extra=(offset_years,) if use_off else ())
    notes: list[str] = []
    if not use_off:
        notes.append("no follow-up column: the hazard ratio assumes the same follow-up for every patient")
    _, X, info = design(f"{response} ~ {rhs}", df, file)
    active = (df[response].to_numpy(dtype=float) > 0).astype(float)
    off = np.log(df[offset_years].to_numpy(dtype=float)) if use_off else None
    names = [_term_name(n, arm_col) for n in info.column_names]
    b_h, se_h, p_h, conv_h = _glm(active, X, sm.families.links.CLogLog(), off)
    b_o, se_o, p_o, conv_o = _glm(1.0 - active, X, sm.families.links.Logit(), None)
    z = 1.959963984540054
    arms = list(df[arm_col].cat.categories)
    ref = arms[0]
    arm_of = df[arm_col].astype(str).to_numpy()
    free = 1.0 - active
    n_ref, k_ref = int((arm_of == ref).sum()), int(free[arm_of == ref].sum())
    ref_separated = k_ref in (0, n_ref)
    rows = []
    for arm in arms:
        m = arm_of == arm
        n_a, k_a = int(m.sum()), int(free[m].sum())
        row: dict = {"arm": arm, "n": n_a, "lesion_free": k_a, "lesion_free_pct": 100.0 * k_a / n_a}
        if arm == ref:
            row.update({c: np.nan for c in COLUMNS[4:15]})
            row.update({"estimable": True, "note": "reference arm"})
            rows.append(row)
            continue
        j = names.index(arm)
        with np.errstate(over="ignore"):
            hr = (np.exp(b_h[j]), np.exp(b_h[j] - z * se_h[j]), np.exp(b_h[j] + z * se_h[j]), p_h[j])
            orr = (np.exp(b_o[j]), np.exp(b_o[j] - z * se_o[j]), np.exp(b_o[j] + z * se_o[j]), p_o[j])
        lo, hi = confint_proportions_2indep(k_a, n_a, k_ref, n_ref, method="newcomb", compare="diff")
        rd = k_a / n_a - k_ref / n_ref
        reasons = []
        if k_a in (0, n_a) or ref_separated:
            who = arm if k_a in (0, n_a) else f"the reference {ref!r}"
            state = "lesion-free" if (k_a == n_a if k_a in (0, n_a) else k_ref == n_ref) else "active"
            reasons.append(f"separation: every patient of {who} is {state}, so the hazard and odds ratios are infinite or 0 (not estimable); "
                           "the risk difference is still defined")
        ok_h, note_h = assess_ratio(hr[0], hr[1], hr[2], converged=conv_h, reasons=reasons)
        ok_o, note_o = assess_ratio(orr[0], orr[1], orr[2], converged=conv_o, reasons=reasons)
        ok_d, note_d = assess_additive(rd, lo, hi)
        note = "; ".join(dict.fromkeys(filter(None, [note_h, note_o, f"risk difference: {note_d}" if note_d else ""])))
        row.update({"hazard_ratio": hr[0], "hr_ci_low": hr[1], "hr_ci_high": hr[2], "hr_p_value": hr[3],
                    "odds_ratio": orr[0], "ci_low": orr[1], "ci_high": orr[2], "p_value": orr[3],
                    "risk_difference": rd, "rd_ci_low": float(lo), "rd_ci_high": float(hi), "estimable": bool(ok_h and ok_o and ok_d), "note": note})
        rows.append(row)
    table = pd.DataFrame(rows)[COLUMNS]
    props = table[["arm", "lesion_free_pct", "n"]].copy()
    return LesionFreeFit(table, props, bool(conv_h and conv_o), int(len(df)), ref, tuple(notes))
