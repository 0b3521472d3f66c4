"""Activity classification and count error from ensembles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mseval.errors import InputError
from mseval.metrics.activity import activity_metrics, count_error, delong_auc, ensemble_matrix, p_active, youden_threshold
from mseval.stats.bootstrap import patient_bootstrap


def test_auc_point_equals_sklearn_with_ties():
    """DeLong's midrank AUC is the Mann-Whitney statistic; with ensemble-style ties (P in k/20) it
    must equal sklearn's roc_auc_score to rounding."""
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.4
    p = np.clip(np.round((0.3 + 0.3 * y + rng.normal(0, 0.25, 500)) * 20) / 20, 0, 1)
    auc, se = delong_auc(p, y)
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert 0 < se < 0.05


def test_delong_se_matches_a_patient_bootstrap():
    """DeLong's SE and the patient-bootstrap SE estimate the same sampling SD of the AUC. With
    B = 2000 the bootstrap SE has ~1.6% Monte-Carlo error and the two differ by O(1/n) at n = 400:
    10% is well beyond both."""
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.5
    s = rng.normal(0.8 * y, 1.0)
    _, se = delong_auc(s, y)
    bt = patient_bootstrap(lambda a, b: delong_auc(a, b)[0], s, y, n_resamples=2000, seed=2)
    assert abs(bt.standard_error / se - 1) < 0.10


def test_delong_ci_covers_the_true_auc_at_the_nominal_rate():
    """Binormal scores (positives shifted by d = 1): true AUC = Phi(d / sqrt 2) = 0.7602. Over 300
    trials of n = 150 the 95% CI must cover it in 95% +/- 3.5 SE (SE = sqrt(.95 .05 / 300) = 1.26%),
    i.e. at least 90.6%."""
    from scipy.stats import norm

    true = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(3)
    hit = 0
    for _ in range(300):
        y = rng.random(150) < 0.5
        res = activity_metrics(norm.cdf(rng.normal(1.0 * y, 1.0)), y)
        hit += res.auc_ci_low <= true <= res.auc_ci_high
    assert hit / 300 >= 0.906


def test_confusion_and_operating_points_by_hand():
    """Predicted active when P >= threshold. At 0.5: TP = 2 (0.5, 0.9), FP = 1 (0.6), TN = 3, FN = 1.
    Youden's J is maximal at the threshold 0.5 (J = 2/3 + 3/4 - 1 = 0.42; 0.1 gives 0.25, 0.9 gives 0.33)."""
    p = np.array([0.1, 0.5, 0.9, 0.2, 0.6, 0.3, 0.0])
    y = np.array([True, True, True, False, False, False, False])
    res = activity_metrics(p, y)
    op = res.operating_points[0]
    assert (op.tp, op.fp, op.tn, op.fn) == (2, 1, 3, 1)
    assert op.sensitivity == pytest.approx(2 / 3) and op.specificity == pytest.approx(3 / 4)
    assert youden_threshold(p, y) == 0.5
    cm = res.confusion_matrix()
    assert list(cm.columns) == ["operating_point", "threshold", "tp", "fp", "tn", "fn"]
    tidy = res.to_frame()
    assert {"auc", "sensitivity@0.5", "specificity@youden", "balanced_accuracy@0.5"} <= set(tidy["metric"])
    assert tidy.loc[tidy["metric"] == "sensitivity@0.5", "ci_low"].iloc[0] < 2 / 3
    fixed = activity_metrics(p, y, operating_point=0.25)
    assert fixed.operating_points[1].name == "0.25" and fixed.operating_points[1].tp == 2


def test_undefined_auc_is_flagged_not_silent():
    """Every patient observed active: the AUC has no negatives; it is NaN *with a note*."""
    res = activity_metrics(np.array([0.2, 0.9, 0.5]), np.array([True, True, True]))
    assert np.isnan(res.auc) and any("AUC undefined" in n for n in res.notes)
    assert "AUC undefined" in res.to_frame().set_index("metric").loc["auc", "note"]


def test_count_error_by_hand_and_flags_a_constant():
    """predicted - observed = (1, -1, 2, 0): MAE 1, bias 0.5, RMSE sqrt(6/4)."""
    res = count_error(np.array([1.0, 2.0, 5.0, 3.0]), np.array([0, 3, 3, 3]))
    assert res.mae == 1.0 and res.bias == 0.5 and res.rmse == pytest.approx(np.sqrt(1.5))
    assert -1 <= res.spearman <= 1
    flat = count_error(np.zeros(5), np.arange(5))
    assert np.isnan(flat.spearman) and flat.notes and "constant" in flat.to_frame()["note"].iloc[-1]


def _counts(n=3, arms=("a", "b"), S=4):
    rows = [(f"P{i}", a, s, (i + s) % 3, 1.0) for i in range(n) for a in arms for s in range(S)]
    return pd.DataFrame(rows, columns=["patient_id", "arm", "sample", "count", "volume_mm3"])


def test_ensemble_matrix_and_p_active():
    """Rows sorted by patient and arm; P(active) with k = 1 and k = 2 from the same matrix."""
    keys, mat = ensemble_matrix(_counts().sample(frac=1, random_state=0))
    assert list(keys["patient_id"]) == ["P0", "P0", "P1", "P1", "P2", "P2"] and mat.shape == (6, 4)
    assert list(mat[0]) == [0, 1, 2, 0]
    assert p_active(mat[:1], 1)[0] == 0.5 and p_active(mat[:1], 2)[0] == 0.25


def test_ensemble_matrix_rejects_missing_and_duplicate_samples():
    """A block with a missing sample, or a sample twice, is a one-line InputError naming the patient and arm."""
    df = _counts()
    with pytest.raises(InputError, match=r"P1.*'b'.*3 samples.*missing"):
        ensemble_matrix(df.drop(index=df.index[(df.patient_id == "P1") & (df.arm == "b") & (df["sample"] == 2)]), file="c.parquet")
    with pytest.raises(InputError, match="twice"):
        ensemble_matrix(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(InputError, match="non-negative"):
        ensemble_matrix(df.assign(count=-1))
