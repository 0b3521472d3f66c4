"""Shared test data for the multi-visit analyses: a count-level trial (`simulate_count_trial`) with some
visits made missing by the contract's rule (count <NA>, reason in `missing`, and the next observed
visit's interval starting at the previous scan that took place, its count the sum over both intervals)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig


def trial_with_missing(seed: int = 3, patients_per_arm: int = 12, p_missing: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-visit table, per-patient table): every visit missed with probability `p_missing` (seeded)."""
    tr = simulate_count_trial(TrialConfig(patients_per_arm=patients_per_arm, seed=seed), samples=1)
    v = tr.visits.copy()
    v["missing"] = ""
    rng = np.random.default_rng(seed)
    miss = rng.random(len(v)) < p_missing
    v["net2"] = v["net2"].astype("Int64")
    carry_n, carry_start = 0, None
    for k in range(len(v)):
        if v.at[k, "visit_index"] == 1:
            carry_n, carry_start = 0, None
        if miss[k]:
            carry_n += int(v.at[k, "net2"])
            carry_start = v.at[k, "start_weeks"] if carry_start is None else carry_start
            v.loc[k, ["net2", "gd_count"]] = pd.NA
            v.at[k, "missing"] = "missed"
            continue
        if carry_start is not None:
            v.at[k, "net2"] = int(v.at[k, "net2"]) + carry_n
            v.at[k, "start_weeks"] = carry_start
            carry_n, carry_start = 0, None
    return v, tr.table
