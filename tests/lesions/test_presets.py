"""Each named detection rule does what its evaluation's public definition says: hand-built cases for
every clause (coverage threshold, ANIMA's outside test, connectivity, size filters and their side,
BraTS's dilated reference, IoU bounds, per-side counting, empty values), and, on generated cases,
the same counts as plain loop re-implementations of the published code (ISLES'22, Shifts 2.0,
BraTS 2023, ANIMA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from mseval.lesions.matching import match_lesions
from mseval.lesions.presets import DEFAULT_RULE, PRESETS, DetectionRule, get_preset, presets_markdown, rule_from_options

EYE = np.eye(4)


def vol(shape: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def box(m: np.ndarray, x: tuple[int, int], y: tuple[int, int], z: tuple[int, int]) -> np.ndarray:
    m[x[0] : x[1], y[0] : y[1], z[0] : z[1]] = 1
    return m


def first_voxels(n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """A block of `shape` whose first `n` voxels (C order) are set: a connected slab."""
    flat = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    flat[:n] = 1
    return flat.reshape(shape)


def run(pred: np.ndarray, ref: np.ndarray, preset: str, affine: np.ndarray = EYE):  # noqa: ANN201
    return match_lesions(pred, ref, affine, PRESETS[preset])


# --- MSSEG-2 / ANIMA -------------------------------------------------------------------------


@pytest.mark.parametrize(("covered", "detected"), [(50, False), (100, False), (150, True)])
def test_msseg2_detects_a_reference_lesion_only_when_more_than_ten_percent_is_covered(covered: int, detected: bool) -> None:
    ref = box(vol(), (2, 12), (2, 12), (2, 12))  # 1000 voxels
    pred = vol()
    pred[2:12, 2:12, 2:12] = first_voxels(covered, (10, 10, 10))  # a slab inside the reference
    m = run(pred, ref, "msseg2")
    assert m.count_ref == 1 and m.count_pred == 1
    assert (m.tp_ref, m.fn) == ((1, 0) if detected else (0, 1))
    # ANIMA scores the prediction by the same test with the sides swapped: it is wholly covered,
    # but the reference lesion covering it lies > 70% outside it, so it is a false positive
    assert (m.tp_pred, m.fp) == (0, 1)
    isles = run(pred, ref, "isles22")
    assert (isles.tp_ref, isles.fn) == (1, 0)  # any overlap is enough for ISLES'22


def test_msseg2_rejects_a_detection_that_lies_mostly_outside_the_reference() -> None:
    ref = box(vol(), (10, 14), (10, 14), (10, 14))  # 64 voxels
    big = box(vol(), (8, 16), (8, 16), (6, 16))  # 640 voxels, 90% outside
    m = run(big, ref, "msseg2")
    assert (m.tp_ref, m.fn, m.tp_pred, m.fp) == (0, 1, 0, 1)
    half = box(vol(), (10, 14), (10, 14), (10, 18))  # 128 voxels, 50% outside
    m = run(half, ref, "msseg2")
    assert (m.tp_ref, m.fn, m.tp_pred, m.fp) == (1, 0, 1, 0)
    isles = run(big, ref, "isles22")
    assert (isles.tp_ref, isles.fp) == (1, 0)


def test_msseg2_removes_lesions_of_three_mm3_or_less_on_both_sides() -> None:
    ref = box(vol(), (2, 6), (2, 6), (2, 6))
    pred = box(ref.copy(), (15, 16), (15, 16), (15, 18))  # + a 3-voxel (3 mm^3) blob
    m = run(pred, ref, "msseg2")
    assert m.min_voxels == 4 and (m.count_pred, m.fp) == (1, 0)
    pred[15, 15, 18] = 1  # 4 voxels = 4 mm^3 > 3 mm^3: kept, a false positive
    assert run(pred, ref, "msseg2").fp == 1
    # 0.5 mm slices: 6 voxels = 3 mm^3 is removed, 7 voxels kept
    aff = np.diag([1.0, 1.0, 0.5, 1.0])
    small = box(vol(), (2, 3), (2, 3), (2, 8))
    assert run(small, vol(), "msseg2", aff).count_pred == 0
    small[2, 2, 8] = 1
    assert run(small, vol(), "msseg2", aff).count_pred == 1


# --- connectivity ----------------------------------------------------------------------------


def test_corner_touching_cubes_are_one_lesion_at_26_and_two_at_6_connectivity() -> None:
    ref = box(box(vol(), (2, 4), (2, 4), (2, 4)), (4, 6), (4, 6), (4, 6))
    pred = box(vol(), (2, 4), (2, 4), (2, 4))
    isles = run(pred, ref, "isles22")  # 26-connectivity
    assert (isles.count_ref, isles.tp_ref, isles.fn) == (1, 1, 0)
    shifts = run(pred, ref, "shifts")  # 6-connectivity
    assert (shifts.count_ref, shifts.tp_ref, shifts.fn, shifts.tp_pred) == (2, 1, 1, 1)
    rule18 = rule_from_options("isles22", connectivity=18)
    assert match_lesions(pred, ref, EYE, rule18).count_ref == 2


# --- BraTS 2023 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "merged"), [(10, True), (11, False)])
def test_brats2023_merges_reference_lesions_whose_dilations_touch(start: int, merged: bool) -> None:
    ref = box(box(vol((30, 12, 12)), (0, 4), (4, 8), (4, 8)), (start, start + 4), (4, 8), (4, 8))
    m = run(ref, ref, "brats2023")
    assert m.count_ref == (1 if merged else 2)
    assert m.count_pred == 2 and m.tp_pred == 2 and m.f1 == 1.0


@pytest.mark.parametrize(("gap", "detected"), [(0, True), (2, True), (3, False)])
def test_brats2023_counts_a_prediction_near_the_reference_as_a_detection(gap: int, detected: bool) -> None:
    ref = box(vol((30, 12, 12)), (4, 8), (4, 8), (4, 8))  # 64 voxels > 50 mm^3
    pred = box(vol((30, 12, 12)), (8 + gap, 12 + gap), (4, 8), (4, 8))  # `gap` empty voxels between them
    m = run(pred, ref, "brats2023")
    assert (m.tp_ref, m.fn, m.tp_pred, m.fp) == ((1, 0, 1, 0) if detected else (0, 1, 0, 1))
    assert run(pred, ref, "isles22").tp_ref == 0  # ISLES'22 needs a shared voxel (the boxes only touch)


def test_brats2023_leaves_small_reference_lesions_out_of_the_counts_only() -> None:
    shape = (30, 30, 12)
    ref = box(vol(shape), (2, 7), (2, 7), (2, 4))  # 50 voxels: not > 50 mm^3, left out
    far_pred = box(vol(shape), (20, 22), (20, 22), (2, 4))  # 8 voxels far away: a FP (no size filter on pred)
    m = run(far_pred, ref, "brats2023")
    assert (m.count_ref, m.fn, m.count_pred, m.fp) == (0, 0, 1, 1)
    on_small = box(vol(shape), (2, 4), (2, 4), (2, 4))  # touches only the small reference lesion
    m = run(on_small, ref, "brats2023")
    assert (m.count_ref, m.count_pred, m.fp, m.fn) == (0, 0, 0, 0) and m.empty_case and m.f1 == 1.0
    ref[7, 2, 2] = 1  # 51 voxels: counted, and missed by the far prediction
    m = run(far_pred, ref, "brats2023")
    assert (m.count_ref, m.fn, m.fp) == (1, 1, 1)


# --- IoU bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "shifts_tp", "panoptica_tp"), [(15, 0, 0), (16, 1, 0), (31, 1, 0), (32, 1, 1)])
def test_iou_thresholds_are_inclusive(n: int, shifts_tp: int, panoptica_tp: int) -> None:
    ref = box(vol(), (4, 8), (4, 8), (4, 8))  # 64 voxels
    pred = vol()
    pred[4:8, 4:8, 4:8] = first_voxels(n, (4, 4, 4))  # IoU n/64: 16 -> 0.25 (Shifts), 32 -> 0.5 (panoptica)
    s = run(pred, ref, "shifts")
    assert (s.tp_pred, s.fp, s.tp_ref, s.fn) == (shifts_tp, 1 - shifts_tp, shifts_tp, 1 - shifts_tp)
    p = run(pred, ref, "panoptica")
    assert (p.tp_ref, p.tp_pred, p.fp, p.fn) == (panoptica_tp, panoptica_tp, 1 - panoptica_tp, 1 - panoptica_tp)


# --- per side vs one-to-one ------------------------------------------------------------------


def test_one_prediction_over_two_references_detects_both_per_side_but_one_at_most_one_to_one() -> None:
    ref = box(box(vol((30, 12, 12)), (4, 8), (4, 8), (4, 8)), (12, 16), (4, 8), (4, 8))
    pred = box(vol((30, 12, 12)), (3, 17), (4, 8), (4, 8))
    isles = run(pred, ref, "isles22")
    assert (isles.tp_ref, isles.tp_pred, isles.fp, isles.fn, isles.f1) == (2, 1, 0, 0, 1.0)
    default = match_lesions(pred, ref, EYE, DEFAULT_RULE)  # any overlap, one-to-one
    assert (default.tp_ref, default.tp_pred, default.fp, default.fn) == (1, 1, 0, 1)
    pan = run(pred, ref, "panoptica")  # IoU 64/224 < 0.5
    assert (pan.tp_ref, pan.fp, pan.fn) == (0, 1, 2)


def test_a_reference_split_in_two_predictions() -> None:
    ref = box(vol((30, 12, 12)), (4, 16), (4, 8), (4, 8))
    pred = ref.copy()
    pred[9:11] = 0  # two halves of 80 voxels, IoU 80/192 each
    isles = run(pred, ref, "isles22")
    assert (isles.tp_ref, isles.tp_pred, isles.fp, isles.fn) == (1, 2, 0, 0) and isles.f1 == 1.0
    shifts = run(pred, ref, "shifts")  # both halves pass IoU >= 0.25: F1 from the prediction side
    assert (shifts.tp_pred, shifts.fp, shifts.tp_ref, shifts.fn) == (2, 0, 1, 0) and shifts.f1 == 1.0
    pan = run(pred, ref, "panoptica")  # IoU < 0.5: nothing matched
    assert (pan.tp_ref, pan.fp, pan.fn) == (0, 2, 1)


# --- empty cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_both_empty_is_an_empty_case_with_the_presets_stated_value(preset: str) -> None:
    m = run(vol(), vol(), preset)
    row = m.to_frame().iloc[0]
    assert bool(row["empty_case"]) and (m.tp_ref, m.tp_pred, m.fp, m.fn) == (0, 0, 0, 0)
    expected = PRESETS[preset].empty_value
    for col in ("precision", "recall", "f1", "dice"):
        assert (math.isnan(row[col]) and math.isnan(expected)) or row[col] == expected, (preset, col)
    stated = {"msseg2": "NaN", "shifts": "1", "brats2023": "1", "isles22": "1", "panoptica": "NaN"}[preset]
    assert f"{expected:g}".replace("nan", "NaN") == stated


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_an_empty_prediction_scores_zero_not_the_empty_value(preset: str) -> None:
    ref = box(vol(), (4, 10), (4, 10), (4, 10))
    m = run(vol(), ref, preset)
    assert not m.empty_case and m.fn == 1 and m.recall == 0.0 and m.f1 == 0.0 and m.dice == 0.0
    assert math.isnan(m.precision)


# --- the preset registry ---------------------------------------------------------------------


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid presets: brats2023, isles22, msseg2, panoptica, shifts"):
        get_preset("brats")


def test_rule_from_options_records_overrides_in_the_name() -> None:
    assert rule_from_options("panoptica") is PRESETS["panoptica"]
    r = rule_from_options("panoptica", threshold=0.3, connectivity=None)
    assert r.name == "panoptica+threshold=0.3" and r.threshold == 0.3 and r.matching == "greedy"
    c = rule_from_options(None, criterion="iou", threshold=0.1)
    assert c.name == "custom" and c.connectivity == 26 and c.min_volume_mm3 == 3.0 and c.matching == "hungarian"
    assert rule_from_options() is DEFAULT_RULE
    m = rule_from_options("msseg2", matching="hungarian")  # ANIMA's outside test only makes sense per side
    assert m.max_outside_share is None and m.name == "msseg2+matching=hungarian"
    with pytest.raises(ValueError, match="criterion"):
        rule_from_options(None, criterion="jaccard")
    with pytest.raises(ValueError, match="connectivity"):
        DetectionRule(name="x", connectivity=8)
    with pytest.raises(KeyError, match="unknown rule option"):
        rule_from_options(None, dilation=2)


def test_presets_markdown_has_one_row_per_preset_with_its_source() -> None:
    md = presets_markdown()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(PRESETS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    for name, rule in PRESETS.items():
        assert f"`{name}`" in md and rule.source
    assert "animaSegPerfAnalyzer" in md and "panoptica 2.1.7" in md


# --- agreement with plain re-implementations of the published code ---------------------------


def _ellipsoid(shape: tuple[int, ...], c: np.ndarray, r: np.ndarray) -> np.ndarray:
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ellipsoids (radii 0.6-5 voxels) in a 32^3-40^3 volume; some predictions are the
    reference shifted, grown or cut, some independent, a few empty."""
    rng = np.random.default_rng(1000 + seed)
    shape = tuple(int(s) for s in rng.integers(32, 41, size=3))

    def blobs(n: int, lo: float = 0.6, hi: float = 5.0) -> np.ndarray:
        m = np.zeros(shape, bool)
        for _ in range(n):
            m |= _ellipsoid(shape, rng.uniform(3, np.array(shape) - 3), rng.uniform(lo, hi, size=3))
        return m

    ref = blobs(int(rng.integers(0, 7)))
    kind = seed % 4
    if kind == 0:
        pred = np.roll(ref, tuple(int(v) for v in rng.integers(-3, 4, size=3)), axis=(0, 1, 2))
    elif kind == 1:
        pred = ndimage.binary_dilation(ref, iterations=2) if rng.random() < 0.5 else ndimage.binary_erosion(ref)
        pred |= blobs(2, 0.6, 2.0)
    elif kind == 2:
        pred = ref.copy()
        if ref.any():
            x = int(np.argwhere(ref)[:, 0].mean())
            pred[x : x + 1] = False
        pred |= blobs(1, 0.6, 1.5)
    else:
        pred = blobs(int(rng.integers(0, 6)))
    return pred.astype(np.uint8), ref.astype(np.uint8)


CASES = range(32)


def _isles22_oracle(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """ISLES'22 compute_lesion_f1_score: loop over 26-connected components of each side."""
    import cc3d

    tp = fp = fn = 0
    inter = gt.astype(bool) & pred.astype(bool)
    lab, n = cc3d.connected_components(gt, connectivity=26, return_N=True)
    for i in range(1, n + 1):
        if (inter & (lab == i)).any():
            tp += 1
        else:
            fn += 1
    lab, n = cc3d.connected_components(pred, connectivity=26, return_N=True)
    for i in range(1, n + 1):
        if not (gt.astype(bool) & (lab == i)).any():
            fp += 1
    return tp, fp, fn


def _shifts_oracle(gt: np.ndarray, pred: np.ndarray, thr: float = 0.25) -> tuple[int, int, int]:
    """Shifts 2.0 lesion_f1_score: scipy.ndimage.label (default structure), best IoU per lesion."""
    lp, n_p = ndimage.label(pred)
    lg, n_g = ndimage.label(gt)

    def best_iou(mask: np.ndarray, other: np.ndarray) -> float:
        vals = [0.0]
        for j in np.unique(other[mask]):
            if j:
                o = other == j
                vals.append((mask & o).sum() / (mask | o).sum())
        return max(vals)

    tp = sum(best_iou(lp == i, lg) >= thr for i in range(1, n_p + 1))
    fn = sum(best_iou(lg == i, lp) < thr for i in range(1, n_g + 1))
    return int(tp), int(n_p - tp), int(fn)


def _brats2023_oracle(gt: np.ndarray, pred: np.ndarray, dil: int = 3, vol_thresh: float = 50) -> tuple[int, int, int]:
    """BraTS 2023 get_lesion_wise_score / get_lesion_wise_results counts (Num_TP, Num_FP, Num_FN)."""
    import cc3d

    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = cc3d.connected_components(gt, connectivity=26)
    pred_cc = cc3d.connected_components(pred, connectivity=26)
    dil_cc = cc3d.connected_components(ndimage.binary_dilation(gt, structure=struct, iterations=dil), connectivity=26)
    merged = np.zeros_like(dil_cc)
    for comp in range(1, int(dil_cc.max()) + 1):
        merged[(dil_cc == comp) & (gt_cc > 0)] = comp
    tp_pred: list[int] = []
    gt_tp = fn = 0
    for comp in range(1, int(merged.max()) + 1):
        lesion = merged == comp
        region = ndimage.binary_dilation(lesion, structure=struct, iterations=dil)
        hits = [int(v) for v in np.unique(pred_cc[region]) if v]
        tp_pred += hits
        small = lesion.sum() <= vol_thresh
        if hits:
            gt_tp += 0 if small else 1
        else:
            fn += 0 if small else 1
    fp = len([v for v in np.unique(pred_cc) if v and v not in tp_pred])
    return gt_tp, fp, fn


def _anima_oracle(gt: np.ndarray, pred: np.ndarray, vv: float = 1.0) -> tuple[int, int, int, int]:
    """ANIMA animaSegPerfAnalyzer getDetectionMarks (alpha 0.1, beta 0.7, gamma 0.65, > 3 mm^3, face
    connectivity): returns (TP of the reference, TP of the prediction, lesions in ref, in pred)."""
    min_size = int(math.floor(3.0 / vv)) + 1

    def lab(m: np.ndarray) -> tuple[np.ndarray, int]:
        cc, n = ndimage.label(m)
        sizes = np.bincount(cc.ravel())
        keep = [i for i in range(1, n + 1) if sizes[i] >= min_size]
        out = np.zeros_like(cc)
        for k, i in enumerate(keep, start=1):
            out[cc == i] = k
        return out, len(keep)

    lr, nr = lab(gt)
    lt, nt = lab(pred)
    tab = np.zeros((nr + 1, nt + 1), dtype=np.int64)
    np.add.at(tab, (lr.ravel(), lt.ravel()), 1)

    def true_positives(t: np.ndarray) -> int:
        n_ref, n_test = t.shape
        col = t.sum(axis=0)
        detected = 0
        for i in range(1, n_ref):
            row_tp = t[i, 1:].sum()
            if row_tp / (row_tp + t[i, 0]) <= 0.1:
                continue
            order = sorted(range(1, n_test), key=lambda j: -t[i, j])
            weight, ok = 0.0, True
            for j in order:
                if weight >= 0.65:
                    break
                if t[0, j] / col[j] > 0.7:
                    ok = False
                    break
                weight += t[i, j] / row_tp
            detected += ok
        return detected

    if nr == 0 or nt == 0:
        return 0, 0, nr, nt
    return true_positives(tab), true_positives(tab.T), nr, nt


@pytest.mark.parametrize("seed", CASES)
def test_presets_agree_with_the_published_loops(seed: int) -> None:
    pred, ref = _case(seed)
    isles = run(pred, ref, "isles22")
    assert (isles.tp_ref, isles.fp, isles.fn) == _isles22_oracle(ref, pred)
    shifts = run(pred, ref, "shifts")
    assert (shifts.tp_pred, shifts.fp, shifts.fn) == _shifts_oracle(ref, pred)
    brats = run(pred, ref, "brats2023")
    assert (brats.tp_ref, brats.fp, brats.fn) == _brats2023_oracle(ref, pred)
    aff = np.diag([1.0, 1.0, 0.5 if seed % 2 else 1.0, 1.0])
    anima = run(pred, ref, "msseg2", aff)
    assert (anima.tp_ref, anima.tp_pred, anima.count_ref, anima.count_pred) == _anima_oracle(ref, pred, float(aff[2, 2]))
