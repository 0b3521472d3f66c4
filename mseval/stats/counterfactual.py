"""Counterfactual treatment effects from forecasts of every patient under every arm.

Per patient i and arm a: E_ia = ensemble mean count under a (over the patient's follow-up).
Effect vs the reference r: difference E_ia - E_ir and ratio E_ia / E_ir (ratio left undefined,
and flagged, where E_ir = 0). Average effect per arm: the mean difference (CI from the central
limit theorem over patients) and the ratio of means sum_i E_ia / sum_i E_ir (CI by the delta
method on the log ratio, with a t critical value whose df come from the influence values' kurtosis,
`influence_t`); both are patient-level, not sample-level, uncertainty.

Estimand (ratio of means). E[mu_a] / E[mu_r] over the population these patients represent, where
mu is the forecaster's expected count: the marginal rate ratio *if the forecaster's law were the
truth*. The delta-method CI (patients as the independent unit; the ensemble's Monte Carlo noise is
inside each patient's mean) is **conditional on the forecaster**: its errors are not carried.

Forecaster error (`calibrated_counterfactual`). Where patients with observed outcomes that the
forecaster never trained on exist (held-out patients, possibly the trial's own), the per-arm
calibration factor c_a = sum_H y_j / sum_H E_j,a(j) (observed over forecast, held-out patients
randomized to a) corrects the ratio: R_cal = R * c_a / c_r. Estimand: the true marginal ratio
E[Y_a] / E[Y_r], under the assumption that the forecaster's error is, on average over patients,
a multiplicative constant per arm (calibration-in-the-large). The CI carries the sampling error of
the calibration factors through a joint delta method over patients (the union of both sets, so a
patient in both is counted once, with its correlation).
Heterogeneity (responder strata, interaction test) is in `heterogeneity.py`; Qini in `qini.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.estimability import assess_additive, assess_ratio
from mseval.stats.influence_t import t_critical

ESTIMAND = "ratio of mean forecast counts (arm vs reference) over the population these patients represent, if the forecaster's law were the truth"
DIFF_ESTIMAND = "mean difference of forecast counts over follow-up (arm minus reference), same population and law"
CONDITIONAL_ON = "the forecaster (its errors are not carried: no held-out patients with observed outcomes)"
CI_METHOD = "delta method over patients (log ratio of means; paired), t with df = 2 n / (kurtosis - 1) of the influence values"
CAL_CI_METHOD = "joint delta method over patients (log scale), t with df = 2 n / (kurtosis - 1) of the influence values"
CAL_ESTIMAND = "true ratio of mean counts (arm vs reference) over the population, forecasts calibrated per arm on held-out observed outcomes"
CAL_CONDITIONAL_ON = "the forecaster's error being a per-arm multiplicative constant (calibration-in-the-large); its sampling error is carried"


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
        # delta method for log(mean_a / mean_r) with paired patients: the influence values psi_i and their variance / n,
        # with a t critical value from psi's kurtosis (`influence_t`): se_log is noisy when rates are heavy-tailed
        ma, mr = wide[arm].mean(), ref.mean()
        se_log, crit, df_ratio = np.nan, z, np.nan
        if ma > 0 and mr > 0:
            psi = ((wide[arm] - ma) / ma - (ref - mr) / mr).to_numpy(dtype=float)
            se_log = float(np.sqrt(psi.var(ddof=1) / n)) if n > 1 else np.nan
            if n > 2:
                crit, df_ratio = t_critical(psi)
        q = np.quantile(diff, [0.1, 0.5, 0.9])
        avg.append({
            "arm": arm, "n": n, "mean_difference": md, "difference_ci_low": md - z * sd / np.sqrt(n), "difference_ci_high": md + z * sd / np.sqrt(n),
            "ratio_of_means": rom, "ratio_ci_low": rom * np.exp(-crit * se_log), "ratio_ci_high": rom * np.exp(crit * se_log), "ratio_df": df_ratio,
            "difference_p10": q[0], "difference_median": q[1], "difference_p90": q[2],
            "note": "" if r_sum > 0 else "ratio not estimable: the reference arm's forecasts hold no lesion",
        })
        a = avg[-1]
        ok, note = assess_ratio(a["ratio_of_means"], a["ratio_ci_low"], a["ratio_ci_high"], reasons=[a["note"]])
        ok_d, note_d = assess_additive(md, a["difference_ci_low"], a["difference_ci_high"])
        a.update({"estimand": ESTIMAND, "difference_estimand": DIFF_ESTIMAND, "conditional_on": CONDITIONAL_ON, "ci_method": CI_METHOD,
                  "estimable": ok, "note": note, "difference_estimable": ok_d, "difference_note": note_d})
    return CounterfactualEffects(pd.concat(rows, ignore_index=True), pd.DataFrame(avg), reference)


def calibrated_counterfactual(means: pd.DataFrame, observed: pd.DataFrame, heldout: list[str] | set[str], reference: str,
                              *, response: str = "net2", arms: list[str] | None = None) -> pd.DataFrame:
    """Counterfactual ratio of means corrected by per-arm calibration on held-out observed outcomes.

    means: forecast_means output for every patient of the counterfactual set under every arm (and
    for the held-out patients under their allocated arm); observed: one row per patient (patient_id,
    arm = allocated arm, `response` = observed count over the same follow-up as the forecasts);
    heldout: ids of patients with observed outcomes the forecaster never trained on.
    Returns one row per arm: ratio_of_means (uncalibrated), calibration_reference, calibration_arm,
    calibrated_ratio with ci_low / ci_high (95%, joint delta method), n_heldout_arm / _reference,
    estimand, conditional_on, estimable, note.
    """
    wide = means.pivot(index="patient_id", columns="arm", values="expected")
    held = observed[observed["patient_id"].isin(set(heldout)) & observed["patient_id"].isin(wide.index)]
    ids = pd.Index(sorted(set(wide.index) | set(held["patient_id"])))
    N = len(ids)
    z = stats.norm.ppf(0.975)
    arms = arms or [a for a in wide.columns if a != reference]
    in_cf = ids.isin(wide.dropna().index)
    alloc = held.set_index("patient_id")["arm"].reindex(ids)
    y = held.set_index("patient_id")[response].reindex(ids).to_numpy(dtype=float)
    alloc_mean = np.array([wide.at[i, a] if isinstance(a, str) and i in wide.index and a in wide.columns else np.nan for i, a in zip(ids, alloc)])
    rows = []
    for arm in arms:
        cols = {}
        cols["s_a"] = np.where(in_cf, wide[arm].reindex(ids).to_numpy(dtype=float), 0.0)
        cols["s_r"] = np.where(in_cf, wide[reference].reindex(ids).to_numpy(dtype=float), 0.0)
        ha, hr = (alloc == arm).to_numpy(), (alloc == reference).to_numpy()
        cols["y_a"], cols["m_a"] = np.where(ha, y, 0.0), np.where(ha, alloc_mean, 0.0)
        cols["y_r"], cols["m_r"] = np.where(hr, y, 0.0), np.where(hr, alloc_mean, 0.0)
        sign = {"s_a": 1, "s_r": -1, "y_a": 1, "m_a": -1, "y_r": -1, "m_r": 1}
        means_ = {k: float(np.nanmean(v)) for k, v in cols.items()}
        row = {"arm": arm, "n_patients": int(in_cf.sum()), "n_heldout_arm": int(ha.sum()), "n_heldout_reference": int(hr.sum()),
               "estimand": CAL_ESTIMAND, "conditional_on": CAL_CONDITIONAL_ON, "ci_method": CAL_CI_METHOD}
        nan = float("nan")
        if min(means_.values()) <= 0 or not all(np.isfinite(list(means_.values()))):
            row.update({"ratio_of_means": means_["s_a"] / means_["s_r"] if means_["s_r"] > 0 else nan, "calibration_arm": nan,
                        "calibration_reference": nan, "calibrated_ratio": nan, "ci_low": nan, "ci_high": nan, "estimable": False,
                        "note": "not estimable: no held-out patients with observed lesions (or no forecast lesions) in this arm or the reference"})
            rows.append(row)
            continue
        log_r = sum(sign[k] * np.log(m) for k, m in means_.items())
        psi = sum(sign[k] * (cols[k] - means_[k]) / means_[k] for k in cols)
        se = float(np.sqrt(np.var(psi, ddof=1) / N))
        crit, row["df"] = t_critical(psi)
        est = float(np.exp(log_r))
        row.update({"ratio_of_means": means_["s_a"] / means_["s_r"], "calibration_arm": means_["y_a"] / means_["m_a"],
                    "calibration_reference": means_["y_r"] / means_["m_r"], "calibrated_ratio": est,
                    "ci_low": est * np.exp(-crit * se), "ci_high": est * np.exp(crit * se)})
        row["estimable"], row["note"] = assess_ratio(est, row["ci_low"], row["ci_high"])
        rows.append(row)
    return pd.DataFrame(rows)
