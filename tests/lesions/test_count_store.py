"""Counting a forecast store: equal to dense counting of every mask, identical for any worker
count and on a local Dask cluster, resumable, settings recorded, bad blocks rejected cleanly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.io.nifti import save_volume
from mseval.io.sparse import SparseMasks
from mseval.io.store import ForecastStore
from mseval.lesions.components import count_lesions
from mseval.lesions.ensemble import CountSettings, count_store, read_count_settings
from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts


@pytest.fixture(scope="module")
def store(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ens") / "fc"
    simulate_forecasts(tiny_cohort, out, ForecasterSpec("oracle", samples=4, seed=9), arms=["placebo", "ifnb1a_im", "ocrelizumab"])
    return out


@pytest.mark.parametrize("settings", [CountSettings(), CountSettings(connectivity=6, min_voxels=4)])
def test_counts_equal_dense_counting(store: Path, tmp_path: Path, settings: CountSettings) -> None:
    res = count_store(store, tmp_path / "out", settings)
    assert len(res.counts) == 12 * 3 * 4
    got = res.counts.set_index(["patient_id", "arm", "sample"])
    for block in ForecastStore.open(store).blocks():
        masks, affine = block.masks()
        for s, m in enumerate(masks):
            dense = count_lesions(m, affine, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3, min_voxels=settings.min_voxels)
            row = got.loc[(block.patient_id, block.arm, s)]
            assert row["count"] == dense.count and row["volume_mm3"] == pytest.approx(dense.volume_mm3)
            les = res.lesions[(res.lesions["patient_id"] == block.patient_id) & (res.lesions["arm"] == block.arm) & (res.lesions["sample"] == s)]
            assert les["voxels"].tolist() == dense.lesions["voxels"].tolist()
            assert np.allclose(les["centroid_x_mm"], dense.lesions["centroid_x_mm"])
    assert read_count_settings(tmp_path / "out" / "counts.parquet")["connectivity"] == settings.connectivity
    assert not (tmp_path / "out" / "_parts").exists()


def test_workers_dask_and_resume_give_identical_tables(store: Path, tmp_path: Path) -> None:
    one = count_store(store, tmp_path / "one", chunk_blocks=5)
    two = count_store(store, tmp_path / "two", workers=2, chunk_blocks=5)
    pd.testing.assert_frame_equal(one.counts, two.counts)
    pd.testing.assert_frame_equal(one.lesions, two.lesions)
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dask = count_store(store, tmp_path / "dask", chunk_blocks=5, dask_scheduler=cluster.scheduler_address)
    pd.testing.assert_frame_equal(one.counts, dask.counts)
    pd.testing.assert_frame_equal(one.lesions, dask.lesions)
    # resume: a run stopped after some chunks picks up the rest and gives the same tables
    calls: list[int] = []

    def stop_after_three_chunks(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        count_store(store, tmp_path / "resumed", chunk_blocks=5, progress=stop_after_three_chunks)
    parts = sorted((tmp_path / "resumed" / "_parts").glob("counts-*.parquet"))
    assert 0 < len(parts) < 8
    resumed = count_store(store, tmp_path / "resumed", chunk_blocks=5)
    pd.testing.assert_frame_equal(one.counts, resumed.counts)
    assert (tmp_path / "one" / "counts.parquet").read_bytes() == (tmp_path / "resumed" / "counts.parquet").read_bytes()
    with pytest.raises(InputError, match="exists already"):
        count_store(store, tmp_path / "one")


def test_block_with_wrong_sample_count_leaves_nothing(store: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    broken = tmp_path / "fc"
    shutil.copytree(store, broken)
    block = ForecastStore.open(broken).block("P005", "placebo")
    masks, affine = block.masks()
    SparseMasks.from_dense(masks[:3], affine).save(broken / block.sparse_path)
    save_volume(np.moveaxis(masks[:3], 0, 3), affine, broken / block.path)
    res = cli("count", broken, "--out", tmp_path / "out")
    assert res.code == 2 and "holds 3 samples, the index says 4" in res.err and res.err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    res = cli("count", broken, "--out", tmp_path / "out", "--connectivity", "8")
    assert res.code == 2 and "--connectivity must be 6, 18 or 26" in res.err


def test_count_cli_writes_tables(store: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    res = cli("count", store, "--out", tmp_path / "out", "--workers", "2")
    assert res.code == 0, res.err
    counts = pd.read_parquet(tmp_path / "out" / "counts.parquet")
    assert list(counts.columns) == ["patient_id", "arm", "sample", "count", "volume_mm3"]
    assert "placebo: mean" in res.out
