"""Counterfactual treatment effects from forecasts of every patient under every arm.

Per patient i and arm a: E_ia = ensemble mean count under a (over the patient's follow-up).
Effect vs the reference r: difference E_ia - E_ir and ratio E_ia / E_ir (ratio left undefined,
and flagged, where E_ir = 0). Average effect per arm: the mean difference (CI from the central
limit theorem over patients) and the ratio of means sum_i E_ia / sum_i E_ir (CI by the delta
method on the log ratio); both are patient-level, not sample-level, uncertainty.

Predicted responders (Falet et al., Nat Commun 2022): rank patients by predicted benefit
E_ir - E_ia, and estimate the **observed** effect (NB2 rate ratio of the observed counts) among
the patients randomized to a or r within the top 10/30/50%. The Qini curve orders the same
randomized patients by predicted benefit and plots the cumulative observed reduction in counts
(reference-arm mean minus treated-arm mean, scaled to the treated patients seen so far).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import fit_count_model


@dataclass(frozen=True)
class CounterfactualEffects:
    """patients: one row per patient x arm (expected, expected_reference, difference, ratio);
    average: one row per non-reference arm (mean_difference with CI, ratio_of_means with CI,
    per-patient difference quantiles)."""

    patients: pd.DataFrame
    average: pd.DataFrame
    reference: str

    def to_frame(self) -> pd.DataFrame:
        return self.average

    def summary(self) -> str:
        lines = [f"Counterfactual effects vs {self.reference} (ensemble means, {self.patients['patient_id'].nunique()} patients)"]
        for r in self.average.itertuples():
            lines.append(
                f"  {r.arm:16s} ratio of means {r.ratio_of_means:6.3f} ({r.ratio_ci_low:.3f} to {r.ratio_ci_high:.3f}); "
                f"mean difference {r.mean_difference:+.2f} lesions ({r.difference_ci_low:+.2f} to {r.difference_ci_high:+.2f})"
            )
        return "\n".join(lines)


def counterfactual_effects(means: pd.DataFrame, reference: str) -> CounterfactualEffects:
    """means: forecast_means output (patient_id, arm, expected)."""
    wide = means.pivot(index="patient_id", columns="arm", values="expected")
    ref = wide[reference]
    rows, avg = [], []
    z = stats.norm.ppf(0.975)
    n = len(wide)
    for arm in wide.columns:
        diff = wide[arm] - ref
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, wide[arm] / ref, np.nan)
        rows.append(pd.DataFrame({"patient_id": wide.index, "arm": arm, "expected": wide[arm].to_numpy(),
                                  "expected_reference": ref.to_numpy(), "difference": diff.to_numpy(), "ratio": ratio,
                                  "ratio_defined": ref.to_numpy() > 0}))
        if arm == reference:
            continue
        md, sd = float(diff.mean()), float(diff.std(ddof=1)) if n > 1 else 0.0
        a_sum, r_sum = float(wide[arm].sum()), float(ref.sum())
        rom = a_sum / r_sum if r_sum > 0 else np.nan
        # delta method for log(mean_a / mean_r) with paired patients
        va, vr = wide[arm].var(ddof=1), ref.var(ddof=1)
        cov = np.cov(wide[arm], ref, ddof=1)[0, 1] if n > 1 else 0.0
        ma, mr = wide[arm].mean(), ref.mean()
        se_log = np.sqrt(max(va / ma**2 + vr / mr**2 - 2 * cov / (ma * mr), 0.0) / n) if ma > 0 and mr > 0 else np.nan
        q = np.quantile(diff, [0.1, 0.5, 0.9])
        avg.append({
            "arm": arm, "n": n, "mean_difference": md, "difference_ci_low": md - z * sd / np.sqrt(n), "difference_ci_high": md + z * sd / np.sqrt(n),
            "ratio_of_means": rom, "ratio_ci_low": rom * np.exp(-z * se_log), "ratio_ci_high": rom * np.exp(z * se_log),
            "difference_p10": q[0], "difference_median": q[1], "difference_p90": q[2],
            "note": "" if r_sum > 0 else "ratio not estimable: the reference arm's forecasts hold no lesion",
        })
    return CounterfactualEffects(pd.concat(rows, ignore_index=True), pd.DataFrame(avg), reference)


@dataclass(frozen=True)
class ResponderStrata:
    """table: one row per (arm, stratum): fraction, patients randomized to the arm / reference in
    the stratum, predicted rate ratio, observed NB2 rate ratio with CI, and (simulated cohorts) the
    true mean rate ratio of the stratum's patients."""

    table: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = ["Observed effects in predicted-responder strata (patients randomized to arm or reference)"]
        for r in self.table.itertuples():
            lines.append(f"  {r.arm:16s} {r.stratum:9s} n={r.n_arm}+{r.n_reference}  observed RR {r.observed_rate_ratio:.3f} ({r.ci_low:.3f} to {r.ci_high:.3f})")
        return "\n".join(lines)


def _benefit(cf: CounterfactualEffects, arm: str) -> pd.Series:
    p = cf.patients[cf.patients["arm"] == arm].set_index("patient_id")
    return p["expected_reference"] - p["expected"]


def responder_strata(
    table: pd.DataFrame,
    cf: CounterfactualEffects,
    arms: list[str] | None = None,
    fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0),
    *,
    truth: pd.DataFrame | None = None,
    response: str = "net2",
) -> ResponderStrata:
    """Observed effect among the top `fractions` of predicted benefit (1.0 = everyone)."""
    ref = cf.reference
    arms = arms or [a for a in cf.patients["arm"].unique() if a != ref]
    rows = []
    for arm in arms:
        benefit = _benefit(cf, arm)
        rand = table[table["arm"].isin([arm, ref])].copy()
        rand["benefit"] = benefit.loc[rand["patient_id"]].to_numpy()
        rand = rand.sort_values(["benefit", "patient_id"], ascending=[False, True])
        for f in fractions:
            top = rand.iloc[: max(int(round(f * len(rand))), 2)]
            n_a, n_r = int((top["arm"] == arm).sum()), int((top["arm"] == ref).sum())
            row = {"arm": arm, "stratum": "all" if f >= 1 else f"top {round(100 * f)}%", "fraction": f, "n_arm": n_a, "n_reference": n_r}
            p = cf.patients.set_index(["patient_id", "arm"])
            ids = top["patient_id"]
            row["predicted_rate_ratio"] = float(p.loc[[(i, arm) for i in ids], "expected"].sum() / max(p.loc[[(i, ref) for i in ids], "expected"].sum(), 1e-12))
            est = {"observed_rate_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "note": ""}
            if n_a >= 2 and n_r >= 2 and top[response].sum() > 0:
                try:
                    fit = fit_count_model(top, f"{response} ~ arm", reference=ref)
                    r = fit.rate_ratio(arm)
                    est = {"observed_rate_ratio": r.rate_ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                           "note": "" if fit.converged else "not converged"}
                except Exception as exc:  # noqa: BLE001 - small strata may not be estimable; say so
                    est["note"] = f"not estimable: {exc}"
            else:
                est["note"] = "too few patients or no events"
            row.update(est)
            if truth is not None:
                t = truth.set_index(["patient_id", "arm"])
                row["true_rate_ratio"] = float(t.loc[[(i, arm) for i in ids], "expected_count"].sum() / t.loc[[(i, ref) for i in ids], "expected_count"].sum())
            rows.append(row)
    return ResponderStrata(pd.DataFrame(rows))


@dataclass(frozen=True)
class QiniCurve:
    """curve: one row per (arm, step): fraction of randomized patients targeted, qini (cumulative
    observed reduction in lesions), random (the straight line); area: per arm, the area between
    the curve and the random line, also normalised by the total reduction (qini_coefficient)."""

    curve: pd.DataFrame
    area: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.area


def qini_curve(table: pd.DataFrame, cf: CounterfactualEffects, arms: list[str] | None = None, *, response: str = "net2", years: str = "followup_years") -> QiniCurve:
    """Qini curve of predicted benefit against observed annualised counts, per treated arm."""
    ref = cf.reference
    arms = arms or [a for a in cf.patients["arm"].unique() if a != ref]
    curves, areas = [], []
    for arm in arms:
        d = table[table["arm"].isin([arm, ref])].copy()
        d["benefit"] = _benefit(cf, arm).loc[d["patient_id"]].to_numpy()
        d = d.sort_values(["benefit", "patient_id"], ascending=[False, True])
        y = d[response].to_numpy(dtype=float) / d[years].to_numpy(dtype=float)
        t = (d["arm"] == arm).to_numpy()
        n_t, n_c = np.cumsum(t), np.cumsum(~t)
        y_t, y_c = np.cumsum(y * t), np.cumsum(y * ~t)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(n_c > 0, y_c * n_t / n_c, 0.0) - y_t
        frac = np.arange(1, len(d) + 1) / len(d)
        q = np.concatenate([[0.0], q])
        frac = np.concatenate([[0.0], frac])
        rand = frac * q[-1]
        area = float(np.trapezoid(q - rand, frac))
        curves.append(pd.DataFrame({"arm": arm, "fraction": frac, "qini": q, "random": rand}))
        areas.append({"arm": arm, "qini_area": area, "total_reduction": float(q[-1]),
                      "qini_coefficient": area / abs(q[-1]) if q[-1] != 0 else np.nan, "n": int(len(d))})
    return QiniCurve(pd.concat(curves, ignore_index=True), pd.DataFrame(areas))
