"""The Settings table a person reads: one row per distinct sampler setting (with the patients it
applies to), per-block data (the count each block asked for) summarised, never listed, and the
model's provenance row present whatever the store records."""

from __future__ import annotations

import json

import pandas as pd

from reports.settings_table import model_row, sampler_groups, sampler_rows


def _index(n_patients: int = 42) -> pd.DataFrame:
    """Two arms; patients P00..P(n-1); every block asks for its own counts (per-block data); the
    last 10 patients were sampled with 100 steps instead of 50."""
    rows = []
    for i in range(n_patients):
        for j, arm in enumerate(("placebo", "drug")):
            rec = {"model": "forecast", "sampler": "ddim", "steps": 100 if i >= n_patients - 10 else 50, "seed": 3,
                   "requested_counts": [2 * i + j, 2 * i + j + 1]}
            rows.append({"patient_id": f"P{i:02d}", "arm": arm, "sampler": json.dumps(rec, sort_keys=True)})
    return pd.DataFrame(rows)


def test_one_row_per_distinct_setting_with_its_patients():
    idx = _index()
    assert idx["sampler"].nunique() == len(idx)  # 84 distinct raw records: the dump the report used to print
    groups = sampler_groups(idx)
    assert [g["setting"]["steps"] for g in groups] == [50, 100]
    assert [len(g["patients"]) for g in groups] == [32, 10] and [g["blocks"] for g in groups] == [64, 20]
    rows = sampler_rows(groups, {"placebo": "Placebo", "drug": "Drug"}, n_patients=42, n_arms=2)
    assert [name for name, _ in rows] == ["Sampler 1 of 2", "Sampler 2 of 2"]
    assert "32 patients (P00, P01" in rows[0][1] and "and 26 more" in rows[0][1] and "all 2 arms" in rows[0][1]
    assert "requested_counts differs per block (" in rows[0][1] and "[0, 1]" not in rows[0][1]
    assert sum(len(v) for _, v in rows) < 600


def test_a_single_setting_applies_to_all_patients():
    idx = _index(5)
    idx["sampler"] = json.dumps({"forecaster": "oracle", "samples": 3}, sort_keys=True)
    (name, text), = sampler_rows(sampler_groups(idx), {}, n_patients=5, n_arms=2)
    assert name == "Sampler" and "applies to all 5 patients under all 2 arms (10 blocks)" in text


def test_model_row_is_present_whatever_is_recorded():
    assert model_row({}) == ("Model", "no checkpoint recorded in the forecast store")
    assert "not recorded" in model_row({"checkpoints": [{"checkpoint": "ck1", "status": "unknown"}]})[1]
    assert "simulated forecaster" in model_row({"checkpoints": [{"checkpoint": "simulated-oracle", "status": "not trained"}]})[1]
    c = {"checkpoint": "ck2", "status": "held-out", "n_trained_on": 40, "n_validated_on": 8, "trained_on_cohort": "abc", "n_patients": 30,
         "n_in_sample": 0, "n_validation": 0, "n_held_out": 30}
    text = model_row({"checkpoints": [c]}, {"ck2": {"tuned_on": "validation split of abc"}})[1]
    assert "trained on 40 patients and validated on 8" in text and "30 held out" in text and "tuned on validation split of abc" in text
