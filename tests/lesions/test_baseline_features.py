"""Baseline features read from the masks equal what the simulator drew (so the references see the inputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mseval.io.cohort import read_cohort
from mseval.lesions.baseline_features import FEATURE_COLUMNS, baseline_features


def test_features_from_the_masks_are_the_simulated_counts(tiny_cohort):
    cohort = read_cohort(tiny_cohort)
    f = baseline_features(cohort).set_index("patient_id")
    assert list(f.reset_index().columns[: len(FEATURE_COLUMNS)]) == list(FEATURE_COLUMNS)
    m = cohort.manifest.set_index("patient_id")
    lesions = pd.read_csv(tiny_cohort / "truth_lesions.csv")
    n_base = lesions[lesions["kind"] != "new"].groupby("patient_id").size()
    truth = cohort.truth[cohort.truth["allocated"]].set_index("patient_id")
    assert (f["gd_count"] == m.loc[f.index, "gd_count"]).all()
    assert (f["t2_count"] == n_base.loc[f.index]).all()
    assert np.allclose(f["t2_volume_mm3"], m.loc[f.index, "t2_volume_mm3"], rtol=1e-6)
    assert (f["net2"] == truth.loc[f.index, "realized_count"].astype(int)).all()
    assert np.allclose(f["followup_years"] * 52.1775, m.loc[f.index, "followup_weeks"], rtol=1e-3)


def test_without_net2_masks_there_is_no_outcome_column(cohort_copy):
    man = pd.read_csv(cohort_copy / "manifest.csv")
    man["net2_mask"] = None  # a trial export before follow-up: the column is optional
    man.to_csv(cohort_copy / "manifest.csv", index=False)
    f = baseline_features(read_cohort(cohort_copy))
    assert "net2" not in f and len(f) == len(man)
    assert (f["t2_count"] >= f["gd_count"]).all() and (f["t2_count"] >= 1).all()
