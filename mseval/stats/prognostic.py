"""Prognostic covariate adjustment (the PROCOVA idea; EMA qualification opinion, 2022).

The forecast under the reference arm, as log expected count (ensemble mean + 1/(2S) so that an
all-zero ensemble stays finite), enters the observed NB2 analysis as a covariate. Being a
baseline function of the images, it cannot bias the randomized comparison; it shrinks the
standard error of the log rate ratio when it predicts the outcome. Implied saving in sample size
for the same power: 1 - (SE_adjusted / SE_unadjusted)^2.

Caution: the adjusted rate ratio is conditional on the score. When the effect differs between
patients (effect modification), it is a different estimand from the marginal ratio of means, and
the two can differ by more than their standard errors; the test of no effect keeps its level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mseval.stats.count_model import fit_count_model


@dataclass(frozen=True)
class PrognosticAdjustment:
    """One row per arm: rate ratio and SE of its log without and with the prognostic score,
    SE reduction (%) and implied sample-size saving (%)."""

    table: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def summary(self) -> str:
        lines = ["Prognostic adjustment with the reference-arm forecast (log expected count)"]
        for r in self.table.itertuples():
            lines.append(f"  {r.arm:16s} SE {r.se_unadjusted:.3f} -> {r.se_adjusted:.3f} ({r.se_reduction_pct:.1f}% smaller; {r.sample_size_saving_pct:.1f}% fewer patients)")
        return "\n".join(lines)


def prognostic_score(means: pd.DataFrame, reference: str) -> pd.Series:
    """log(ensemble mean under the reference + 1/(2S)) per patient_id."""
    ref = means[means["arm"] == reference].set_index("patient_id")
    return np.log(ref["expected"] + 0.5 / ref["samples"]).rename("prognostic_score")


def prognostic_adjustment(table: pd.DataFrame, means: pd.DataFrame, reference: str, formula: str = "net2 ~ arm") -> PrognosticAdjustment:
    d = table.merge(prognostic_score(means, reference), left_on="patient_id", right_index=True)
    plain = fit_count_model(d, formula, reference=reference).table.set_index("term")
    if d["prognostic_score"].std() < 1e-9:  # e.g. all-zero forecasts: the score is collinear with the intercept
        nan = float("nan")
        rows = [{"arm": arm, "rate_ratio_unadjusted": plain.loc[arm, "rate_ratio"], "rate_ratio_adjusted": nan, "ci_low_adjusted": nan,
                 "ci_high_adjusted": nan, "se_unadjusted": float(plain.loc[arm, "se"]), "se_adjusted": nan, "se_reduction_pct": nan,
                 "sample_size_saving_pct": nan, "prognostic_rate_ratio_per_log_unit": nan,
                 "note": "not estimable: the prognostic score is the same for every patient"}
                for arm in plain.index if arm in set(d["arm"])]
        return PrognosticAdjustment(pd.DataFrame(rows))
    adj = fit_count_model(d, f"{formula} + prognostic_score", reference=reference).table.set_index("term")
    rows = []
    for arm in plain.index:
        if arm == "prognostic_score" or arm not in set(d["arm"]):
            continue
        s0, s1 = float(plain.loc[arm, "se"]), float(adj.loc[arm, "se"])
        rows.append({
            "arm": arm, "rate_ratio_unadjusted": plain.loc[arm, "rate_ratio"], "rate_ratio_adjusted": adj.loc[arm, "rate_ratio"],
            "ci_low_adjusted": adj.loc[arm, "ci_low"], "ci_high_adjusted": adj.loc[arm, "ci_high"],
            "se_unadjusted": s0, "se_adjusted": s1, "se_reduction_pct": 100 * (1 - s1 / s0),
            "sample_size_saving_pct": 100 * (1 - (s1 / s0) ** 2),
            "prognostic_rate_ratio_per_log_unit": adj.loc["prognostic_score", "rate_ratio"], "note": "",
        })
    return PrognosticAdjustment(pd.DataFrame(rows))
