"""Prognostic covariate adjustment (PROCOVA: Schuler et al., Int J Biostat 2021; EMA qualification
opinion, 2022), with the gain measured on OBSERVED outcomes only.

Score. The forecast under the reference arm, as log expected count (ensemble mean + 1/(2S) so that
an all-zero ensemble stays finite): a baseline function of the images, so adjusting for it cannot
bias the randomized comparison.

Estimand of the adjusted analysis: the rate ratio conditional on the score (NB2, arm + score).
When the effect differs between patients it is a different estimand from the marginal ratio;
the test of no effect keeps its level.

The gain. Everything here comes from the observed counts of the randomized patients, never from
outcomes drawn from the forecasts (that would be circular: the score predicts its own draws):
- sample_size_saving_pct = 100 (1 - V_adj / V_unadj), V the Wald variance of the log rate ratio
  in the observed NB2 fits without and with the score: the share of patients the adjusted
  analysis needs for the same precision. Its 95% CI: percentile patient bootstrap (resampling
  within arms, as randomized), both models refitted in every replicate.
  Under a useless score the realised saving is slightly negative (a covariate that explains
  nothing costs a little precision through chance imbalance), so this CI can sit just below 0.
- procova_correlation: PROCOVA's rho, the Pearson correlation of the score with the observed
  log annualised count (log((y + 0.5) / years)), pooled within arms, with its Fisher-z 95% CI;
  procova_saving_pct = 100 rho^2 (PROCOVA's saving for a linear analysis; a guide for counts,
  not exact), its CI from the rho interval (lower bound 0 when that interval includes 0).

Independence. The score must come from a forecaster that never learned from this trial's patients
(`mseval.heldout.prognostic_independence`, read from the store's provenance): one that trained on
them predicts their outcomes in-sample, so the saving is optimistic; `with_independence` then flags
every row (estimable False, the note says how many patients it saw) and says so where the
provenance is unknown.

Attainable saving (simulated cohorts). `attainable_saving` applies the same formula with the
observable oracle's mean count under the reference arm as the score (the best prediction any
forecaster can make from the baseline; `mseval.simulate.observable_oracle`): the column
`attainable_saving_pct`, labelled "attainable (observable oracle)", beside the measured one.
A real cohort has no oracle: the column is absent there, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import fit_count_model
from mseval.stats.design import design_matrix
from mseval.stats.nb2_mle import fit_nb2, nb2_wald

ESTIMAND = ("sample-size saving of the score-adjusted NB2 analysis vs the unadjusted one for the same precision, "
            "estimated from the observed outcomes of the randomized patients")
CONDITIONAL_ON = "the observed trial only (no forecast-drawn outcomes); CI by patient bootstrap within arms"
ATTAINABLE_LABEL = "attainable (observable oracle)"
ATTAINABLE_ESTIMAND = ("sample-size saving the same adjusted analysis would show on this trial with the observable oracle's mean count "
                       "under the reference arm as the score (the best baseline prediction; simulated cohorts only)")


@dataclass(frozen=True)
class PrognosticAdjustment:
    """One row per arm: rate ratio and SE of its log without and with the prognostic score,
    SE reduction (%), implied sample-size saving (%) with its bootstrap CI, PROCOVA's correlation
    with its CI, estimand, conditional_on, estimable, note."""

    table: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = ["Prognostic adjustment with the reference-arm forecast (log expected count); gain measured on observed outcomes"]
        for r in self.table.itertuples():
            lines.append(f"  {r.arm:16s} SE {r.se_unadjusted:.3f} -> {r.se_adjusted:.3f}; saving {r.sample_size_saving_pct:.1f}% "
                         f"(95% CI {r.saving_ci_low_pct:.1f} to {r.saving_ci_high_pct:.1f})" if r.estimable else f"  {r.arm:16s} {r.note}")
        return "\n".join(lines)


def prognostic_score(means: pd.DataFrame, reference: str) -> pd.Series:
    """log(ensemble mean under the reference + 1/(2S)) per patient_id."""
    ref = means[means["arm"] == reference].set_index("patient_id")
    return np.log(ref["expected"] + 0.5 / ref["samples"]).rename("prognostic_score")


def procova_correlation(d: pd.DataFrame, *, response: str = "net2", years: str = "followup_years") -> tuple[float, float, float]:
    """(rho, ci_low, ci_high): within-arm pooled Pearson correlation of the score with log((y + 0.5) / years)."""
    y = np.log((d[response].to_numpy(dtype=float) + 0.5) / d[years].to_numpy(dtype=float))
    s = d["prognostic_score"].to_numpy(dtype=float)
    g = d["arm"].astype(str).to_numpy()
    yc, sc = y.copy(), s.copy()
    for a in np.unique(g):
        m = g == a
        yc[m] -= y[m].mean()
        sc[m] -= s[m].mean()
    den = np.sqrt((yc**2).sum() * (sc**2).sum())
    if den <= 0:
        return float("nan"), float("nan"), float("nan")
    r = float((yc * sc).sum() / den)
    dof = len(y) - len(np.unique(g)) - 1
    if dof < 2 or abs(r) >= 1:
        return r, float("nan"), float("nan")
    zr, h = np.arctanh(r), stats.norm.ppf(0.975) / np.sqrt(dof - 1)
    return r, float(np.tanh(zr - h)), float(np.tanh(zr + h))


def _savings(models: list[tuple], arms: list[str], idx: np.ndarray) -> np.ndarray:
    """1 - V_adj / V_unadj per arm on the table rows idx. models: for the unadjusted and the adjusted
    model, (y, X, offset, names, row_of, start beta, start alpha) built once on the whole table."""
    out = np.full(len(arms), np.nan)
    fits = []
    for y, X, off, names, row_of, beta0, alpha0 in models:
        r = row_of[idx]
        r = r[r >= 0]
        f = fit_nb2(y[r], X[r], off[r], beta0=beta0, alpha0=alpha0)
        wald = nb2_wald(X[r], off[r], f.beta, f.alpha)
        if not (f.converged and wald.ok):
            return out
        fits.append((names, np.diag(wald.vcov)))
    (n0, v0), (n1, v1) = fits
    for k, arm in enumerate(arms):
        if arm in n0 and arm in n1:
            out[k] = 1.0 - v1[n1.index(arm)] / v0[n0.index(arm)]
    return out


def prognostic_adjustment(table: pd.DataFrame, means: pd.DataFrame, reference: str, formula: str = "net2 ~ arm", *,
                          n_boot: int = 200, seed: int = 0) -> PrognosticAdjustment:
    """Observed NB2 with and without the prognostic score; the saving's CI by `n_boot` patient resamples."""
    d = table.merge(prognostic_score(means, reference), left_on="patient_id", right_index=True).reset_index(drop=True)
    plain = fit_count_model(d, formula, reference=reference).table.set_index("term")
    arms = [a for a in plain.index if a in set(d["arm"]) and a != reference]
    rho, rho_lo, rho_hi = procova_correlation(d, response=formula.split("~", 1)[0].strip())
    sq = (rho_lo**2, rho_hi**2)
    common = {"procova_correlation": rho, "procova_correlation_ci_low": rho_lo, "procova_correlation_ci_high": rho_hi,
              "procova_saving_pct": 100 * rho**2, "procova_saving_ci_low_pct": 0.0 if rho_lo <= 0 <= rho_hi else 100 * min(sq),
              "procova_saving_ci_high_pct": 100 * max(sq),
              "estimand": ESTIMAND, "conditional_on": CONDITIONAL_ON}
    nan = float("nan")
    if d["prognostic_score"].std() < 1e-9:  # e.g. all-zero forecasts: the score is collinear with the intercept
        rows = [{"arm": arm, "rate_ratio_unadjusted": plain.loc[arm, "rate_ratio"], "rate_ratio_adjusted": nan, "ci_low_adjusted": nan,
                 "ci_high_adjusted": nan, "se_unadjusted": float(plain.loc[arm, "se"]), "se_adjusted": nan, "se_reduction_pct": nan,
                 "sample_size_saving_pct": nan, "saving_ci_low_pct": nan, "saving_ci_high_pct": nan, "bootstrap_failed": 0,
                 "prognostic_rate_ratio_per_log_unit": nan, **common, "estimable": False,
                 "note": "not estimable: the prognostic score is the same for every patient"} for arm in arms]
        return PrognosticAdjustment(pd.DataFrame(rows))
    adj = fit_count_model(d, f"{formula} + prognostic_score", reference=reference).table.set_index("term")
    response, rhs = (x.strip() for x in formula.split("~", 1))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero((d["arm"] == a).to_numpy()) for a in pd.unique(d["arm"])]
    models = []
    for r in (rhs, rhs + " + prognostic_score"):  # design once; warm starts from the full-data fits
        des = design_matrix(d, r, reference=reference)
        y = d[response].to_numpy(dtype=float)[des.rows]
        f = fit_nb2(y, des.X, des.offset)
        row_of = np.full(len(d), -1)
        row_of[des.rows] = np.arange(len(des.rows))
        models.append((y, des.X, des.offset, des.names, row_of, f.beta, f.alpha))
    d = d.reset_index(drop=True)
    boot = np.array([_savings(models, arms, np.concatenate([rng.choice(g, len(g)) for g in groups]))
                     for _ in range(n_boot)]) if n_boot > 0 else np.empty((0, len(arms)))
    rows = []
    for k, arm in enumerate(arms):
        s0, s1 = float(plain.loc[arm, "se"]), float(adj.loc[arm, "se"])
        b = boot[:, k] if len(boot) else np.empty(0)
        ok_b = b[np.isfinite(b)]
        lo, hi = (100 * np.quantile(ok_b, [0.025, 0.975])) if len(ok_b) >= 20 else (nan, nan)
        failed = int(len(b) - len(ok_b))
        note = "" if len(ok_b) >= 20 else "saving CI not estimable: too few bootstrap fits converged"
        if failed and not note:
            note = f"{failed} of {len(b)} bootstrap replicates did not converge and are left out"
        rows.append({
            "arm": arm, "rate_ratio_unadjusted": plain.loc[arm, "rate_ratio"], "rate_ratio_adjusted": adj.loc[arm, "rate_ratio"],
            "ci_low_adjusted": adj.loc[arm, "ci_low"], "ci_high_adjusted": adj.loc[arm, "ci_high"],
            "se_unadjusted": s0, "se_adjusted": s1, "se_reduction_pct": 100 * (1 - s1 / s0),
            "sample_size_saving_pct": 100 * (1 - (s1 / s0) ** 2), "saving_ci_low_pct": float(lo), "saving_ci_high_pct": float(hi),
            "bootstrap_replicates": int(len(b)), "bootstrap_failed": failed,
            "prognostic_rate_ratio_per_log_unit": adj.loc["prognostic_score", "rate_ratio"], **common,
            "estimable": bool(np.isfinite(s1) and np.isfinite(s0)), "note": note,
        })
    return PrognosticAdjustment(pd.DataFrame(rows))


def with_independence(table: pd.DataFrame, independence: dict) -> pd.DataFrame:
    """`table` with the forecaster's independence (`mseval.heldout.prognostic_independence`) in
    `forecaster_independence`; every row flagged (estimable False) when the forecaster saw trial
    patients, its note joined to each row's note (also when the provenance is unknown)."""
    out = table.copy()
    out["forecaster_independence"] = independence["status"]
    note = independence.get("note") or ""
    if note:
        out["note"] = [f"{note}; {n}" if isinstance(n, str) and n else note for n in out["note"]]
    if not independence.get("estimable", True):
        out["estimable"] = False
    return out


def attainable_saving(table: pd.DataFrame, oracle_reference_mean: pd.Series, reference: str, formula: str = "net2 ~ arm") -> pd.DataFrame:
    """Per arm: the sample-size saving (%) of `prognostic_adjustment` with the score log(oracle mean
    under the reference) (`oracle_reference_mean`: expected count by patient_id over the patient's
    follow-up), on the same observed trial: arm, attainable_saving_pct, attainable_label, attainable_estimand."""
    means = pd.DataFrame({"patient_id": oracle_reference_mean.index.astype(str), "arm": reference,
                          "expected": oracle_reference_mean.to_numpy(dtype=float), "samples": np.inf})
    res = prognostic_adjustment(table, means, reference, formula, n_boot=0).table
    return pd.DataFrame({"arm": res["arm"], "attainable_saving_pct": np.where(res["estimable"], res["sample_size_saving_pct"], np.nan),
                         "attainable_label": ATTAINABLE_LABEL, "attainable_estimand": ATTAINABLE_ESTIMAND})
