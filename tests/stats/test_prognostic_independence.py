"""PROCOVA's prognostic forecaster must be independent of the trial (issue 22, item 5): a score from a
forecaster whose provenance shows it trained on this trial's patients is flagged, not reported as a
saving; unknown provenance is said. The attainable saving (the observable oracle's score) is the
measured formula with a better score. End to end (`mseval effects`): tests/stats/test_effects.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.heldout import prognostic_independence
from mseval.provenance import patient_fingerprints
from mseval.simulate.counts_only import simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.validity.forecast import DRUG, PLACEBO
from mseval.stats.prognostic import ATTAINABLE_LABEL, attainable_saving, prognostic_adjustment, with_independence
from tests.test_heldout import _cohort, _store


def test_a_forecaster_trained_on_trial_patients_is_flagged_and_one_trained_elsewhere_is_not(tmp_path: Path) -> None:
    trial, other = _cohort(1, tmp_path / "trial"), _cohort(2, tmp_path / "other")
    fp = patient_fingerprints(trial.manifest)
    overlap = _store(tmp_path / "fc1", {"train": {p: fp[p] for p in ("P001", "P002", "P004")}})
    ind = prognostic_independence(trial, overlap, {"checkpoints": [{"status": "mixed"}]})
    assert ind["status"] == "trained on this trial" and ind["n_seen"] == 3 and not ind["estimable"]
    assert "the prognostic forecaster trained on 3 of this trial's 6 patients" in ind["note"] and "optimistic" in ind["note"]
    # the same ids in another trial (fingerprints differ): independent
    elsewhere = _store(tmp_path / "fc2", {"train": patient_fingerprints(other.manifest)})
    ind2 = prognostic_independence(trial, elsewhere, {"checkpoints": [{"status": "held-out"}]})
    assert ind2 == {"n_patients": 6, "status": "independent", "n_seen": 0, "estimable": True, "note": ""}
    # no record of training patients, or no store at all: unknown, said in the note, not flagged
    bare = tmp_path / "fc3"
    bare.mkdir()
    for ind3 in (prognostic_independence(trial, bare, {"checkpoints": [{"status": "unknown"}]}), prognostic_independence(trial, None)):
        assert ind3["status"] == "unknown" and ind3["estimable"] and "provenance is unknown" in ind3["note"]
    table = pd.DataFrame({"arm": ["drug"], "sample_size_saving_pct": [30.0], "estimable": [True], "note": [""]})
    flagged = with_independence(table, ind).iloc[0]
    assert not flagged["estimable"] and flagged["note"].startswith("the prognostic forecaster trained on 3") and flagged["sample_size_saving_pct"] == 30.0
    assert with_independence(table, ind2).iloc[0]["estimable"]


def test_attainable_saving_is_the_measured_formula_with_a_better_score() -> None:
    """On one trial of 150 per arm: the saving with the true reference-arm mean as score (what an oracle
    knows) is the same number `prognostic_adjustment` gives with that score, and exceeds the saving of a
    score of pure noise by a wide margin (true score: ~50% for a dispersion-1.7 NB2; noise: ~0 +- 3)."""
    tr = simulate_count_trial(TrialConfig(patients_per_arm=150, arms=(PLACEBO, DRUG), seed=31), samples=1)
    t = tr.truth[tr.truth["arm"] == "placebo"].set_index("patient_id")["expected_count"]
    att = attainable_saving(tr.table, t, "placebo").set_index("arm").loc[DRUG.arm]
    direct = prognostic_adjustment(tr.table, pd.DataFrame({"patient_id": t.index, "arm": "placebo", "expected": t.to_numpy(), "samples": np.inf}),
                                   "placebo", n_boot=0).table.set_index("arm").loc[DRUG.arm, "sample_size_saving_pct"]
    assert att["attainable_saving_pct"] == pytest.approx(direct) and att["attainable_label"] == ATTAINABLE_LABEL
    noise = pd.Series(np.random.default_rng(0).gamma(1.0, 1.0, len(t)), index=t.index)
    att_noise = attainable_saving(tr.table, noise, "placebo").set_index("arm").loc[DRUG.arm, "attainable_saving_pct"]
    assert att["attainable_saving_pct"] > 25 and abs(att_noise) < 10 and att["attainable_saving_pct"] > att_noise + 20
