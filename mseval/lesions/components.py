"""Count the lesions of a binary mask: connected components (connected-components-3d) and a size filter.

Connectivity 6, 18 or 26 (faces; + edges; + corners). The size filter keeps a component when its
voxel count is at least `min_voxels`; `min_voxels_for` turns a minimum volume in mm^3 into that
count (inclusive `>=` by default, `strict=True` for a rule written as `> V mm^3`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
import pandas as pd

CONNECTIVITIES = (6, 18, 26)
LESION_COLUMNS = [
    "label", "voxels", "volume_mm3",
    "centroid_x", "centroid_y", "centroid_z", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_x0", "bbox_y0", "bbox_z0", "bbox_x1", "bbox_y1", "bbox_z1",
]
"""Per-lesion table columns (a public contract). Centroids in voxel indices and in world mm (the
affine); bounding boxes as voxel index ranges, start inclusive, end exclusive."""


def check_connectivity(connectivity: int) -> int:
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return int(connectivity)


def voxel_volume(affine_or_spacing: np.ndarray | tuple[float, float, float]) -> float:
    """Voxel volume in mm^3 from a (4, 4) affine or an (sx, sy, sz) spacing in mm."""
    a = np.asarray(affine_or_spacing, dtype=float)
    if a.shape == (4, 4):
        return float(abs(np.linalg.det(a[:3, :3])))
    if a.shape == (3,):
        return float(np.prod(a))
    raise ValueError(f"expected a (4, 4) affine or 3 spacings, got shape {a.shape}")


def min_voxels_for(min_volume_mm3: float, voxel_mm3: float, *, strict: bool = False) -> int:
    """Smallest voxel count whose volume passes `>= min_volume_mm3` (or `>` with `strict`)."""
    if min_volume_mm3 <= 0:
        return 1 if strict and min_volume_mm3 == 0 else 0
    q = min_volume_mm3 / voxel_mm3
    n = math.floor(q + 1e-9) + 1 if strict else math.ceil(q - 1e-9)
    return max(int(n), 0)


def label_lesions(mask: np.ndarray, *, connectivity: int = 26, min_voxels: int = 0) -> tuple[np.ndarray, int]:
    """Label components of `mask` (X, Y, Z) and drop those under `min_voxels` voxels.

    Returns labels (X, Y, Z) uint32, numbered 1..n in cc3d's scan order (C order of each
    component's first voxel), and n.
    """
    check_connectivity(connectivity)
    # uint8, not bool: cc3d 4.1.1 fails on bool volumes one voxel wide at 26-connectivity
    # (found by the hypothesis test); binarised first, since cc3d labels each value apart.
    m = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if min_voxels > 1:
        labels = cc3d.dust(m, threshold=min_voxels, connectivity=connectivity, in_place=False)
        labels, n = cc3d.connected_components(labels, connectivity=connectivity, return_N=True)
    else:
        labels, n = cc3d.connected_components(m, connectivity=connectivity, return_N=True)
    return labels.astype(np.uint32, copy=False), int(n)


@dataclass(frozen=True)
class LesionCount:
    """The lesions of one mask: `count`, total `volume_mm3`, and one row per lesion in `lesions`
    (columns `LESION_COLUMNS`), with the settings that produced them."""

    count: int
    volume_mm3: float
    lesions: pd.DataFrame
    connectivity: int
    min_voxels: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.lesions

    def summary(self) -> str:
        return (
            f"{self.count} lesions, {self.volume_mm3:.1f} mm^3 "
            f"({self.connectivity}-connectivity, components of >= {self.min_voxels} voxels)"
        )


def lesion_table(labels: np.ndarray, n: int, affine: np.ndarray) -> pd.DataFrame:
    """Per-lesion table of labels 1..n (columns `LESION_COLUMNS`)."""
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64" if "centroid" in c or c == "volume_mm3" else "int64") for c in LESION_COLUMNS})
    stats = cc3d.statistics(labels, no_slice_conversion=True)
    voxels = np.asarray(stats["voxel_counts"][1 : n + 1], dtype=np.int64)
    cent = np.asarray(stats["centroids"][1 : n + 1], dtype=np.float64)
    bbox = np.asarray(stats["bounding_boxes"][1 : n + 1], dtype=np.int64).reshape(n, 6)
    world = cent @ affine[:3, :3].T + affine[:3, 3]
    vv = voxel_volume(affine)
    return pd.DataFrame(
        {
            "label": np.arange(1, n + 1, dtype=np.int64),
            "voxels": voxels,
            "volume_mm3": voxels * vv,
            "centroid_x": cent[:, 0], "centroid_y": cent[:, 1], "centroid_z": cent[:, 2],
            "centroid_x_mm": world[:, 0], "centroid_y_mm": world[:, 1], "centroid_z_mm": world[:, 2],
            "bbox_x0": bbox[:, 0], "bbox_y0": bbox[:, 2], "bbox_z0": bbox[:, 4],
            "bbox_x1": bbox[:, 1] + 1, "bbox_y1": bbox[:, 3] + 1, "bbox_z1": bbox[:, 5] + 1,
        }
    )


def count_lesions(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    connectivity: int = 26,
    min_volume_mm3: float = 3.0,
    min_voxels: int | None = None,
) -> LesionCount:
    """Count the lesions of one binary mask (X, Y, Z).

    affine: (4, 4) voxel -> world mm (volumes and world centroids come from it). Components under
    `min_volume_mm3` (or, when given, `min_voxels`) are dropped.
    """
    vv = voxel_volume(affine)
    mv = min_voxels if min_voxels is not None else min_voxels_for(min_volume_mm3, vv)
    labels, n = label_lesions(mask, connectivity=connectivity, min_voxels=mv)
    table = lesion_table(labels, n, np.asarray(affine, dtype=float))
    return LesionCount(
        count=n,
        volume_mm3=float(table["voxels"].sum() * vv) if n else 0.0,
        lesions=table,
        connectivity=connectivity,
        min_voxels=mv,
        settings={"connectivity": connectivity, "min_volume_mm3": min_volume_mm3, "min_voxels": mv},
    )
