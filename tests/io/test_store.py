"""Forecast store: write, read, resume after a crash, sparse companion, bad blocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mseval.errors import InputError
from mseval.io.nifti import save_volume
from mseval.io.sparse import SparseMasks
from mseval.io.store import ForecastStore

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _masks(seed: int, s: int = 3) -> np.ndarray:
    return (np.random.default_rng(seed).random((s, 6, 7, 8)) > 0.85).astype(np.uint8)


def _fill(root: Path, patients: list[str], arms: list[str]) -> dict[tuple[str, str], np.ndarray]:
    written = {}
    with ForecastStore.create(root, flush_every=3) as store:
        for k, p in enumerate(patients):
            for j, a in enumerate(arms):
                m = _masks(10 * k + j)
                store.write_block(p, a, m, AFFINE, [7, 8, 9], checkpoint="ckpt-abc", sampler={"steps": 50, "sampler": "ddim"})
                written[(p, a)] = m
    return written


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    written = _fill(tmp_path / "fc", ["P1", "P2"], ["placebo", "dmf"])
    store = ForecastStore.open(tmp_path / "fc")
    assert store.keys() == sorted(written) and store.patients == ["P1", "P2"] and store.arms == ["dmf", "placebo"]
    idx = store.index()
    assert list(idx["samples"]) == [3] * 4 and idx["seeds"].iloc[0] == [7, 8, 9]
    assert json.loads(idx["sampler"].iloc[0]) == {"sampler": "ddim", "steps": 50}
    for block in store.blocks():
        masks, affine = block.masks()
        assert np.array_equal(masks, written[(block.patient_id, block.arm)])
        assert np.allclose(affine, AFFINE) and block.checkpoint == "ckpt-abc"
        sp = block.sparse()
        assert all(np.array_equal(sp.dense(s), masks[s]) for s in range(3))
    assert [b.arm for b in store.blocks(arms=["dmf"])] == ["dmf", "dmf"]
    assert not (tmp_path / "fc" / "_journal").exists()


def test_resume_after_crash_keeps_whole_blocks(tmp_path: Path) -> None:
    root = tmp_path / "fc"
    store = ForecastStore.create(root, flush_every=1000)
    store.write_block("P1", "placebo", _masks(1), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    store.write_block("P1", "dmf", _masks(2), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    # crash: no flush, and a half-written block (data file, no journal entry)
    save_volume(np.zeros((6, 7, 8, 3), np.uint8), AFFINE, root / "masks" / "P2" / "placebo.nii.gz")
    del store
    resumed = ForecastStore.create(root)
    assert resumed.keys() == [("P1", "dmf"), ("P1", "placebo")]
    assert ("P2", "placebo") not in resumed
    with pytest.raises(ValueError, match="already in the store"):
        resumed.write_block("P1", "dmf", _masks(2), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    resumed.write_block("P2", "placebo", _masks(3), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    resumed.close()
    final = ForecastStore.open(root)
    assert len(final) == 3 and np.array_equal(final.block("P2", "placebo").masks()[0], _masks(3))


def test_identical_inputs_give_identical_bytes(tmp_path: Path) -> None:
    _fill(tmp_path / "a", ["P1"], ["placebo"])
    _fill(tmp_path / "b", ["P1"], ["placebo"])
    for rel in ["index.parquet", "masks/P1/placebo.nii.gz", "sparse/P1/placebo.npz"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_block_with_wrong_sample_count_is_an_input_error(tmp_path: Path) -> None:
    _fill(tmp_path / "fc", ["P1"], ["placebo"])
    save_volume(np.zeros((6, 7, 8, 2), np.uint8), AFFINE, tmp_path / "fc" / "masks" / "P1" / "placebo.nii.gz")
    SparseMasks.from_dense(np.zeros((2, 6, 7, 8), np.uint8)).save(tmp_path / "fc" / "sparse" / "P1" / "placebo.npz")
    block = ForecastStore.open(tmp_path / "fc").block("P1", "placebo")
    with pytest.raises(InputError, match="holds 2 samples, the index says 3"):
        block.masks()
    with pytest.raises(InputError, match="holds 2 samples, the index says 3"):
        block.sparse()


def test_open_rejects_non_stores(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        ForecastStore.open(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not a forecast store"):
        ForecastStore.open(tmp_path / "other")
    with pytest.raises(InputError, match="not a forecast store"):
        ForecastStore.create(tmp_path / "other")


def test_write_block_checks_its_arguments(tmp_path: Path) -> None:
    store = ForecastStore.create(tmp_path / "fc")
    with pytest.raises(ValueError, match="seeds"):
        store.write_block("P1", "a", _masks(0), AFFINE, [1], checkpoint="c", sampler={})
    with pytest.raises(ValueError, match="binary"):
        store.write_block("P1", "a", _masks(0) * 3, AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    with pytest.raises(InputError, match="does not match"):
        store.write_block("bad id", "a", _masks(0), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    assert len(store) == 0 and not (tmp_path / "fc" / "masks").exists()


def test_appender_never_consolidates(tmp_path: Path) -> None:
    ForecastStore.create(tmp_path / "fc").close()
    worker = ForecastStore.appender(tmp_path / "fc")
    worker.write_block("P1", "a", _masks(0), AFFINE, [1, 2, 3], checkpoint="c", sampler={})
    worker.close()
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "fc" / "index.parquet")) == 0
    coordinator = ForecastStore.create(tmp_path / "fc")
    assert coordinator.keys() == [("P1", "a")]
    coordinator.flush()
    assert ForecastStore.open(tmp_path / "fc").keys() == [("P1", "a")]


def test_sparse_companion_is_exact() -> None:
    m = _masks(5, s=4)
    m[2] = 0
    sp = SparseMasks.from_dense(m)
    assert sp.n_samples == 4 and sp.sample(2).size == 0
    assert np.array_equal(sp.coords(0), np.argwhere(m[0]))


def test_forecaster_ids_per_sample_round_trip_and_provenance(tmp_path: Path) -> None:
    """A block of K x M samples names the forecaster of each; store.json holds each forecaster's
    provenance; a store without the column reads as one forecaster (old stores stay readable)."""
    from mseval.io.store import record_forecasters, store_forecasters

    root = tmp_path / "fc"
    with ForecastStore.create(root) as store:
        for p in ("P1", "P2"):
            for a in ("placebo", "dmf"):
                store.write_block(p, a, _masks(1, 4), AFFINE, [1, 2, 3, 4], checkpoint="nb2", sampler={}, forecaster=[0, 0, 1, 1])
    record_forecasters(root, {0: {"resample": "bootstrap"}, 1: {"resample": "bootstrap"}})
    idx = ForecastStore.open(root).index()
    assert idx["forecaster"].iloc[0] == [0, 0, 1, 1]
    sf = store_forecasters(root)
    assert sf.ids == [0, 1] and sf.provenance[1] == {"resample": "bootstrap"} and len(sf.samples) == 16
    old = tmp_path / "old"
    _fill(old, ["P1"], ["placebo"])
    assert "forecaster" not in ForecastStore.open(old).index().columns and store_forecasters(old).ids == [0]


def test_store_mixing_forecasters_without_provenance_is_refused(tmp_path: Path) -> None:
    from mseval.io.store import store_forecasters

    root = tmp_path / "fc"
    with ForecastStore.create(root) as store:
        store.write_block("P1", "placebo", _masks(1, 4), AFFINE, [1, 2, 3, 4], checkpoint="nb2", sampler={}, forecaster=[0, 0, 1, 1])
    with pytest.raises(InputError, match="no provenance for forecaster 0"):
        store_forecasters(root)
    mixed = tmp_path / "mixed"
    with ForecastStore.create(mixed) as store:
        store.write_block("P1", "placebo", _masks(1, 2), AFFINE, [1, 2], checkpoint="a", sampler={}, forecaster=[0, 1])
        store.write_block("P2", "placebo", _masks(2, 2), AFFINE, [1, 2], checkpoint="b", sampler={})
    with pytest.raises(InputError, match="mixes forecasters without provenance"):
        store_forecasters(mixed)
    with pytest.raises(ValueError, match="forecaster ids"):
        ForecastStore.create(tmp_path / "x").write_block("P1", "placebo", _masks(1, 2), AFFINE, [1, 2], checkpoint="a", sampler={}, forecaster=[0])
