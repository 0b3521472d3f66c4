"""Lesion counts are identical to scipy.ndimage.label with the matching structuring element and
the same size filter, for the dense (cc3d) and the sparse (run-graph) labellers alike."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mseval.io.sparse import SparseMasks
from mseval.lesions.components import count_lesions, label_lesions, min_voxels_for
from mseval.lesions.sparse_label import label_sparse

RANK = {6: 1, 18: 2, 26: 3}


def scipy_reference(mask: np.ndarray, connectivity: int, min_voxels: int) -> tuple[np.ndarray, int]:
    """scipy.ndimage.label, then drop components under min_voxels and renumber in raster order."""
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, RANK[connectivity]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= max(min_voxels, 1))
    keep = keep[keep > 0]
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[keep] = np.arange(1, keep.size + 1)  # scipy numbers in raster order of first voxel too
    return lut[labels], int(keep.size)


masks = st.builds(
    lambda shape, density, seed: (np.random.default_rng(seed).random(shape) < density).astype(np.uint8),
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=400, deadline=None)
@given(mask=masks, connectivity=st.sampled_from([6, 18, 26]), min_voxels=st.integers(0, 6))
@example(mask=np.array([[[1, 0, 1]]], dtype=np.uint8), connectivity=26, min_voxels=0)  # cc3d bool-input bug
def test_dense_and_sparse_labels_equal_scipy(mask: np.ndarray, connectivity: int, min_voxels: int) -> None:
    ref_labels, ref_n = scipy_reference(mask, connectivity, min_voxels)
    labels, n = label_lesions(mask, connectivity=connectivity, min_voxels=min_voxels)
    assert n == ref_n
    assert np.array_equal(labels, ref_labels)
    sp = SparseMasks.from_dense(mask[None])
    lab = label_sparse(sp.indices, sp.offsets, sp.shape, connectivity=connectivity, min_voxels=min_voxels)
    assert lab.counts.tolist() == [ref_n]
    # the same lesions, in the same order: sizes and run labels agree with the dense labelling
    assert lab.lesion_voxels.tolist() == np.bincount(ref_labels.ravel(), minlength=ref_n + 1)[1:].tolist()
    r = lab.runs
    for k in range(r.x.size):
        want = ref_labels[r.x[k], r.y[k], r.z0[k] : r.z1[k]]
        assert np.all(want == max(r.component[k], 0))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_sparse_block_of_many_samples_equals_per_sample(data: st.DataObject) -> None:
    """Labelling S samples in one call never joins lesions across samples."""
    n = data.draw(st.integers(1, 6))
    seeds = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n))
    block = np.stack([(np.random.default_rng(s).random((6, 7, 5)) < data.draw(st.floats(0.05, 0.7))).astype(np.uint8) for s in seeds])
    conn = data.draw(st.sampled_from([6, 18, 26]))
    sp = SparseMasks.from_dense(block)
    lab = label_sparse(sp.indices, sp.offsets, sp.shape, connectivity=conn, min_voxels=2)
    assert lab.counts.tolist() == [scipy_reference(m, conn, 2)[1] for m in block]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_edge_cases(connectivity: int) -> None:
    shape = (5, 6, 7)
    empty, full = np.zeros(shape, np.uint8), np.ones(shape, np.uint8)
    diag = np.zeros(shape, np.uint8)
    for i in range(5):
        diag[i, i, i] = 1  # touching only at corners
    edge_diag = np.zeros(shape, np.uint8)
    edge_diag[0, 0, 0] = edge_diag[1, 1, 0] = 1  # touching at an edge, on the volume border
    faces = np.zeros(shape, np.uint8)
    faces[4, 5, 5:7] = 1  # a run ending on the last voxel of the volume
    expected = {
        "empty": 0, "full": 1,
        "diag": {6: 5, 18: 5, 26: 1}[connectivity],
        "edge_diag": {6: 2, 18: 1, 26: 1}[connectivity],
        "faces": 1,
    }
    for name, m in {"empty": empty, "full": full, "diag": diag, "edge_diag": edge_diag, "faces": faces}.items():
        assert label_lesions(m, connectivity=connectivity)[1] == expected[name], name
        sp = SparseMasks.from_dense(m[None])
        assert label_sparse(sp.indices, sp.offsets, sp.shape, connectivity=connectivity).counts[0] == expected[name], name


def test_sparse_lesion_table_equals_dense_table() -> None:
    rng = np.random.default_rng(3)
    m = (ndimage.gaussian_filter(rng.random((20, 22, 24)), 1.2) > 0.56).astype(np.uint8)
    aff = np.diag([1.2, 0.9, 3.0, 1.0])
    aff[:3, 3] = [-5, 7, 11]
    dense = count_lesions(m, aff, connectivity=26, min_volume_mm3=10.0)
    sp = SparseMasks.from_dense(m[None])
    lab = label_sparse(sp.indices, sp.offsets, sp.shape, connectivity=26, min_voxels=dense.min_voxels)
    assert dense.count == lab.counts[0] > 3
    t = dense.lesions
    assert np.array_equal(t["voxels"], lab.lesion_voxels)
    assert np.allclose(t[["centroid_x", "centroid_y", "centroid_z"]], lab.lesion_centroid)
    assert np.array_equal(t[["bbox_x0", "bbox_y0", "bbox_z0", "bbox_x1", "bbox_y1", "bbox_z1"]], lab.lesion_bbox)
    assert np.allclose(t["volume_mm3"], t["voxels"] * 1.2 * 0.9 * 3.0)
    world = t[["centroid_x", "centroid_y", "centroid_z"]].to_numpy() @ aff[:3, :3].T + aff[:3, 3]
    assert np.allclose(t[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]], world)


def test_min_volume_to_voxels() -> None:
    assert min_voxels_for(3.0, 1.0) == 3 and min_voxels_for(3.0, 1.0, strict=True) == 4
    assert min_voxels_for(3.0, 2.0) == 2 and min_voxels_for(3.0, 2.0, strict=True) == 2
    assert min_voxels_for(0.0, 1.0) == 0 and min_voxels_for(3.0, 220.0) == 1
    m = np.zeros((6, 6, 6), np.uint8)
    m[0, 0, 0:3] = 1  # 3 mm^3 at 1 mm: kept by >= 3, dropped by > 3
    m[3, 3, 3:5] = 1
    assert count_lesions(m, np.eye(4), min_volume_mm3=3.0).count == 1
    assert count_lesions(m, np.eye(4), min_volume_mm3=0.0).count == 2
