"""Splitting a rendered mask among a trajectory's lesions (`forecast.image_count_render`): components claimed by the
drawn centres, the earliest birth for merged shapes, unclaimed shapes dropped, lost centres flagged, nested visits."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.image_count_render import masks_at_visits, split_by_birth


def _mask() -> np.ndarray:
    m = np.zeros((16, 16, 16), dtype=bool)
    m[2:4, 2:4, 2:4] = True  # A: 8 voxels, holds centre 0
    m[8:11, 8:10, 8:10] = True  # B: 12 voxels, holds centres 1 and 2 (merged shapes)
    m[13:15, 2:4, 12:14] = True  # C: 8 voxels, no centre near it: dropped
    m[2:4, 12:14, 2:4] = True  # D: 8 voxels, centre 4 one voxel outside it
    return m


def test_components_go_to_the_centres_that_claim_them() -> None:
    centres = np.array([[2, 2, 2], [8, 8, 8], [10, 9, 9], [6, 6, 13], [4, 12, 2]])
    birth = np.array([0, 2, 1, 0, 1])
    s = split_by_birth(_mask(), centres, birth, voxel_mm3=2.0)
    assert s.lost.tolist() == [False, False, False, True, False]
    assert s.merged_into.tolist() == [-1, 2, -1, -1, -1]  # B's owner is lesion 2, born earlier (visit 1) than lesion 1
    assert s.volume_mm3.tolist() == [16.0, 0.0, 24.0, 0.0, 16.0]
    assert s.dropped_voxels == 8
    assert s.labels[2, 2, 2] == 1 and s.labels[9, 9, 9] == 2 and s.labels[3, 13, 3] == 2 and s.labels[13, 2, 12] == 0


def test_visits_are_nested_and_the_last_holds_every_claimed_voxel() -> None:
    m = _mask()
    s = split_by_birth(m, np.array([[2, 2, 2], [9, 9, 9], [2, 12, 2]]), np.array([2, 0, 1]))
    v = masks_at_visits(s.labels[None], 3)
    assert v.shape == (3, 1, 16, 16, 16)
    assert v[0].sum() == 12 and v[1].sum() == 20 and v[2].sum() == 28
    assert (v[0] <= v[1]).all() and (v[1] <= v[2]).all()  # a lesion present at visit k is present, voxel for voxel, later
    assert (v[2][0] == (m & (s.labels > 0))).all()


def test_no_centre_no_lesion_and_mismatched_births_refused() -> None:
    s = split_by_birth(_mask(), np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert s.labels.max() == 0 and s.dropped_voxels == int(_mask().sum()) and len(s.volume_mm3) == 0
    with pytest.raises(ValueError, match="birth"):
        split_by_birth(_mask(), np.array([[2, 2, 2]]), np.array([0, 1]))
