"""Each figure function works on its own from tables (no report, no files) and returns a Figure
in the mseval style; arms keep the arms table's order and colours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from reports import figures as F
from reports import style

ARMS = pd.DataFrame({"arm": ["placebo", "drug_a", "drug_b"], "label": ["Placebo", "Drug A", "Drug B"],
                     "efficacy": ["none", "moderate", "high"], "reference": [True, False, False]})
RNG = np.random.default_rng(0)


def _check(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    png = style.figure_bytes(fig, "png", dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_arm_colours_follow_the_arms_table_order_and_are_colour_blind_safe():
    c = style.arm_colors(ARMS)
    assert list(c) == ["placebo", "drug_a", "drug_b"]
    assert [c[a] for a in c] == list(style.OKABE_ITO[:3])
    assert style.arm_colors(["x", "y"])["y"] == style.OKABE_ITO[1]


def test_style_file_sets_vector_text():
    rc = style.rc()
    assert rc["pdf.fonttype"] == 42 and rc["svg.fonttype"] == "none"


def test_forest_plot_log_scale_with_truth():
    primary = pd.DataFrame({"arm": ["drug_b", "drug_a"], "observed_rate_ratio": [0.3, 0.7], "observed_ci_low": [0.2, 0.5], "observed_ci_high": [0.5, 0.95],
                            "forecast_rate_ratio": [0.35, 0.72], "forecast_ci_low": [0.2, 0.5], "forecast_ci_high": [0.6, 1.0],
                            "counterfactual_rate_ratio": [0.33, 0.69], "counterfactual_ci_low": [0.3, 0.65], "counterfactual_ci_high": [0.36, 0.73],
                            "true_ratio_of_means": [0.32, 0.7]})
    fig = F.forest_plot(primary, ARMS)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Drug B", "Drug A"]  # arms-table order, top to bottom
    _check(fig)


def test_lesion_free_plot():
    lf = pd.DataFrame({"arm": ["placebo", "drug_a", "drug_b"], "lesion_free_pct": [10.0, 30.0, 60.0], "n": [20, 20, 20],
                       "odds_ratio": [np.nan, 3.8, 13.5], "ci_low": [np.nan, 0.7, 2.4], "ci_high": [np.nan, 22.0, 75.0], "p_value": [np.nan, 0.1, 0.003]})
    _check(F.lesion_free_plot(lf, ARMS))


def _patients(n: int = 60) -> pd.DataFrame:
    arm = np.array(["placebo", "drug_a", "drug_b"] * (n // 3))
    mean = RNG.gamma(2.0, 1.5, n)
    obs = RNG.poisson(mean)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "arm": arm, "observed_count": obs, "observed_active": obs > 0,
                         "mean_count": mean, "p_active": 1 - np.exp(-mean), "lower_80": np.floor(mean / 3), "upper_80": np.ceil(mean * 2)})


def test_activity_roc():
    conf = pd.DataFrame({"group": ["all"], "operating_point": ["0.5"], "threshold": [0.5], "tp": [30], "fp": [5], "tn": [15], "fn": [10]})
    fig = F.activity_roc(_patients(), auc=0.8, auc_ci=(0.7, 0.9), operating_points=conf)
    assert "AUC 0.80" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    _check(fig)


def test_reliability_diagram_with_voxels():
    rel = pd.DataFrame({"group": "all", "bin": range(4), "mean_predicted": [0.1, 0.4, 0.6, 0.9], "observed_rate": [0.05, 0.5, 0.55, 0.95],
                        "ci_low": [0.0, 0.3, 0.35, 0.8], "ci_high": [0.2, 0.7, 0.75, 1.0], "n": [10, 10, 10, 10]})
    vox = pd.DataFrame({"mean_predicted": [0.01, 0.3, 0.7], "observed_rate": [0.01, 0.25, 0.6], "voxels": [1000, 30, 10]})
    fig = F.reliability_diagram(rel, voxel_reliability=vox, ece=0.04)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    _check(fig)


def test_pit_histogram():
    pit = pd.DataFrame({"group": "all", "bin": range(10), "lower": np.arange(10) / 10, "upper": np.arange(1, 11) / 10, "n": RNG.integers(5, 15, 10), "expected": 10.0})
    _check(F.pit_histogram(pit))


def test_coverage_plot():
    rows = [{"group": g, "level": lv, "randomized": lv + RNG.normal(0, 0.03), "randomized_ci_low": lv - 0.1, "randomized_ci_high": min(lv + 0.1, 1)}
            for g in ("all", "placebo", "drug_a", "drug_b") for lv in (0.5, 0.8, 0.95)]
    _check(F.coverage_plot(pd.DataFrame(rows), ARMS))


def test_count_scatter():
    _check(F.count_scatter(_patients(), ARMS))


def test_detection_plot():
    det = pd.DataFrame({"patient_id": np.repeat([f"P{i}" for i in range(6)], 3), "arm": np.repeat(["placebo", "drug_a", "drug_b"] * 2, 3),
                        "sample": np.tile(range(3), 6), "recall": RNG.uniform(0, 1, 18), "precision": RNG.uniform(0, 1, 18),
                        "f1": RNG.uniform(0, 1, 18), "dice": RNG.uniform(0, 1, 18), "empty_case": [False] * 17 + [True]})
    _check(F.detection_plot(det, ARMS))


def test_effect_distribution():
    cf = pd.DataFrame({"patient_id": [f"P{i}" for i in range(40)] * 2, "arm": ["drug_a"] * 40 + ["drug_b"] * 40, "difference": -RNG.gamma(1.0, 2.0, 80)})
    fig = F.effect_distribution(cf, ARMS)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Drug B", "Drug A"]
    _check(fig)


def test_responder_plot():
    rows = [{"arm": a, "stratum": s, "fraction": f, "n_arm": 5, "n_reference": 5, "predicted_rate_ratio": 0.5, "observed_rate_ratio": np.nan if s == "top 10%" else 0.5,
             "ci_low": 0.3, "ci_high": 0.9, "p_value": 0.01, "true_rate_ratio": 0.45}
            for a in ("drug_a", "drug_b") for s, f in (("top 10%", 0.1), ("top 30%", 0.3), ("all", 1.0))]
    _check(F.responder_plot(pd.DataFrame(rows), ARMS))


def test_qini_plot():
    x = np.linspace(0, 1, 11)
    q = pd.concat([pd.DataFrame({"arm": a, "fraction": x, "qini": 10 * np.sqrt(x), "random": 10 * x}) for a in ("drug_a", "drug_b")])
    area = pd.DataFrame({"arm": ["drug_a", "drug_b"], "qini_coefficient": [0.1, 0.2]})
    _check(F.qini_plot(q, ARMS, qini_area=area))


def test_prognostic_plot():
    p = pd.DataFrame({"arm": ["drug_a", "drug_b"], "rate_ratio_unadjusted": [0.6, 0.2], "rate_ratio_adjusted": [0.65, 0.22], "ci_low_adjusted": [0.5, 0.15],
                      "ci_high_adjusted": [0.85, 0.3], "se_unadjusted": [0.3, 0.35], "se_adjusted": [0.15, 0.2], "se_reduction_pct": [50.0, 43.0],
                      "sample_size_saving_pct": [75.0, 67.0]})
    _check(F.prognostic_plot(p, ARMS))


def test_power_plot():
    pa = pd.DataFrame({"arm": ["drug_a", "drug_b"], "rate_reference": [7.0, 7.0], "rate_arm": [4.9, 1.4], "rate_ratio": [0.7, 0.2], "dispersion": [1.0, 1.0],
                       "years": [0.92, 0.92], "n_per_arm_80": [120, 8], "n_per_arm_90": [160, 11]})
    ps = pd.DataFrame({"arm": ["drug_a", "drug_a"], "n_per_arm": [120, 120], "adjusted": [False, True], "power": [0.78, 0.95], "mc_se": [0.05, 0.03]})
    fig = F.power_plot(pa, ARMS, power_simulated=ps)
    assert fig.axes[0].get_ylim()[1] <= 1.05
    _check(fig)


def test_example_slices():
    flair = RNG.normal(100, 10, (40, 48))
    obs = np.zeros((40, 48), np.uint8)
    obs[10:13, 20:23] = 1
    probs = {"drug_b": RNG.uniform(0, 0.3, (40, 48)), "placebo": RNG.uniform(0, 1, (40, 48))}
    fig = F.example_slices(flair, obs, probs, ARMS, spacing=(2.0, 2.0), patient="P001")
    titles = [a.get_title(loc="center") for a in fig.axes]
    assert titles.index("Forecast: Placebo") < titles.index("Forecast: Drug B")  # arms-table order
    _check(fig)


@pytest.mark.parametrize("fmt", ["pdf", "png", "svg"])
def test_saved_figures_are_byte_identical(fmt):
    pa = pd.DataFrame({"arm": ["drug_a"], "lesion_free_pct": [30.0], "n": [20]})
    a = style.figure_bytes(F.lesion_free_plot(pa, ARMS), fmt, dpi=50)
    b = style.figure_bytes(F.lesion_free_plot(pa, ARMS), fmt, dpi=50)
    assert a == b
    assert b"CreationDate" not in a and b"Matplotlib v" not in a
