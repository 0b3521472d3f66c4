"""NET2 lesions from two visits: which follow-up lesions are new, which enlarging.

The rule (there is no single standard; every output records its parameters):
1. Lesions are the connected components of each visit's T2 lesion mask (`connectivity`); the
   follow-up's components under `min_volume_mm3` are dropped.
2. A follow-up lesion is **new** when none of its voxels is in the baseline lesion mask.
3. Otherwise it is **enlarging** when it grew, against the baseline lesions it overlaps (their
   whole volume, summed), by at least `enlarge_rel` (relative, default 0.5 = +50%) **and** at least
   `enlarge_abs_mm3` (default 3 mm^3); else it is **stable** and not a NET2 lesion.
4. The NET2 mask holds the whole follow-up extent of every new and enlarging lesion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mseval.lesions.components import check_connectivity, label_lesions, lesion_table, min_voxels_for, voxel_volume


@dataclass(frozen=True)
class Net2Rule:
    """Parameters of the new/enlarging rule (see the module docstring)."""

    connectivity: int = 26
    min_volume_mm3: float = 3.0
    enlarge_rel: float = 0.5
    enlarge_abs_mm3: float = 3.0

    def __post_init__(self) -> None:
        check_connectivity(self.connectivity)
        if self.enlarge_rel < 0 or self.enlarge_abs_mm3 < 0 or self.min_volume_mm3 < 0:
            raise ValueError("thresholds must not be negative")


@dataclass(frozen=True)
class Net2Result:
    """mask: (X, Y, Z) uint8 NET2 mask; lesions: one row per follow-up lesion with its `class`
    (new / enlarging / stable) and growth; counts of each class."""

    mask: np.ndarray
    lesions: pd.DataFrame
    rule: Net2Rule

    @property
    def n_new(self) -> int:
        return int((self.lesions["class"] == "new").sum())

    @property
    def n_enlarging(self) -> int:
        return int((self.lesions["class"] == "enlarging").sum())

    @property
    def count(self) -> int:
        return self.n_new + self.n_enlarging

    def to_frame(self) -> pd.DataFrame:
        return self.lesions

    def summary(self) -> str:
        stable = int((self.lesions["class"] == "stable").sum())
        return f"{self.count} NET2 lesions ({self.n_new} new, {self.n_enlarging} enlarging; {stable} stable) under {asdict(self.rule)}"


def net2_from_visits(baseline: np.ndarray, followup: np.ndarray, affine: np.ndarray, rule: Net2Rule = Net2Rule()) -> Net2Result:
    """Classify the follow-up lesions of `followup` against `baseline` (both (X, Y, Z) binary on
    the grid of `affine`) and build the NET2 mask."""
    vv = voxel_volume(affine)
    fu_labels, n = label_lesions(followup, connectivity=rule.connectivity, min_voxels=min_voxels_for(rule.min_volume_mm3, vv))
    base_labels, nb = label_lesions(baseline, connectivity=rule.connectivity)
    table = lesion_table(fu_labels, n, np.asarray(affine, dtype=float))
    base_size = np.bincount(base_labels.ravel(), minlength=nb + 1)
    fg = fu_labels > 0
    pairs = np.unique(np.stack([fu_labels[fg & (base_labels > 0)], base_labels[fg & (base_labels > 0)]]), axis=1)
    overlap = np.bincount(fu_labels[fg & (baseline > 0)], minlength=n + 1)[1:]
    base_vox = np.bincount(pairs[0], weights=base_size[pairs[1]], minlength=n + 1)[1:] if pairs.size else np.zeros(n)
    fu_vox = table["voxels"].to_numpy(dtype=float)
    growth_mm3 = (fu_vox - base_vox) * vv
    with np.errstate(divide="ignore", invalid="ignore"):
        growth_rel = np.where(base_vox > 0, (fu_vox - base_vox) / base_vox, np.inf)
    enlarging = (overlap > 0) & (growth_rel >= rule.enlarge_rel) & (growth_mm3 >= rule.enlarge_abs_mm3)
    cls = np.where(overlap == 0, "new", np.where(enlarging, "enlarging", "stable"))
    table.insert(1, "class", cls)
    table["baseline_overlap_voxels"] = overlap.astype(np.int64)
    table["baseline_volume_mm3"] = base_vox * vv
    table["growth_mm3"] = np.where(overlap > 0, growth_mm3, np.nan)
    table["growth_rel"] = np.where(overlap > 0, growth_rel, np.nan)
    keep = table.loc[table["class"] != "stable", "label"].to_numpy()
    mask = np.isin(fu_labels, keep).astype(np.uint8)
    return Net2Result(mask, table, rule)
