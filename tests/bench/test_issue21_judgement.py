"""bench/issue21_judgement.py applies the pre-registered rules: a value on each side of each line gives met / NOT met,
and a number the outputs lack is "not scored", never met."""

from __future__ import annotations

from bench.issue21_judgement import judge


def _count(d48: float, share: float, twin: float) -> dict:
    rows = []
    for k, v in enumerate(("w24", "w48", "w96")):
        rows.append({"visit": v, "crps_model": 1.0 + k, "crps_nb2_baseline": 1.1 + k, "crps_oracle": 0.8 + k, "model_minus_nb2": d48 if v == "w48" else -0.1,
                     "model_minus_nb2_se": 0.05, "model_share_of_gap": share, "auc_model": 0.8, "auc_nb2_baseline": 0.78,
                     "model_minus_no_images": twin, "model_minus_no_images_se": 0.05, "pit_ks_p_model": 0.3})
    return {"count": rows,
            "location": {"new": {"model_minus_uniform_wm": [0.6, 0.05], "model_minus_proximity_prior": [0.3, 0.1]}},
            "population_ratios": {"model": {"dmf": {"law_over_population": 1.1}, "ocrelizumab": {"law_over_population": 0.85}}},
            "effects": {"model": {"pooled": {"slope_pred_on_observable": 0.9, "slope_pred_on_true": 0.55, "slope_true_on_pred": 1.2, "rmse": 0.7}},
                        "nb2_arm_age": {"pooled": {"rmse": 0.65}}}}


RENDER = {"per_arm": {"placebo": {"ratio": 1.05}, "dmf": {"ratio": 1.15}},
          "pit": {v: {"volume": {"ks_p": 0.2, "chi2_p": 0.3}} for v in ("w24", "w48", "w96")}}


def test_rules_on_each_side_of_their_lines() -> None:
    good = {r["criterion"]: r["met"] for r in judge(_count(-0.12, 0.55, -0.11), RENDER)}
    assert set(good.values()) == {"met"}, good
    bad = {r["criterion"]: r["met"] for r in judge(_count(-0.09, 0.45, -0.09), RENDER | {"per_arm": {"dmf": {"ratio": 1.25}}})}
    assert bad["images help: count CRPS vs NB2 baseline, W48"] == "NOT met"  # -0.09 is not below -2 x 0.05
    assert bad["images help: share of the NB2-to-oracle gap closed, W48"] == "NOT met"
    assert bad["ablation: model vs its image-zeroed twin, W48"] == "NOT met"
    assert bad["size: rendered / observed mean new-lesion volume, every arm"] == "NOT met"
    missing = _count(-0.12, 0.55, -0.11)
    del missing["location"], missing["effects"]
    rows = {r["criterion"]: r["met"] for r in judge(missing, {})}
    assert rows["location"] == rows["per-patient log rate ratio"] == "not scored"
    assert rows["calibration: volume PIT (KS / chi-square p per visit)"] == "not scored"
