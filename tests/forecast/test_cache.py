"""The training cache: compact dtypes, memory-mapped, the same arrays as the in-memory path (to
float16), step batches that agree across ranks, and a DataLoader with workers giving the same items."""

from __future__ import annotations

import numpy as np
import torch

from forecast.cache import PatientCache, StepBatches, build_cache, step_loader, step_members
from forecast.data import load_patient
from mseval.io.cohort import read_cohort


def test_cache_holds_compact_arrays_equal_to_the_loaded_patient(tiny_cohort, small_cfg, tmp_path):
    cohort = read_cohort(tiny_cohort)
    ids = cohort.patient_ids[:3]
    folder = build_cache(cohort, ids, small_cfg, tmp_path / "c")
    assert np.load(folder / f"{ids[0]}.images.npy", mmap_mode="r").dtype == np.float16
    assert np.load(folder / f"{ids[0]}.masks.npy", mmap_mode="r").dtype == np.uint8
    assert np.load(folder / f"{ids[0]}.target.npy", mmap_mode="r").dtype == np.uint8
    data = PatientCache(folder, ids)
    for i, pid in enumerate(ids):
        ref = load_patient(cohort, pid, small_cfg)
        cond, target = data.item(i)
        np.testing.assert_allclose(cond.numpy(), ref.cond, rtol=2**-10, atol=1e-3)  # float16 z-scores
        assert np.array_equal(target[0].numpy(), ref.target)
        assert data.arms[i] == ref.arm
    mtime = (folder / f"{ids[0]}.images.npy").stat().st_mtime_ns
    build_cache(cohort, ids, small_cfg, folder)  # same fingerprint: kept, not rewritten
    assert (folder / f"{ids[0]}.images.npy").stat().st_mtime_ns == mtime


def test_ranks_split_each_step_without_overlap(small_cfg):
    cfg = small_cfg.with_(batch_size=8, grad_accumulation=2)
    one = step_members(cfg, 10, 3, 0, 1)
    two = step_members(cfg, 10, 3, 0, 2) + step_members(cfg, 10, 3, 1, 2)
    assert sorted(one) == sorted(two) and len(one) == 8  # same members, patients and seeds, split over ranks


def test_loader_with_workers_gives_the_same_steps(tiny_cohort, small_cfg, tmp_path):
    cohort = read_cohort(tiny_cohort)
    ids = cohort.patient_ids[:4]
    data = PatientCache(build_cache(cohort, ids, small_cfg, tmp_path / "c"), ids)
    direct = [StepBatches(data, small_cfg, 1, 3, 0, 1)[i] for i in range(3)]
    loaded = list(step_loader(data, small_cfg, 1, 3, 0, 1, workers=2))
    assert len(loaded) == 3
    for a, b in zip(direct, loaded):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
