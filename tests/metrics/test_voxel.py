"""Streaming voxel reliability equals a dense brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mseval.errors import InputError
from mseval.io.sparse import SparseMasks
from mseval.metrics.voxel import VoxelAccumulator


def _patient(rng, shape=(12, 10, 8), S=5):
    masks = (rng.random((S, *shape)) < rng.random(shape) * 0.3).astype(np.uint8)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    observed = rng.random(shape) < 0.1
    return masks, brain, observed


def test_streamed_patients_equal_the_dense_computation():
    """Two patients with different ensemble sizes (5 and 4 samples), folded one at a time: voxel
    counts, positives per forecast value, Brier score and AUC equal those computed on the dense
    concatenation of all in-brain voxels (AUC vs sklearn, ties half)."""
    rng = np.random.default_rng(0)
    acc = VoxelAccumulator()
    ps, ys, outside = [], [], 0
    for S in (5, 4):
        masks, brain, obs = _patient(rng, S=S)
        masks[:, 0, 0, 0] = 1  # foreground outside the brain is not scored, but counted
        acc.add(SparseMasks.from_dense(masks), brain, obs)
        outside += int(masks[:, ~brain].sum())
        ps.append(masks.mean(axis=0)[brain])
        ys.append(obs[brain])
    p, y = np.concatenate(ps), np.concatenate(ys)
    res = acc.result()
    assert res.n_voxels == p.size and res.n_patients == 2 and res.outside_brain_voxels == outside
    assert res.by_value["positives"].sum() == y.sum()
    assert res.brier == pytest.approx(np.mean((p - y) ** 2))
    assert res.auc == pytest.approx(roc_auc_score(y, p))
    for rec in res.by_value.to_dict("records"):
        sel = np.isclose(p, rec["p"])
        assert rec["voxels"] == sel.sum() and rec["positives"] == y[sel].sum()
    rel = res.reliability(4)
    assert rel["voxels"].sum() == p.size  # closed edges: p = 0 and p = 1 counted
    assert {"voxel_brier", "voxel_ece", "voxel_auc"} <= set(res.to_frame()["metric"])


def test_grid_mismatch_is_an_input_error():
    rng = np.random.default_rng(1)
    masks, brain, obs = _patient(rng)
    with pytest.raises(InputError, match="grid"):
        VoxelAccumulator().add(SparseMasks.from_dense(masks), brain[:-1], obs[:-1], where="x.npz")


def test_no_observed_voxel_is_flagged():
    rng = np.random.default_rng(2)
    masks, brain, _ = _patient(rng)
    acc = VoxelAccumulator()
    acc.add(SparseMasks.from_dense(masks), brain, np.zeros_like(brain))
    res = acc.result()
    assert np.isnan(res.auc) and any("AUC undefined" in n for n in res.notes)
