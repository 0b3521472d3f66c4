"""mseval.provenance: a second simulated trial with the same patient ids is held-out, the
training cohort itself is in-sample / validation by patient, and a store without a record is
'unknown' (never silently held-out)."""

from __future__ import annotations

import pandas as pd
import pytest

from mseval.provenance import classify, cohort_fingerprint, patient_fingerprints


def _manifest(seed: int, n: int = 6) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(1, n + 1)], "arm": ["placebo", "drug"] * (n // 2),
                         "age": rng.normal(38, 9, n).round(1), "t2_volume_mm3": rng.gamma(2, 4000, n).round(3),
                         "flair": [f"images/P{i:03d}/flair.nii.gz" for i in range(1, n + 1)]})


def test_same_ids_of_another_trial_are_held_out():
    train, other = _manifest(1), _manifest(2)
    assert list(train["patient_id"]) == list(other["patient_id"])  # ids repeat between trials
    rec = {"cohort_fingerprint": cohort_fingerprint(train), "train": {p: f for p, f in patient_fingerprints(train).items()}, "validation": {}}
    c = classify(other, rec)
    assert c["status"] == "held-out" and c["n_held_out"] == 6 and c["n_in_sample"] == 0
    assert c["trained_on_cohort"] != c["evaluated_cohort"]


def test_training_cohort_is_in_sample_validation_or_mixed():
    m = _manifest(1)
    fp = patient_fingerprints(m)
    ids = list(m["patient_id"])
    rec = {"train": {p: fp[p] for p in ids[:4]}, "validation": {p: fp[p] for p in ids[4:]}}
    c = classify(m, rec)
    assert c["status"] == "mixed" and (c["n_in_sample"], c["n_validation"], c["n_held_out"]) == (4, 2, 0)
    assert classify(m.iloc[:4], rec)["status"] == "in-sample"
    assert classify(m.iloc[4:], rec)["status"] == "validation"


def test_paths_do_not_change_the_fingerprint_and_covariates_do():
    m = _manifest(1)
    moved = m.assign(flair=[f"/elsewhere/{p}.nii.gz" for p in m["patient_id"]])
    assert patient_fingerprints(m) == patient_fingerprints(moved)
    assert patient_fingerprints(m)["P001"] != patient_fingerprints(m.assign(age=m["age"] + 0.1))["P001"]


def test_no_record_is_unknown():
    assert classify(_manifest(1), None)["status"] == "unknown"
    assert classify(_manifest(1), {})["status"] == "unknown"


@pytest.mark.slow
def test_checkpoint_records_provenance_and_the_store_carries_it(tmp_path):
    """A micro model trained on one trial and sampled on it: evaluate's summary says in-sample/validation by patient."""
    pytest.importorskip("torch")
    from forecast.checkpoint import load_checkpoint
    from forecast.config import ForecastConfig
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings
    from forecast.train import train
    from mseval.provenance import forecast_provenance
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    simulate_trial(tmp_path / "a", TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=1, followup_weeks=48))
    cfg = ForecastConfig.load("tiny").with_(name="micro", channels=(8, 8, 16), attention_levels=(False, False, False), num_head_channels=8,
                                            batch_size=2, checkpoint_every=1000, steps=1, val_fraction=0.5)
    train(tmp_path / "a", cfg, tmp_path / "ck", device="cpu")
    ck = load_checkpoint(tmp_path / "ck")
    assert set(ck.provenance["train"]) == set(ck.train_ids) and set(ck.provenance["validation"]) == set(ck.val_ids)
    forecast_cohort(tmp_path / "a", ck, tmp_path / "fc", samples=1, arms=["placebo"], settings=SamplerSettings("ddim", 1, guidance=1.0), device="cpu")
    prov = forecast_provenance(tmp_path / "a", tmp_path / "fc")
    c = prov["checkpoints"][0]
    assert prov["status"] == "mixed" and c["n_in_sample"] == len(ck.train_ids) and c["n_validation"] == len(ck.val_ids)
    assert "IN-SAMPLE" not in prov["sentence"] and "MIXED" in prov["sentence"]
