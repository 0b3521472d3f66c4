"""Lesion placement of the simulated forecasters (`mseval.simulate.lesions.add_net2_lesions`) in a full white matter."""

from __future__ import annotations

import numpy as np
import pytest

from mseval.simulate.lesions import LesionField, add_net2_lesions


def _full_field() -> tuple[LesionField, list[int]]:
    """A 16^3 block of allowed voxels filled with baseline lesions until no new one fits."""
    allowed = np.zeros((20, 20, 20), bool)
    allowed[2:18, 2:18, 2:18] = True
    lf = LesionField(allowed=allowed, weights=allowed.astype(float), spacing=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    base: list[int] = []
    while (lid := lf.place_new(rng, median_radius_mm=1.2, min_voxels=4)) is not None:
        base.append(lid)
    return lf, base


def test_a_new_lesion_without_room_enlarges_an_unused_baseline_lesion_and_only_no_room_at_all_raises() -> None:
    lf, base = _full_field()
    kw = dict(baseline_ids=base, p_enlarging=0.0, new_radius_mm=1.2, min_voxels=4)
    f = lf.copy()
    out = add_net2_lesions(f, 40, np.random.default_rng(1), **kw)
    kinds = [k for _, k in out]
    ids = [lid for lid, _ in out]
    assert len(out) == 40 and kinds.count("enlarging") >= 35  # no new lesion of 4 voxels fits: they enlarge instead
    assert len(set(ids)) == 40 and set(ids) - {lid for lid, k in out if k == "new"} <= set(base)  # each lesion counted once
    grown = [lid for lid, k in out if k == "enlarging"]
    assert all(f.voxels(lid) > lf.voxels(lid) for lid in grown)
    with pytest.raises(RuntimeError, match="no room for NET2 lesion"):
        add_net2_lesions(lf.copy(), 10 * len(base), np.random.default_rng(1), **kw)
