"""The matching engine: sparse overlap counts equal the dense ones, the optimal one-to-one matching
beats greedy where greedy is worse and is optimal against brute force, a prediction equal to the
reference scores 1 everywhere, empty cases are flagged and never scored silently, the result
frames keep their columns, and the `panoptica` preset gives panoptica's own TP/FP/FN.

Parity reference: panoptica 2.1.7 (PyPI), `Panoptica_Evaluator` on semantic (binary) input with
`ConnectedComponentsInstanceApproximator` and `NaiveThresholdMatching` (IoU >= 0.5, one-to-one).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mseval.lesions.matching import (
    LESION_MATCH_COLUMNS,
    MATCH_COLUMNS,
    greedy_pairs,
    hungarian_pairs,
    match_lesions,
    overlap_pairs,
    pair_scores,
)
from mseval.lesions.presets import DEFAULT_RULE, PRESETS, rule_from_options

EYE = np.eye(4)
PANOPTICA_VERSION = "2.1.7"
PUBLIC = ["tp_ref", "tp_pred", "fp", "fn", "precision", "recall", "f1", "dice"]


def box(m: np.ndarray, x: tuple[int, int], y: tuple[int, int], z: tuple[int, int]) -> np.ndarray:
    m[x[0] : x[1], y[0] : y[1], z[0] : z[1]] = 1
    return m


def ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g[i] - center[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int, lo: float = 1.5, hi: float = 5.0) -> np.ndarray:
    m = np.zeros(shape, bool)
    for _ in range(n):
        m |= ellipsoid(shape, rng.uniform(4, np.array(shape) - 4), rng.uniform(lo, hi, size=3))
    return m


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (pred, ref) pair of random ellipsoid lesions in a 32^3-48^3 volume. seed % 7 picks
    the kind: shifted copies (partial overlaps near any IoU), one prediction over two references,
    a reference split in two, independent masks, grown/shrunk references with extra lesions, empty
    masks (pred, ref or both), tiny lesions and near-touching pairs."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(32, 49, size=3))
    kind = seed % 7
    ref = blobs(rng, shape, int(rng.integers(1, 7)))
    if kind == 0:
        pred = np.roll(ref, tuple(int(v) for v in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    elif kind == 1:
        c = np.array(shape) / 2
        ref = ellipsoid(shape, c - [5, 0, 0], np.full(3, 3.0)) | ellipsoid(shape, c + [5, 0, 0], np.full(3, 3.0))
        pred = ellipsoid(shape, c, np.array([rng.uniform(8, 10), 4, 4]))
    elif kind == 2:
        pred = ref.copy()
        x = int(np.argwhere(ref)[:, 0].mean())
        pred[x - 1 : x + 1] = False
    elif kind == 3:
        pred = blobs(rng, shape, int(rng.integers(0, 7)))
    elif kind == 4:
        pred = ndimage.binary_dilation(ref, iterations=int(rng.integers(1, 3))) if rng.random() < 0.5 else ndimage.binary_erosion(ref)
        pred |= blobs(rng, shape, int(rng.integers(0, 3)), 1.0, 2.5)
    elif kind == 5:
        pred = np.zeros(shape, bool)
        if seed % 2:
            ref, pred = pred, ref
        if seed % 3 == 0:
            ref = np.zeros(shape, bool)
            pred = np.zeros(shape, bool)
    else:
        pred = ref | blobs(rng, shape, 4, 0.6, 1.2)
        ref = ref | blobs(rng, shape, 3, 0.6, 1.2)
    return pred.astype(np.uint8), ref.astype(np.uint8)


# --- overlaps and scores ---------------------------------------------------------------------


def test_sparse_overlap_counts_equal_the_dense_table() -> None:
    rng = np.random.default_rng(0)
    pl = rng.integers(0, 6, size=(12, 11, 10)).astype(np.uint32)
    rl = rng.integers(0, 4, size=(12, 11, 10)).astype(np.uint32)
    p, r, n = overlap_pairs(pl, 5, rl, 3)
    dense = {(i, j): int(((pl == i) & (rl == j)).sum()) for i in range(1, 6) for j in range(1, 4)}
    assert {(int(a), int(b)): int(c) for a, b, c in zip(p, r, n)} == {k: v for k, v in dense.items() if v}
    e = overlap_pairs(np.zeros((3, 3, 3), np.uint32), 0, rl[:3, :3, :3], 3)
    assert all(a.size == 0 for a in e)


def test_pair_scores_from_voxel_counts() -> None:
    inter, ps, rs = np.array([2, 4]), np.array([4, 4]), np.array([8, 4])
    assert np.allclose(pair_scores("iou", inter, ps, rs), [2 / 10, 1.0])
    assert np.allclose(pair_scores("dsc", inter, ps, rs), [4 / 12, 1.0])
    assert np.allclose(pair_scores("ref_coverage", inter, ps, rs), [0.25, 1.0])
    assert np.allclose(pair_scores("overlap", inter, ps, rs), [1.0, 1.0])


# --- matching --------------------------------------------------------------------------------


def crafted() -> tuple[np.ndarray, np.ndarray]:
    """Two references, two predictions: P1 shares 160 voxels with R1 and 32 with R2, P2 shares 80
    with R1. Greedy takes P1-R1 first and is left with one match; the optimum is P1-R2 + P2-R1."""
    shape = (20, 10, 6)
    ref = box(box(np.zeros(shape, np.uint8), (0, 10), (0, 8), (0, 4)), (12, 16), (0, 4), (0, 4))
    pred = box(box(np.zeros(shape, np.uint8), (0, 14), (0, 4), (0, 4)), (0, 10), (6, 8), (0, 4))
    return pred, ref


def test_hungarian_matches_more_lesions_than_greedy_on_a_crafted_case() -> None:
    pred, ref = crafted()
    rule = replace(DEFAULT_RULE, min_volume_mm3=0.0)  # any overlap: the criterion sum is the match count
    opt = match_lesions(pred, ref, EYE, rule)
    greedy = match_lesions(pred, ref, EYE, replace(rule, matching="greedy"))
    assert (greedy.tp_ref, greedy.fp, greedy.fn) == (1, 1, 1)
    assert (opt.tp_ref, opt.tp_pred, opt.fp, opt.fn) == (2, 2, 0, 0) and opt.f1 == 1.0
    les = opt.lesion_frame().set_index(["side", "label"])
    assert les.loc[("pred", 1), "matched_label"] == 2 and les.loc[("pred", 2), "matched_label"] == 1


def test_hungarian_puts_the_number_of_matches_before_the_summed_criterion() -> None:
    # IoU: P1-R1 0.417 alone beats P1-R2 0.125 + P2-R1 0.25 = 0.375 in summed IoU, but detects one lesion
    pred, ref = crafted()
    rule = rule_from_options(None, criterion="iou", threshold=0.1, min_volume_mm3=0.0)
    opt = match_lesions(pred, ref, EYE, rule)
    assert opt.tp_ref == 2
    assert match_lesions(pred, ref, EYE, replace(rule, matching="greedy")).tp_ref == 1


def _brute_force(pred: np.ndarray, ref: np.ndarray, score: np.ndarray) -> tuple[int, float]:
    best = (0, 0.0)
    for k in range(1, min(len(set(pred)), len(set(ref))) + 1):
        for subset in itertools.combinations(range(pred.size), k):
            if len({pred[i] for i in subset}) == k and len({ref[i] for i in subset}) == k:
                best = max(best, (k, round(float(score[list(subset)].sum()), 9)))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_hungarian_pairs_are_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cand = [(p, r) for p in range(1, 6) for r in range(1, 5) if rng.random() < 0.45]
    if not cand:
        return
    pred = np.array([c[0] for c in cand])
    ref = np.array([c[1] for c in cand])
    score = rng.uniform(0.05, 1.0, size=pred.size)
    chosen = hungarian_pairs(pred, ref, score)
    assert len(set(pred[chosen])) == chosen.size == len(set(ref[chosen]))
    assert (chosen.size, round(float(score[chosen].sum()), 9)) == _brute_force(pred, ref, score)
    g = greedy_pairs(pred, ref, score, np.ones(pred.size, int))
    assert len(set(pred[g])) == g.size == len(set(ref[g])) and g.size <= chosen.size


# --- sanity and empty cases ------------------------------------------------------------------


@pytest.mark.parametrize("preset", [*sorted(PRESETS), None])
def test_a_prediction_equal_to_the_reference_scores_one(preset: str | None) -> None:
    rng = np.random.default_rng(5)
    shape = (40, 36, 32)
    ref = blobs(rng, shape, 5, 3.5, 5.0).astype(np.uint8)
    rule = PRESETS[preset] if preset else DEFAULT_RULE
    m = match_lesions(ref, ref.copy(), EYE, rule)
    assert m.count_ref > 0 and not m.empty_case
    assert m.fp == 0 and m.fn == 0 and m.tp_pred == m.count_pred
    assert m.precision == m.recall == m.f1 == m.dice == 1.0
    row = m.to_frame().iloc[0]
    assert row["volume_diff_mm3"] == 0 and row["count_diff"] == m.count_pred - m.count_ref


def test_empty_case_is_flagged_and_takes_the_rules_empty_value() -> None:
    z = np.zeros((16, 16, 16), np.uint8)
    m = match_lesions(z, z, EYE)  # default rule: empty cases are not scored
    row = m.to_frame().iloc[0]
    assert bool(row["empty_case"]) and all(math.isnan(row[c]) for c in ("precision", "recall", "f1", "dice"))
    assert math.isnan(row["empty_value"]) and math.isnan(row["rel_volume_diff"])
    tiny = box(z.copy(), (2, 3), (2, 3), (2, 4))  # 2 voxels < 3 mm^3: no lesion, but voxels for Dice
    m = match_lesions(tiny, z, EYE)
    assert m.empty_case and m.count_pred == 0 and m.dice == 0.0 and math.isnan(m.f1)
    assert match_lesions(tiny, z, EYE, PRESETS["isles22"]).fp == 1  # no size filter: one FP
    assert "empty case" in m.summary()


def test_empty_cases_stay_apart_when_patients_are_stacked() -> None:
    z = np.zeros((16, 16, 16), np.uint8)
    one = box(z.copy(), (2, 8), (2, 8), (2, 8))
    frames = pd.concat([match_lesions(a, b, EYE).to_frame() for a, b in [(one, one), (z, z), (z, one)]], ignore_index=True)
    assert frames["empty_case"].tolist() == [False, True, False]
    scored = frames.loc[~frames["empty_case"], "f1"]
    assert scored.tolist() == [1.0, 0.0] and math.isnan(frames.loc[1, "f1"])


# --- result objects --------------------------------------------------------------------------


def test_result_frames_have_their_columns_and_agree_with_the_counts() -> None:
    pred, ref = make_case(4)
    aff = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm^3 voxels
    m = match_lesions(pred, ref, aff, PRESETS["isles22"])
    df = m.to_frame()
    assert list(df.columns) == MATCH_COLUMNS and len(df) == 1 and set(PUBLIC) <= set(df.columns)
    assert df.loc[0, "rule"] == "isles22" and df.loc[0, "connectivity"] == 26
    assert m.volume_pred_mm3 == pytest.approx(pred.sum() * 0.5) and m.volume_ref_mm3 == pytest.approx(ref.sum() * 0.5)
    les = m.lesion_frame()
    assert list(les.columns) == LESION_MATCH_COLUMNS
    p, r = les[les.side == "pred"], les[les.side == "ref"]
    assert (len(p), len(r)) == (m.count_pred, m.count_ref)
    assert int((p.detected & p.counted).sum()) == m.tp_pred and int((r.detected & r.counted).sum()) == m.tp_ref
    assert np.allclose(les.volume_mm3, les.voxels * 0.5)
    assert "TP_ref" in m.summary() and "isles22" in m.summary()


def test_one_to_one_partners_point_at_each_other() -> None:
    pred, ref = make_case(13)  # tiny extra lesions on both sides: 6 of 10 predictions matched
    les = match_lesions(pred, ref, EYE, PRESETS["panoptica"]).lesion_frame()
    back = les.set_index(["side", "label"])["matched_label"]
    assert ((les.side == "pred") & les.detected).sum() >= 2
    for _, row in les[(les.side == "pred") & les.detected].iterrows():
        assert back[("ref", row.matched_label)] == row.label
        assert row.iou >= 0.5 and row.criterion_value == row.iou


def test_bad_masks_raise_value_error() -> None:
    a = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="differs"):
        match_lesions(a, np.zeros((8, 8, 9), np.uint8), EYE)
    with pytest.raises(ValueError, match="not binary"):
        match_lesions(a + 2, a, EYE)
    with pytest.raises(ValueError, match="3D"):
        match_lesions(a[0], a[0], EYE)


# --- parity with panoptica -------------------------------------------------------------------


def test_panoptica_preset_matches_the_panoptica_package() -> None:
    """60 seeded cases: the `panoptica` preset gives panoptica 2.1.7's TP, FP and FN.

    panoptica: Panoptica_Evaluator(expected_input=SEMANTIC, ConnectedComponentsInstanceApproximator(),
    NaiveThresholdMatching()) -- cc3d 26-connectivity, one-to-one, IoU >= 0.5.
    """
    pytest.importorskip("panoptica", reason="panoptica is not installed (pip install panoptica==2.1.7)")
    from importlib.metadata import version

    assert version("panoptica") == PANOPTICA_VERSION
    from panoptica import ConnectedComponentsInstanceApproximator, InputType, NaiveThresholdMatching, Panoptica_Evaluator
    from panoptica.metrics import Metric
    from panoptica.utils.citation_reminder import disable_citation_reminder

    disable_citation_reminder()
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(),
        instance_metrics=[Metric.IOU],
        global_metrics=[Metric.DSC],
    )
    totals = np.zeros(3, int)
    kinds = set()
    for seed in range(60):
        pred, ref = make_case(seed)
        theirs = next(iter(evaluator.evaluate(pred, ref, verbose=False).values()))
        ours = match_lesions(pred, ref, EYE, PRESETS["panoptica"])
        assert (ours.tp_ref, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn), f"seed {seed}"
        assert ours.tp_pred == ours.tp_ref
        assert (ours.count_pred, ours.count_ref) == (theirs.n_pred_instances, theirs.n_ref_instances)
        totals += (theirs.tp, theirs.fp, theirs.fn)
        kinds.add(seed % 7)
    assert kinds == set(range(7)) and (totals > 20).all()  # every kind of case, and all three counts exercised
