"""Lesion-wise matching of a predicted and a reference mask, and the detection metrics it gives.

`match_lesions(pred, ref, affine, rule)` labels both masks (connected components, minimum size on
the side(s) the rule names), counts the voxels every predicted lesion shares with every reference
lesion from the joint labels of the overlapping voxels (one `np.unique` over label pairs, never a
loop over lesion masks), scores each overlapping pair by the rule's criterion and matches:
optimal one-to-one (`scipy.optimize.linear_sum_assignment`), greedy one-to-one, or per side
(`many`). The result holds the per-patient counts and scores (`to_frame()`, columns
`MATCH_COLUMNS`) and one row per lesion (`lesion_frame()`, columns `LESION_MATCH_COLUMNS`).

Counts: `tp_ref` reference lesions detected, `tp_pred` predicted lesions that detect a reference
lesion, `fp = count_pred - tp_pred`, `fn = count_ref - tp_ref`. Lesion precision is
`tp_pred / count_pred`, recall `tp_ref / count_ref` (NaN when that side has no lesion), F1 as the
rule says. Voxel Dice and volumes come from the masks as given (no size filter). A case with no
lesion on either side is an `empty_case`: precision, recall, F1 (and Dice when both masks are
empty) take the rule's `empty_value` (NaN = not scored), so empty cases are never averaged in
silently; filter on `empty_case` to report them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mseval.lesions.components import label_lesions, min_voxels_for, voxel_volume
from mseval.lesions.presets import DEFAULT_RULE, DetectionRule

MATCH_COLUMNS = [
    "rule", "connectivity", "min_volume_mm3", "min_voxels", "min_size_side", "criterion", "threshold", "matching",
    "tp_ref", "tp_pred", "fp", "fn", "precision", "recall", "f1", "dice",
    "count_pred", "count_ref", "count_diff",
    "volume_pred_mm3", "volume_ref_mm3", "volume_diff_mm3", "abs_volume_diff_mm3", "rel_volume_diff",
    "empty_case", "empty_value",
]
"""Per-patient columns of `LesionMatch.to_frame()`. `tp_ref, tp_pred, fp, fn, precision, recall,
f1, dice` are a public contract. Volumes in mm^3 from the affine; `count_diff = count_pred -
count_ref`; `volume_diff_mm3 = volume_pred - volume_ref`; `rel_volume_diff = volume_diff /
volume_ref` (NaN when the reference is empty)."""

LESION_MATCH_COLUMNS = [
    "side", "label", "voxels", "volume_mm3", "counted", "matched_label", "overlap_voxels", "criterion_value", "iou", "detected",
]
"""Per-lesion columns of `LesionMatch.lesion_frame()`: side 'pred' or 'ref'; label 1..n on that
side; counted (False for a lesion under the minimum size that the rule keeps out of the counts);
matched_label (0 when none): the one-to-one partner, or with `many` the best-scoring lesion on the
other side; overlap_voxels and iou with that partner; criterion_value: the score that decided
detection (NaN when the lesion overlaps nothing); detected: whether it passed."""


@dataclass(frozen=True)
class LesionMatch:
    """Lesion-wise comparison of one prediction with one reference under one `DetectionRule`."""

    rule: DetectionRule
    min_voxels: int
    voxel_mm3: float
    tp_ref: int
    tp_pred: int
    fp: int
    fn: int
    count_pred: int
    count_ref: int
    precision: float
    recall: float
    f1: float
    dice: float
    volume_pred_mm3: float
    volume_ref_mm3: float
    empty_case: bool
    lesions: pd.DataFrame = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row, columns `MATCH_COLUMNS`."""
        r = self.rule
        vdiff = self.volume_pred_mm3 - self.volume_ref_mm3
        row: dict[str, Any] = {
            "rule": r.name, "connectivity": r.connectivity, "min_volume_mm3": r.min_volume_mm3,
            "min_voxels": self.min_voxels, "min_size_side": r.min_size_side, "criterion": r.criterion,
            "threshold": r.threshold, "matching": r.matching,
            "tp_ref": self.tp_ref, "tp_pred": self.tp_pred, "fp": self.fp, "fn": self.fn,
            "precision": self.precision, "recall": self.recall, "f1": self.f1, "dice": self.dice,
            "count_pred": self.count_pred, "count_ref": self.count_ref, "count_diff": self.count_pred - self.count_ref,
            "volume_pred_mm3": self.volume_pred_mm3, "volume_ref_mm3": self.volume_ref_mm3,
            "volume_diff_mm3": vdiff, "abs_volume_diff_mm3": abs(vdiff),
            "rel_volume_diff": vdiff / self.volume_ref_mm3 if self.volume_ref_mm3 > 0 else math.nan,
            "empty_case": self.empty_case, "empty_value": r.empty_value,
        }
        return pd.DataFrame([row], columns=MATCH_COLUMNS)

    def lesion_frame(self) -> pd.DataFrame:
        """One row per lesion of either side, columns `LESION_MATCH_COLUMNS`."""
        return self.lesions

    def summary(self) -> str:
        """A few lines for a person."""
        r = self.rule

        def f(x: float) -> str:
            return "NaN" if math.isnan(x) else f"{x:.3f}"

        lines = [
            f"rule {r.name}: {r.describe()}",
            f"lesions: {self.count_pred} predicted, {self.count_ref} reference (components of >= {self.min_voxels} voxels"
            f" on {r.min_size_side}; voxel {self.voxel_mm3:g} mm^3)",
            f"TP_ref {self.tp_ref}  TP_pred {self.tp_pred}  FP {self.fp}  FN {self.fn}",
            f"precision {f(self.precision)}  recall {f(self.recall)}  F1 {f(self.f1)}  voxel Dice {f(self.dice)}",
            f"volume: predicted {self.volume_pred_mm3:.1f} mm^3, reference {self.volume_ref_mm3:.1f} mm^3",
        ]
        if self.empty_case:
            lines.append(f"empty case (no lesion on either side): scores set to the rule's empty value {f(r.empty_value)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Labelling


@dataclass(frozen=True)
class _Side:
    labels: np.ndarray  # (X, Y, Z) uint32, 0 = background, lesions 1..n
    n: int
    sizes: np.ndarray  # (n + 1,) voxels per label, sizes[0] unused
    counted: np.ndarray  # (n + 1,) bool, counted[0] False
    region: np.ndarray | None = None  # labels of the region a partner must touch (dilated reference), else None


def _label_side(mask: np.ndarray, rule: DetectionRule, side: str, min_voxels: int) -> _Side:
    sized = side in rule.size_sides and min_voxels > 1
    remove = sized and rule.small_lesions == "remove"
    labels, n = label_lesions(mask, connectivity=rule.connectivity, min_voxels=min_voxels if remove else 0)
    region = None
    if side == "ref" and rule.ref_dilation > 0 and n > 0:
        labels, n, region = _merge_by_dilation(labels, rule)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.int64)
    counted = np.ones(n + 1, dtype=bool)
    counted[0] = False
    if sized and not remove:
        counted &= sizes >= min_voxels
    return _Side(labels, n, sizes, counted, region)


def _merge_by_dilation(labels: np.ndarray, rule: DetectionRule) -> tuple[np.ndarray, int, np.ndarray]:
    """BraTS 2023: components whose dilations connect become one lesion.

    The reference is dilated `rule.ref_dilation` times with the 18-neighbourhood (3x3x3 minus
    corners) and labelled at `rule.connectivity`; each dilated component is one merged lesion, and
    it is also the region a prediction must touch to detect that lesion.
    """
    struct = ndimage.generate_binary_structure(3, 2)
    dilated = ndimage.binary_dilation(labels > 0, structure=struct, iterations=rule.ref_dilation)
    region, n = cc3d.connected_components(dilated, connectivity=rule.connectivity, return_N=True)
    region = region.astype(np.uint32, copy=False)
    merged = np.where(labels > 0, region, 0).astype(np.uint32)
    return merged, int(n), region


# --------------------------------------------------------------------------------------------
# Overlaps and scores


def overlap_pairs(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels shared by every overlapping (pred, ref) lesion pair.

    pred_labels, ref_labels: (X, Y, Z) label maps with lesions 1..n_pred and 1..n_ref.
    Returns (pred_label, ref_label, voxels) arrays of equal length, one entry per pair that shares
    at least one voxel, sorted by pred label then ref label. Cost O(voxels), one `np.unique` over
    the joint labels of the voxels both sides cover.
    """
    both = (pred_labels > 0) & (ref_labels > 0)
    if not both.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    key = pred_labels[both].astype(np.int64) * (n_ref + 1) + ref_labels[both].astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // (n_ref + 1), uniq % (n_ref + 1), counts.astype(np.int64)


def pair_scores(criterion: str, inter: np.ndarray, pred_size: np.ndarray, ref_size: np.ndarray) -> np.ndarray:
    """Pairwise criterion from voxel counts (arrays of equal length; float64).

    'overlap' 1 for every overlapping pair; 'iou' inter/(pred+ref-inter); 'dsc' 2 inter/(pred+ref);
    'ref_coverage' inter/ref.
    """
    inter = inter.astype(np.float64)
    ps = pred_size.astype(np.float64)
    rs = ref_size.astype(np.float64)
    if criterion == "overlap":
        return np.where(inter > 0, 1.0, 0.0)
    if criterion == "iou":
        return inter / (rs + ps - inter)
    if criterion == "dsc":
        return 2.0 * inter / (rs + ps)
    if criterion == "ref_coverage":
        return inter / rs
    raise ValueError(f"unknown criterion {criterion!r}")


def _passes(values: np.ndarray, rule: DetectionRule) -> np.ndarray:
    if rule.criterion == "overlap":
        return values > 0
    return values > rule.threshold if rule.threshold_strict else values >= rule.threshold


# --------------------------------------------------------------------------------------------
# Matching


def hungarian_pairs(pred: np.ndarray, ref: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Optimal one-to-one matching over candidate pairs; returns the indices of the chosen pairs.

    pred, ref: label of each candidate pair; score: its value in (0, 1]. The matching has the most
    pairs possible and, among those, the largest summed score: `linear_sum_assignment` maximises
    weights `B + score` with B larger than any number of pairs, run on each connected group of the
    pair graph (so the matrices stay as small as the groups).
    """
    if pred.size == 0:
        return np.zeros(0, dtype=np.int64)
    pu, pi = np.unique(pred, return_inverse=True)
    ru, ri = np.unique(ref, return_inverse=True)
    graph = coo_matrix((np.ones(pred.size), (pi, ri + pu.size)), shape=(pu.size + ru.size,) * 2)
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[pi]
    chosen: list[np.ndarray] = []
    for c in np.unique(pair_comp):
        idx = np.flatnonzero(pair_comp == c)
        if idx.size == 1:
            chosen.append(idx)
            continue
        rows, r_inv = np.unique(pi[idx], return_inverse=True)
        cols, c_inv = np.unique(ri[idx], return_inverse=True)
        big = min(rows.size, cols.size) + 1.0
        weight = np.zeros((rows.size, cols.size))
        weight[r_inv, c_inv] = big + score[idx]
        lookup = np.full((rows.size, cols.size), -1, dtype=np.int64)
        lookup[r_inv, c_inv] = idx
        rr, cc = linear_sum_assignment(weight, maximize=True)
        hit = lookup[rr, cc]
        chosen.append(hit[hit >= 0])
    return np.sort(np.concatenate(chosen))


def greedy_pairs(pred: np.ndarray, ref: np.ndarray, score: np.ndarray, inter: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching: pairs by decreasing score (ties: more shared voxels, then lower
    ref and pred label), each taken when both lesions are still free. Returns chosen pair indices."""
    order = np.lexsort((pred, ref, -inter, -score))
    used_p: set[int] = set()
    used_r: set[int] = set()
    chosen = []
    for k in order:
        p, r = int(pred[k]), int(ref[k])
        if p in used_p or r in used_r:
            continue
        used_p.add(p)
        used_r.add(r)
        chosen.append(k)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _best_partner(own: np.ndarray, other: np.ndarray, score: np.ndarray, inter: np.ndarray, n_own: int) -> tuple[np.ndarray, np.ndarray]:
    """Per own label 1..n_own: index of its best pair (highest score, then most shared voxels,
    then lowest other label), -1 when it has none; and the best score (NaN when none)."""
    best = np.full(n_own + 1, -1, dtype=np.int64)
    order = np.lexsort((other, -inter, -score, own))
    own_sorted = own[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = own_sorted[1:] != own_sorted[:-1]
    best[own_sorted[first]] = order[first]
    best_score = np.full(n_own + 1, np.nan)
    has = best >= 0
    best_score[has] = score[best[has]]
    return best, best_score


def _coverage_detection(
    own: np.ndarray, other: np.ndarray, inter: np.ndarray, own_sizes: np.ndarray, other_sizes: np.ndarray,
    n_own: int, n_other: int, rule: DetectionRule,
) -> tuple[np.ndarray, np.ndarray]:
    """Per side ANIMA-style test for own lesions 1..n_own (the transposed table gives the other side).

    A lesion is detected when the share of it covered by all other-side lesions passes the
    threshold and, with `rule.max_outside_share` set, the other-side lesions that make up the first
    `rule.outside_check_share` of its overlap (largest first) each lie at most
    `max_outside_share` outside this side's lesions. Returns (detected, coverage) per label.
    """
    covered = np.bincount(own, weights=inter, minlength=n_own + 1)
    coverage = np.full(n_own + 1, np.nan)
    touched = covered > 0
    coverage[touched] = covered[touched] / own_sizes[touched]
    detected = touched & _passes(np.nan_to_num(coverage, nan=0.0), rule)
    detected[0] = False
    if rule.max_outside_share is None or not detected.any():
        return detected, coverage
    other_inside = np.bincount(other, weights=inter, minlength=n_other + 1)
    outside = 1.0 - other_inside / np.maximum(other_sizes, 1)
    order = np.lexsort((other, -inter, own))
    starts = np.searchsorted(own[order], np.arange(n_own + 2))
    for lab in np.flatnonzero(detected):
        idx = order[starts[lab] : starts[lab + 1]]
        total = covered[lab]
        cum = 0.0
        for k in idx:
            if cum >= rule.outside_check_share:
                break
            if outside[other[k]] > rule.max_outside_share:
                detected[lab] = False
                break
            cum += inter[k] / total
    return detected, coverage


# --------------------------------------------------------------------------------------------
# Entry point


def match_lesions(
    pred: np.ndarray,
    ref: np.ndarray,
    affine: np.ndarray | tuple[float, float, float],
    rule: DetectionRule | None = None,
) -> LesionMatch:
    """Compare the lesions of a predicted and a reference mask under `rule`.

    pred, ref: (X, Y, Z) binary masks (bool or 0/1) on the same grid. affine: (4, 4) voxel -> world
    mm, or the voxel size (sx, sy, sz) in mm; it gives volumes and turns the rule's minimum volume
    (mm^3) into a voxel count. rule: a `DetectionRule` (default `DEFAULT_RULE`; see
    `mseval.lesions.presets.PRESETS`). Raises ValueError on masks that are not 3D, binary and of
    one shape.
    """
    rule = DEFAULT_RULE if rule is None else rule
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred shape {p.shape} differs from ref shape {r.shape}")
    vv = voxel_volume(affine)
    min_vox = min_voxels_for(rule.min_volume_mm3, vv, strict=rule.strict)
    ps = _label_side(p, rule, "pred", min_vox)
    rs = _label_side(r, rule, "ref", min_vox)

    # Pairs that share voxels. With a dilated reference (BraTS), detection looks at the dilated
    # lesion while the reported overlap and IoU use the lesion itself.
    pl, rl, inter = overlap_pairs(ps.labels, ps.n, rs.labels if rs.region is None else rs.region, rs.n)
    if rs.region is None:
        inter_true = inter
    else:
        tp_, tr_, ti_ = overlap_pairs(ps.labels, ps.n, rs.labels, rs.n)
        inter_true = _lookup(tp_ * (rs.n + 1) + tr_, ti_, pl * (rs.n + 1) + rl)
    score = pair_scores(rule.criterion, inter, ps.sizes[pl], rs.sizes[rl])
    iou = pair_scores("iou", inter_true, ps.sizes[pl], rs.sizes[rl])

    pred_partner = np.full(ps.n + 1, -1, dtype=np.int64)
    ref_partner = np.full(rs.n + 1, -1, dtype=np.int64)
    if rule.matching == "many":
        pred_partner, pred_best_score = _best_partner(pl, rl, _mirror(rule.criterion, score, inter, ps.sizes[pl]), inter, ps.n)
        ref_partner, ref_best_score = _best_partner(rl, pl, score, inter, rs.n)
        if rule.criterion == "ref_coverage":
            ref_det, ref_value = _coverage_detection(rl, pl, inter, rs.sizes, ps.sizes, rs.n, ps.n, rule)
            pred_det, pred_value = _coverage_detection(pl, rl, inter, ps.sizes, rs.sizes, ps.n, rs.n, rule)
            linked = np.ones(inter.size, dtype=bool)
        else:
            ref_value, pred_value = ref_best_score, pred_best_score
            ref_det = ~np.isnan(ref_value) & _passes(np.nan_to_num(ref_value, nan=-1.0), rule)
            pred_det = ~np.isnan(pred_value) & _passes(np.nan_to_num(pred_value, nan=-1.0), rule)
            linked = _passes(score, rule)
    else:
        ok = np.flatnonzero(_passes(score, rule))
        tiebreak = iou if rule.criterion == "overlap" else score
        if rule.matching == "hungarian":
            chosen = ok[hungarian_pairs(pl[ok], rl[ok], np.maximum(tiebreak[ok], 1e-12))]
        else:
            chosen = ok[greedy_pairs(pl[ok], rl[ok], score[ok], inter[ok])]
        pred_partner[pl[chosen]] = chosen
        ref_partner[rl[chosen]] = chosen
        pred_det = pred_partner >= 0
        ref_det = ref_partner >= 0
        pred_value = np.where(pred_det, score[np.maximum(pred_partner, 0)] if score.size else 0.0, np.nan)
        ref_value = np.where(ref_det, score[np.maximum(ref_partner, 0)] if score.size else 0.0, np.nan)
        linked = np.zeros(inter.size, dtype=bool)
        linked[chosen] = True
    pred_det[0] = ref_det[0] = False

    # A lesion detected only by lesions left out of the counts (small_lesions='exclude') is left
    # out too: BraTS 2023 counts a prediction touching only a small reference lesion neither as
    # TP nor as FP.
    pred_counted, ref_counted = ps.counted.copy(), rs.counted.copy()
    if rule.small_lesions == "exclude":
        p_link = np.bincount(pl[linked], weights=rs.counted[rl[linked]], minlength=ps.n + 1) > 0
        r_link = np.bincount(rl[linked], weights=ps.counted[pl[linked]], minlength=rs.n + 1) > 0
        pred_counted &= ~(pred_det & ~p_link)
        ref_counted &= ~(ref_det & ~r_link)

    tp_pred = int((pred_det & pred_counted).sum())
    tp_ref = int((ref_det & ref_counted).sum())
    count_pred = int(pred_counted.sum())
    count_ref = int(ref_counted.sum())
    fp, fn = count_pred - tp_pred, count_ref - tp_ref
    empty = count_pred == 0 and count_ref == 0

    n_p, n_r = int(p.sum()), int(r.sum())
    both_voxels = int(np.count_nonzero(p & r))
    if n_p + n_r == 0:
        dice = rule.empty_value
    else:
        dice = 2.0 * both_voxels / (n_p + n_r)
    if empty:
        precision = recall = f1 = rule.empty_value
    else:
        precision = tp_pred / count_pred if count_pred else math.nan
        recall = tp_ref / count_ref if count_ref else math.nan
        f1 = _f1(rule.f1, tp_ref, tp_pred, fp, fn, precision, recall)

    lesions = pd.concat(
        [
            _lesion_rows("pred", ps, pred_counted, vv, pred_partner, rl, inter_true, iou, pred_value, pred_det),
            _lesion_rows("ref", rs, ref_counted, vv, ref_partner, pl, inter_true, iou, ref_value, ref_det),
        ],
        ignore_index=True,
    )
    return LesionMatch(
        rule=rule, min_voxels=min_vox, voxel_mm3=vv,
        tp_ref=tp_ref, tp_pred=tp_pred, fp=fp, fn=fn, count_pred=count_pred, count_ref=count_ref,
        precision=float(precision), recall=float(recall), f1=float(f1), dice=float(dice),
        volume_pred_mm3=n_p * vv, volume_ref_mm3=n_r * vv, empty_case=empty, lesions=lesions,
    )


def _as_mask(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask (X, Y, Z), got shape {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} is not binary; expected only 0 and 1")
        a = a.astype(bool)
    return a


def _mirror(criterion: str, score: np.ndarray, inter: np.ndarray, pred_size: np.ndarray) -> np.ndarray:
    """Pair scores seen from the prediction: 'ref_coverage' becomes the share of the pred lesion
    covered (the transposed table); the symmetric criteria are unchanged."""
    if criterion == "ref_coverage":
        return inter.astype(np.float64) / pred_size.astype(np.float64)
    return score


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q in `query` (keys sorted, unique), 0 where absent."""
    out = np.zeros(query.size, dtype=np.int64)
    if keys.size and query.size:
        pos = np.clip(np.searchsorted(keys, query), 0, keys.size - 1)
        found = keys[pos] == query
        out[found] = values[pos[found]]
    return out


def _f1(mode: str, tp_ref: int, tp_pred: int, fp: int, fn: int, precision: float, recall: float) -> float:
    if mode == "ref":
        d = tp_ref + (fp + fn) / 2
        return tp_ref / d if d else 0.0
    if mode == "pred":
        d = tp_pred + (fp + fn) / 2
        return tp_pred / d if d else 0.0
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        return 0.0  # one side has no lesion while the other has some, or nothing was detected
    return 2 * precision * recall / (precision + recall)


def _lesion_rows(
    side: str, s: _Side, counted: np.ndarray, vv: float, partner: np.ndarray, other_labels: np.ndarray, inter: np.ndarray, iou: np.ndarray,
    value: np.ndarray, detected: np.ndarray,
) -> pd.DataFrame:
    labels = np.arange(1, s.n + 1, dtype=np.int64)
    k = partner[1:]
    has = k >= 0
    kk = np.where(has, k, 0)
    return pd.DataFrame(
        {
            "side": pd.Series([side] * s.n, dtype="object"),
            "label": labels,
            "voxels": s.sizes[1:],
            "volume_mm3": s.sizes[1:] * vv,
            "counted": counted[1:],
            "matched_label": np.where(has, other_labels[kk] if other_labels.size else 0, 0).astype(np.int64),
            "overlap_voxels": np.where(has, inter[kk] if inter.size else 0, 0).astype(np.int64),
            "criterion_value": value[1:].astype(np.float64),
            "iou": np.where(has, iou[kk] if iou.size else np.nan, np.nan).astype(np.float64),
            "detected": detected[1:].astype(bool),
        },
        columns=LESION_MATCH_COLUMNS,
    )
