"""The lesion-free endpoint: follow-up respected (cloglog + offset), risk difference with Newcombe CI, separation flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mseval.stats.lesion_free import fit_lesion_free


def _trial(seed: int, n: int = 600, hr: float = 0.5, short_followup_in_drug: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.repeat(["placebo", "drug"], n // 2)
    years = rng.uniform(0.5, 1.0, n)
    if short_followup_in_drug:
        years = np.where(arm == "drug", years * 0.5, years)
    lam = 1.2 * np.where(arm == "drug", hr, 1.0)  # hazard of the first lesion per year
    return pd.DataFrame({"arm": arm, "followup_years": years, "net2": rng.poisson(lam * years)})


def test_cloglog_hazard_ratio_respects_follow_up() -> None:
    """Drug patients followed half as long: the crude odds ratio of being lesion-free is inflated by the
    shorter follow-up, the cloglog hazard ratio with offset log(years) recovers the true 0.5 (CI covers)."""
    d = _trial(5, n=2000, short_followup_in_drug=True)
    lf = fit_lesion_free(d, reference="placebo").table.set_index("arm").loc["drug"]
    assert lf["hr_ci_low"] < 0.5 < lf["hr_ci_high"]
    assert lf["estimable"] and lf["risk_difference"] > 0
    ignoring = fit_lesion_free(d.drop(columns="followup_years"), reference="placebo", offset_years=None).table.set_index("arm").loc["drug"]
    assert ignoring["hr_ci_high"] < 0.5  # without follow-up the apparent effect is exaggerated


def test_risk_difference_is_newcombe() -> None:
    """Newcombe's worked example (Newcombe 1998, Table II, example (a)): 56/70 vs 48/80, CI 0.0524 to 0.3339."""
    d = pd.DataFrame({"arm": ["a"] * 70 + ["placebo"] * 80,
                      "net2": [0] * 56 + [1] * 14 + [0] * 48 + [2] * 32, "followup_years": 1.0})
    r = fit_lesion_free(d, reference="placebo").table.set_index("arm").loc["a"]
    assert r["risk_difference"] == pytest.approx(0.2, abs=1e-12)
    assert (r["rd_ci_low"], r["rd_ci_high"]) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_separation_is_flagged_and_the_risk_difference_kept() -> None:
    d = _trial(3, n=60)
    d.loc[d["arm"] == "drug", "net2"] = 0  # every drug patient lesion-free
    fit = fit_lesion_free(d, reference="placebo")
    r = fit.table.set_index("arm").loc["drug"]
    assert not r["estimable"] and "separation" in r["note"]
    assert r["risk_difference"] > 0 and np.isfinite(r["rd_ci_low"]) and r["rd_ci_high"] <= 1.0
    assert "not estimable" in fit.summary()
