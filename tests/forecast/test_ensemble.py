"""Ensemble sampling into the forecast store: batch-size invariant, seeded, resumable, checked input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mseval.commands.forecast import main
from forecast.ensemble import forecast_cohort
from forecast.sampler import SamplerSettings
from mseval.io.store import ForecastStore

PATIENTS = ["P001"]


def _run(cohort, ckpt, out, **kw):
    args = {"samples": 3, "arms": ["placebo", "ocrelizumab"], "settings": SamplerSettings("ddim", 2, 1.5), "patients": PATIENTS,
            "batch_size": 4, "seed": 7, "device": "cpu", "save_prob": True} | kw
    return forecast_cohort(cohort, ckpt, out, **args)


def _blocks(store: ForecastStore) -> dict:
    out = {}
    for b in store.blocks():
        masks, _ = b.masks()
        out[(b.patient_id, b.arm)] = (masks, b.seeds)
    return out


def test_output_is_identical_for_any_batch_size(tiny_cohort, trained, tmp_path):
    one = _blocks(_run(tiny_cohort, trained, tmp_path / "b1", batch_size=1))
    many = _blocks(_run(tiny_cohort, trained, tmp_path / "b5", batch_size=5))
    assert one.keys() == many.keys() and len(one) == 2
    for k in one:
        assert np.array_equal(one[k][0], many[k][0]) and one[k][1] == many[k][1]
    s1, s5 = ForecastStore.open(tmp_path / "b1"), ForecastStore.open(tmp_path / "b5")
    import nibabel as nib

    p1 = np.asarray(nib.load(tmp_path / "b1" / s1.block("P001", "placebo").prob_path).dataobj)
    p5 = np.asarray(nib.load(tmp_path / "b5" / s5.block("P001", "placebo").prob_path).dataobj)
    assert p1.shape == (32, 32, 32, 3) and np.array_equal(p1, p5)  # the soft probabilities too, bit for bit


def test_sampling_is_seed_deterministic(tiny_cohort, trained, tmp_path):
    st = SamplerSettings("ddpm", 2, 1.0)  # ancestral: fresh noise every step, from each member's seed
    a = _blocks(_run(tiny_cohort, trained, tmp_path / "a", settings=st))
    b = _blocks(_run(tiny_cohort, trained, tmp_path / "b", settings=st))
    c = _blocks(_run(tiny_cohort, trained, tmp_path / "c", settings=st, seed=8))
    k = ("P001", "placebo")
    assert np.array_equal(a[k][0], b[k][0]) and a[k][1] == b[k][1]
    assert a[k][1] != c[k][1]
    assert len(set(a[k][1])) == 3 and a[k][1] != a[("P001", "ocrelizumab")][1]


def test_sampling_resumes_where_it_stopped(tiny_cohort, trained, tmp_path):
    out = tmp_path / "s"
    _run(tiny_cohort, trained, out, arms=["placebo"])
    first = (out / "masks" / "P001" / "placebo.nii.gz").stat().st_mtime_ns
    store = _run(tiny_cohort, trained, out, blend=["placebo:ocrelizumab:0.5"])
    assert (out / "masks" / "P001" / "placebo.nii.gz").stat().st_mtime_ns == first
    assert set(store.keys()) == {(p, a) for p in PATIENTS for a in ("placebo", "ocrelizumab", "placebo:ocrelizumab:0.5")}
    full = _blocks(_run(tiny_cohort, trained, tmp_path / "full", blend=["placebo:ocrelizumab:0.5"]))
    assert all(np.array_equal(v[0], full[k][0]) for k, v in _blocks(store).items())
    sampler = store.block("P001", "placebo").sampler
    assert sampler["sampler"] == "ddim" and sampler["steps"] == 2 and sampler["guidance"] == 1.5


def test_cli_samples_every_arm(tiny_cohort, trained, tmp_path, capsys):
    out = tmp_path / "f"
    code = main(["sample", str(tiny_cohort), "--checkpoint", str(trained), "--out", str(out), "--samples", "1", "--steps", "1",
                 "--patients", "P003", "--batch-size", "6"])
    assert code == 0, capsys.readouterr().err
    store = ForecastStore.open(out)
    assert len(store) == 6 and store.patients == ["P003"]


def _assert_clean_error(capsys, code: int, out: Path, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("mseval: error:"), err
    for n in needles:
        assert n in err
    assert not out.exists()


def test_corrupt_checkpoint_is_one_line_and_writes_nothing(tiny_cohort, trained, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    data = (bad / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code = main(["sample", str(tiny_cohort), "--checkpoint", str(bad), "--out", str(out)])
    _assert_clean_error(capsys, code, out, "checkpoint.pt", "cannot read checkpoint")


def test_unknown_arm_is_one_line_and_writes_nothing(tiny_cohort, trained, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sample", str(tiny_cohort), "--checkpoint", str(trained), "--out", str(out), "--arms", "placebo,natalizumab"])
    _assert_clean_error(capsys, code, out, "natalizumab", "never seen")
    code = main(["sample", str(tiny_cohort), "--checkpoint", str(trained), "--out", str(out), "--blend", "placebo:natalizumab:0.5"])
    _assert_clean_error(capsys, code, out, "natalizumab")


def test_cohort_arm_the_checkpoint_never_saw(cohort_copy, trained, tmp_path, capsys):
    arms = cohort_copy / "arms.csv"
    arms.write_text(arms.read_text().rstrip("\n") + "\nnatalizumab,Natalizumab,high,false\n")
    for truth in ("truth.csv", "truth_visits.csv"):  # a cohort to forecast has no truth
        (cohort_copy / truth).unlink(missing_ok=True)
    out = tmp_path / "out"
    code = main(["sample", str(cohort_copy), "--checkpoint", str(trained), "--out", str(out)])
    _assert_clean_error(capsys, code, out, "arms.csv", "natalizumab")


def test_cohort_shape_mismatch_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    small = tmp_path / "c16"
    simulate_trial(small, TrialConfig(patients_per_arm=1, shape=(16, 16, 16), seed=2, followup_weeks=48))
    out = tmp_path / "out"
    code = main(["sample", str(small), "--checkpoint", str(trained), "--out", str(out)])
    _assert_clean_error(capsys, code, out, "manifest.csv", "shape [16, 16, 16]", "[32, 32, 32]")


def test_sampler_must_fit_the_objective(tiny_cohort, trained, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sample", str(tiny_cohort), "--checkpoint", str(trained), "--out", str(out), "--sampler", "rflow"])
    _assert_clean_error(capsys, code, out, "rflow")


def test_a_second_rank_skips_blocks_already_stored(tiny_cohort, trained, tmp_path, monkeypatch):
    """Multi-rank resume: rank 1 of 2 opens the store as an appender (which knows no index) and must
    still skip what the index and journal hold, leaving stored blocks untouched."""
    import torch

    import forecast.train

    out = tmp_path / "s"
    ids = ["P001", "P002"]  # P002 is patient 1 of the list: rank 1 of 2 owns it
    _run(tiny_cohort, trained, out, arms=["placebo"], patients=ids)
    stored = out / "masks" / "P002" / "placebo.nii.gz"
    before = stored.stat().st_mtime_ns
    monkeypatch.setattr(forecast.train, "dist_info", lambda: (1, 2))
    monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
    _run(tiny_cohort, trained, out, arms=["placebo", "ocrelizumab"], patients=ids)
    assert stored.stat().st_mtime_ns == before
    assert (out / "masks" / "P002" / "ocrelizumab.nii.gz").is_file()  # rank 1's missing block was sampled
    assert not (out / "masks" / "P001" / "ocrelizumab.nii.gz").exists()  # P001 belongs to rank 0
    monkeypatch.undo()
    store = ForecastStore.create(out)
    store.flush()
    block = ForecastStore.open(out).block("P002", "ocrelizumab")
    assert block.sampler["device"] == "cpu" and block.sampler["batch_size_invariant"] is True
    assert block.sampler["autocast_dtype"] == "float32"


def test_capping_rows_per_call_does_not_change_the_samples(tiny_cohort, trained, tmp_path):
    whole = _blocks(_run(tiny_cohort, trained, tmp_path / "whole", batch_size=4))
    capped = _blocks(_run(tiny_cohort, trained, tmp_path / "capped", batch_size=4, max_rows=3))
    assert whole.keys() == capped.keys()
    assert all(np.array_equal(whole[k][0], capped[k][0]) for k in whole)


def test_masks_keep_the_probabilities_above_the_checkpoints_threshold(trained, tiny_cohort, tmp_path):
    """The config's mask_threshold binarises the samples unless the settings name one; the block records it."""
    from dataclasses import replace

    from forecast.checkpoint import load_checkpoint

    ck = load_checkpoint(trained)
    ck = replace(ck, config=ck.config.with_(mask_threshold=0.8))
    for name, settings, want in (("cfg", SamplerSettings("ddim", 2, 1.0), 0.8), ("own", SamplerSettings("ddim", 2, 1.0, threshold=0.2), 0.2)):
        st = forecast_cohort(tiny_cohort, ck, tmp_path / name, samples=2, arms=["placebo"], settings=settings, patients=["P001"], seed=1,
                             save_prob=True, device="cpu")
        b = st.block("P001", "placebo")
        prob, _ = b.prob()
        assert b.sampler["threshold"] == want
        assert np.array_equal(b.masks()[0], (prob > want).astype(np.uint8))
    with pytest.raises(ValueError, match="strictly between"):
        SamplerSettings("ddim", 2, 1.0, threshold=1.0)
