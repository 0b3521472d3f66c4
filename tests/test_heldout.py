"""--heldout-patients (issue 22, item 4): patients the forecaster trained, validated or was tuned on
are refused (one line naming the patient, exit 2, nothing written); patients of another trial with
the same ids are not; the calibrated ratio is labelled an observed-data ratio estimator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.heldout import check_heldout, heldout_kind, seen_by_forecaster
from mseval.provenance import PROVENANCE_FILE, cohort_fingerprint, patient_fingerprints


def _cohort(seed: int, root: Path, n: int = 6) -> SimpleNamespace:
    import numpy as np

    rng = np.random.default_rng(seed)
    m = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(1, n + 1)], "arm": ["placebo", "drug"] * (n // 2),
                      "age": rng.normal(38, 9, n).round(1), "t2_volume_mm3": rng.gamma(2, 4000, n).round(3)})
    return SimpleNamespace(manifest=m, patient_ids=list(m["patient_id"]), root=root)


def _store(tmp: Path, record: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / PROVENANCE_FILE).write_text(json.dumps({"format": "mseval-forecast-provenance", "checkpoints": {"tiny@10:abc": record}}))
    return tmp


def test_training_and_validation_patients_are_refused_by_name(tmp_path: Path) -> None:
    c = _cohort(1, tmp_path / "cohort")
    fp = patient_fingerprints(c.manifest)
    store = _store(tmp_path / "fc", {"train": {"P001": fp["P001"], "P002": fp["P002"]}, "validation": {"P003": fp["P003"]}})
    with pytest.raises(InputError, match="held-out patient 'P002' is in the training set of checkpoint tiny@10:abc"):
        check_heldout(c, store, ("P005", "P002"))
    with pytest.raises(InputError, match="'P003' is in the validation split"):
        check_heldout(c, store, ("P003",))
    check_heldout(c, store, ("P004", "P005", "P006"))  # never seen: accepted
    with pytest.raises(InputError, match="'P999' is not in the cohort"):
        check_heldout(c, store, ("P999",))


def test_same_ids_of_another_trial_are_accepted(tmp_path: Path) -> None:
    train, other = _cohort(1, tmp_path / "train"), _cohort(2, tmp_path / "other")
    store = _store(tmp_path / "fc", {"train": patient_fingerprints(train.manifest), "validation": {}})
    assert seen_by_forecaster(other, store) == {}
    check_heldout(other, store, tuple(other.patient_ids))


def test_tuning_patients_are_refused_only_in_the_tuning_cohort(tmp_path: Path) -> None:
    c = _cohort(3, tmp_path / "val")
    (tmp_path / "val").mkdir()
    here = _store(tmp_path / "fc1", {"tuned_on": {"cohort": str(tmp_path / "val"), "patients": ["P004"]}})
    with pytest.raises(InputError, match="'P004' is in the patients checkpoint tiny@10:abc's sampler settings were tuned on"):
        check_heldout(c, here, ("P004",))
    by_fp = _store(tmp_path / "fc2", {"tuned_on": {"cohort_fingerprint": cohort_fingerprint(c.manifest), "patients": ["P001"]}})
    with pytest.raises(InputError, match="'P001'"):
        check_heldout(c, by_fp, ("P001",))
    elsewhere = _store(tmp_path / "fc3", {"tuned_on": {"cohort": "simulated trial seed 2029, 60 of its patients", "patients": ["P004"]}})
    check_heldout(c, elsewhere, ("P004",))


def test_the_calibrated_ratio_is_labelled_an_observed_data_estimator(tmp_path: Path) -> None:
    c = _cohort(1, tmp_path)
    every = heldout_kind(c, tuple(c.patient_ids))
    assert every["all_patients"] and "observed-data ratio estimator" in every["label"] and "adjusted analysis of the observed trial" in every["sentence"]
    some = heldout_kind(c, ("P001", "P002"))
    assert not some["all_patients"] and "2 of this trial's 6 randomized patients" in some["sentence"]


def test_effects_cli_refuses_a_training_patient(tmp_path: Path, cli) -> None:  # noqa: ANN001
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.provenance import training_provenance, write_store_provenance

    simulate_trial(tmp_path / "cohort", TrialConfig(patients_per_arm=2, shape=(24, 24, 24), seed=8, followup_weeks=48))
    simulate_forecasts(tmp_path / "cohort", tmp_path / "fc", ForecasterSpec("oracle", samples=2, seed=2))
    cohort = read_cohort(tmp_path / "cohort")
    ck = str(ForecastStore.open(tmp_path / "fc").index()["checkpoint"].iloc[0])
    ids = cohort.patient_ids
    write_store_provenance(tmp_path / "fc", ck, training_provenance(cohort, ids[:3], ids[3:4]))
    (tmp_path / "ho.txt").write_text(f"{ids[5]}\n{ids[1]}\n")
    res = cli("effects", tmp_path / "cohort", tmp_path / "fc", "--out", tmp_path / "eff", "--power-sims", "0", "--observed-bootstrap", "199", "--heldout-patients", tmp_path / "ho.txt")
    lines = [x for x in res.err.splitlines() if x.strip()]
    assert res.code == 2 and "Traceback" not in res.err, res.err
    assert f"held-out patient '{ids[1]}' is in the training set" in lines[-1] and len([x for x in lines if "error" in x]) == 1, res.err
    assert not (tmp_path / "eff").exists()
