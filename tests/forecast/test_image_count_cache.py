"""`load_arrays(..., cache=DIR)`: each patient read once, handed back memory-mapped, equal to a plain read; a changed
file or another reading recipe is read again; training on cached arrays gives the same weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import forecast.image_count_data as data
from forecast.image_count import ImageCountNet, fit_image_count
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays
from mseval.io.cohort import read_cohort


def same(a, b) -> bool:  # noqa: ANN001 - two PatientArrays
    return (a.arm == b.arm and np.array_equal(a.cond, b.cond) and np.array_equal(a.brain, b.brain) and np.array_equal(a.tab, b.tab)
            and a.brain.flags.f_contiguous == b.brain.flags.f_contiguous and a.cond.flags.c_contiguous == b.cond.flags.c_contiguous
            and np.array_equal(a.counts, b.counts, equal_nan=True) and np.array_equal(a.years, b.years) and np.array_equal(a.centres, b.centres))


@pytest.fixture()
def cohort(visits_cohort: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(visits_cohort, out)
    return out


def test_cached_arrays_equal_a_plain_read_are_memory_mapped_and_read_once(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    c = read_cohort(cohort)
    arms, ids = list(c.arms["arm"]), list(c.patient_ids)
    plain = load_arrays(c, ids, arms)
    first = load_arrays(c, ids, arms, cache=tmp_path / "cache", workers=2)
    assert all(same(a, b) for a, b in zip(first, plain))
    assert all(isinstance(p.cond, np.memmap) and not p.cond.flags.writeable for p in first)
    reads = []
    real = data._patient_arrays
    monkeypatch.setattr(data, "_patient_arrays", lambda c_, f, v, pid, *a: reads.append(pid) or real(c_, f, v, pid, *a))
    again = load_arrays(c, ids, arms, cache=tmp_path / "cache")
    assert reads == [] and all(same(a, b) for a, b in zip(again, plain))
    # a changed baseline image is read again, and only that patient
    path = cohort / c.row(ids[3])["flair"]
    img = nib.load(path)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[vol > 0] *= 1.5
    nib.save(nib.Nifti1Image(vol, img.affine, img.header), path)
    changed = load_arrays(read_cohort(cohort), ids, arms, cache=tmp_path / "cache")
    assert reads == [ids[3]] and not np.array_equal(changed[3].cond, plain[3].cond)
    assert all(same(a, b) for k, (a, b) in enumerate(zip(changed, plain)) if k != 3)
    # another recipe (no targets, another normalisation) is another entry
    reads.clear()
    load_arrays(read_cohort(cohort), ids[:2], arms, cache=tmp_path / "cache", with_targets=False)
    assert reads == ids[:2]


def test_training_on_cached_arrays_gives_the_same_weights(cohort: Path, tmp_path: Path) -> None:
    c = read_cohort(cohort)
    arms, ids = list(c.arms["arm"]), list(c.patient_ids)
    weights = []
    for cache in (None, tmp_path / "cache"):
        ps = load_arrays(c, ids, arms, cache=cache)
        torch.manual_seed(0)
        net = ImageCountNet(len(IMAGE_CHANNELS) + len(MASK_CHANNELS), len(arms), hidden=4, mlp=8)
        fit_image_count(net, ps[:9], ps[9:], epochs=1, batch=4, seed=3)
        weights.append({k: v.clone() for k, v in net.state_dict().items()})
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []
