"""NET2 rule: hand-built cases for each branch, and the simulator's own cohorts (whose lesion
kinds are known)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.io.cohort import read_cohort
from mseval.lesions.net2 import Net2Rule, net2_from_visits

EYE = np.eye(4)


def _cube(m: np.ndarray, lo: int, hi: int, at: tuple[int, int, int]) -> None:
    x, y, z = at
    m[x + lo : x + hi, y + lo : y + hi, z + lo : z + hi] = 1


def test_new_enlarging_stable_and_thresholds() -> None:
    base, fu = np.zeros((30, 30, 30), np.uint8), np.zeros((30, 30, 30), np.uint8)
    _cube(base, 0, 2, (2, 2, 2)); _cube(fu, 0, 3, (2, 2, 2))          # 8 -> 27 voxels: +238%, +19 mm^3
    _cube(base, 0, 3, (10, 10, 10)); _cube(fu, 0, 3, (10, 10, 10))    # unchanged: stable
    _cube(base, 0, 4, (20, 2, 2)); fu[20:24, 2:6, 2:7] = 1             # 64 -> 80: +25%: stable at 0.5, enlarging at 0.2
    _cube(fu, 0, 2, (25, 25, 25))                                      # new
    fu[2, 25, 25] = 1                                                  # 1 voxel: under 3 mm^3, dropped
    res = net2_from_visits(base, fu, EYE)
    assert sorted(res.lesions["class"]) == ["enlarging", "new", "stable", "stable"]
    assert res.count == 2 and res.mask.sum() == 27 + 8
    looser = net2_from_visits(base, fu, EYE, Net2Rule(enlarge_rel=0.2))
    assert looser.n_enlarging == 2
    stricter = net2_from_visits(base, fu, EYE, Net2Rule(enlarge_abs_mm3=20.0))
    assert stricter.n_enlarging == 0  # +19 mm^3 is under the absolute threshold
    assert net2_from_visits(base, fu, EYE, Net2Rule(min_volume_mm3=0.0)).n_new == 2


def test_merge_compares_with_all_baseline_lesions_it_touches() -> None:
    base, fu = np.zeros((20, 20, 20), np.uint8), np.zeros((20, 20, 20), np.uint8)
    _cube(base, 0, 2, (2, 2, 2)); _cube(base, 0, 2, (2, 2, 6))   # two lesions, 8 voxels each
    fu[2:4, 2:4, 2:8] = 1                                        # one lesion of 24 voxels bridging both
    res = net2_from_visits(base, fu, EYE)
    row = res.lesions.iloc[0]
    assert row["baseline_volume_mm3"] == 16 and row["growth_rel"] == pytest.approx(0.5) and row["class"] == "enlarging"


def test_empty_visits() -> None:
    z = np.zeros((8, 8, 8), np.uint8)
    res = net2_from_visits(z, z, EYE)
    assert res.count == 0 and len(res.lesions) == 0 and res.mask.sum() == 0


def test_simulated_cohort_kinds_are_recovered(tiny_cohort: Path) -> None:
    """From baseline and follow-up T2 masks alone, the rule finds exactly the simulator's NET2 mask
    and lesion kinds (the simulator grows enlarging lesions by >= 50% and >= 3 voxels)."""
    c = read_cohort(tiny_cohort)
    truth = pd.read_csv(tiny_cohort / "truth_lesions.csv")
    seen = {"new": 0, "enlarging": 0}
    for pid in c.patient_ids:
        v = c.load_patient(pid, ("t2_lesion_mask", "t2_lesion_mask_followup", "net2_mask"))
        res = net2_from_visits(v["t2_lesion_mask"].data, v["t2_lesion_mask_followup"].data, v["net2_mask"].affine)
        assert np.array_equal(res.mask, v["net2_mask"].data), pid
        mine = truth[truth["patient_id"] == pid]
        for kind in seen:
            assert (res.lesions["class"] == kind).sum() == (mine["kind"] == kind).sum(), (pid, kind)
            seen[kind] += int((mine["kind"] == kind).sum())
    assert seen["new"] > 0 and seen["enlarging"] > 0
