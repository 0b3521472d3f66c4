"""Connected components of masks given as foreground voxel indices, without a dense volume.

A NET2 mask of a few thousand voxels in a 7-million-voxel grid is labelled from its runs along
the last axis: a run is a maximal stretch of foreground voxels in one (x, y) row. Two runs in
neighbouring rows touch when their z-intervals overlap (faces) or come within one voxel (edges
and corners, by connectivity); the components of that run graph
(`scipy.sparse.csgraph.connected_components`) are the lesions. Several masks of one grid (an
ensemble) are labelled in one call, so the per-call cost is paid once per block, not per mask.

Labels are numbered in C (raster) order of each component's first voxel, after the size filter,
which is the numbering `cc3d.connected_components` gives; `tests/lesions/test_sparse_label.py`
proves the results identical to scipy.ndimage.label and cc3d.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mseval.lesions.components import check_connectivity

# Neighbour rows (dx, dy) in the forward half-neighbourhood, and the z-reach of each, per connectivity.
_NEIGHBOURS: dict[int, list[tuple[int, int, int]]] = {
    6: [(1, 0, 0), (0, 1, 0)],
    18: [(1, 0, 1), (0, 1, 1), (1, 1, 0), (1, -1, 0)],
    26: [(1, 0, 1), (0, 1, 1), (1, 1, 1), (1, -1, 1)],
}


@dataclass(frozen=True)
class Runs:
    """Foreground runs along z of S masks on one (X, Y, Z) grid.

    sample, x, y, z0, z1: (R,) int64 (z1 exclusive), sorted by (sample, x, y, z0);
    component: (R,) int64 lesion number within its sample, 1-based, -1 where filtered out.
    """

    sample: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    component: np.ndarray

    @property
    def length(self) -> np.ndarray:
        return self.z1 - self.z0


@dataclass(frozen=True)
class SparseLabels:
    """Components of S masks: `counts` (S,) lesions per sample, `voxels` (S,) voxels kept per
    sample, and per lesion (L,) arrays `lesion_sample`, `lesion_label`, `lesion_voxels`,
    `lesion_centroid` (L, 3) voxel coordinates, `lesion_bbox` (L, 6) x0, y0, z0, x1, y1, z1
    (end exclusive), plus the `runs`."""

    counts: np.ndarray
    voxels: np.ndarray
    lesion_sample: np.ndarray
    lesion_label: np.ndarray
    lesion_voxels: np.ndarray
    lesion_centroid: np.ndarray
    lesion_bbox: np.ndarray
    runs: Runs


def _runs(indices: np.ndarray, offsets: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    X, Y, Z = shape
    n_per = np.diff(offsets)
    sample = np.repeat(np.arange(n_per.size, dtype=np.int64), n_per)
    g = indices.astype(np.int64) + sample * (X * Y * Z)  # global index, rows never span samples
    if g.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e, e
    brk = np.flatnonzero((np.diff(g) != 1) | (np.diff(g // Z) != 0)) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [g.size]))
    row = g[starts] // Z  # sample * X * Y + x * Y + y
    z0 = g[starts] % Z
    z1 = z0 + (ends - starts)
    return row, z0, z1, sample[starts], starts


def label_sparse(
    indices: np.ndarray,
    offsets: np.ndarray,
    shape: tuple[int, int, int],
    *,
    connectivity: int = 26,
    min_voxels: int = 0,
) -> SparseLabels:
    """Label S masks given as sorted flat C-order foreground indices.

    indices: (N,) sorted within each sample; offsets: (S + 1,), sample s is
    indices[offsets[s]:offsets[s + 1]]; shape: (X, Y, Z). Components under `min_voxels` are dropped.
    """
    check_connectivity(connectivity)
    X, Y, Z = (int(v) for v in shape)
    S = int(offsets.size - 1)
    row, z0, z1, sample, _ = _runs(np.asarray(indices), np.asarray(offsets), (X, Y, Z))
    R = row.size
    y = row % Y
    x = (row // Y) % X
    M = Z + 3  # keys: row * M + z + 1 keep rows apart even with the +/-1 reach
    key_start = row * M + z0 + 1
    key_end = row * M + z1 + 1
    src_parts, dst_parts = [], []
    for dx, dy, e in _NEIGHBOURS[connectivity]:
        ok = (x + dx < X) & (y + dy >= 0) & (y + dy < Y)
        a = np.flatnonzero(ok)
        if a.size == 0:
            continue
        target = row[a] + dx * Y + dy
        lo = np.searchsorted(key_end, target * M + (z0[a] - e) + 1, side="right")
        hi = np.searchsorted(key_start, target * M + (z1[a] + e) + 1, side="left")
        n = np.maximum(hi - lo, 0)
        if n.sum() == 0:
            continue
        src = np.repeat(a, n)
        first = np.repeat(lo, n)
        within = np.arange(src.size) - np.repeat(np.cumsum(n) - n, n)
        src_parts.append(src)
        dst_parts.append(first + within)
    if src_parts:
        src = np.concatenate(src_parts)
        dst = np.concatenate(dst_parts)
        graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(R, R))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.arange(R)
    length = z1 - z0
    n_comp = int(comp.max()) + 1 if R else 0
    size = np.bincount(comp, weights=length, minlength=n_comp).astype(np.int64)
    # Order components by their first run (runs are in raster order), as cc3d numbers them.
    first_run = np.full(n_comp, R, dtype=np.int64)
    np.minimum.at(first_run, comp, np.arange(R))
    keep = size >= max(min_voxels, 1)
    order = np.argsort(first_run, kind="stable")
    order = order[keep[order]]
    comp_sample = sample[first_run[order]] if order.size else np.zeros(0, np.int64)
    counts = np.bincount(comp_sample, minlength=S).astype(np.int64)
    # label within sample: 1.. in raster order
    starts_per_sample = np.concatenate(([0], np.cumsum(counts)[:-1]))
    lesion_label = np.arange(order.size, dtype=np.int64) - np.repeat(starts_per_sample, counts) + 1
    new_id = np.full(n_comp, -1, dtype=np.int64)
    new_id[order] = np.arange(order.size)
    run_lesion = new_id[comp] if R else np.zeros(0, np.int64)
    kept = run_lesion >= 0
    L = order.size
    lesion_voxels = size[order]
    rl, ln = run_lesion[kept], length[kept]
    cx = np.bincount(rl, weights=ln * x[kept], minlength=L)
    cy = np.bincount(rl, weights=ln * y[kept], minlength=L)
    cz = np.bincount(rl, weights=ln * (z0[kept] + z1[kept] - 1) / 2.0, minlength=L)
    centroid = np.stack([cx, cy, cz], axis=1) / np.maximum(lesion_voxels, 1)[:, None] if L else np.zeros((0, 3))
    bbox = np.zeros((L, 6), dtype=np.int64)
    if L:
        big = np.iinfo(np.int64).max
        lo3 = np.full((L, 3), big, dtype=np.int64)
        hi3 = np.full((L, 3), -1, dtype=np.int64)
        for k, (lo_v, hi_v) in enumerate([(x[kept], x[kept] + 1), (y[kept], y[kept] + 1), (z0[kept], z1[kept])]):
            np.minimum.at(lo3[:, k], rl, lo_v)
            np.maximum.at(hi3[:, k], rl, hi_v)
        bbox = np.concatenate([lo3, hi3], axis=1)
    voxels = np.bincount(comp_sample, weights=lesion_voxels, minlength=S).astype(np.int64) if L else np.zeros(S, np.int64)
    run_component = np.full(R, -1, dtype=np.int64)
    run_component[kept] = lesion_label[rl]
    runs = Runs(sample, x, y, z0, z1, run_component)
    return SparseLabels(counts, voxels, comp_sample, lesion_label, lesion_voxels, centroid, bbox, runs)
