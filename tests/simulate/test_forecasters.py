"""Simulated forecasters: the oracle's counts match the truth; the distorted ones are distorted;
output is deterministic, independent of workers, and resumable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cc3d
import numpy as np
import pytest

from mseval.errors import InputError
from mseval.io.cohort import read_cohort
from mseval.io.nifti import load_volume
from mseval.io.store import ForecastStore
from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts


def _counts(store: ForecastStore) -> dict[tuple[str, str], np.ndarray]:
    out = {}
    for b in store.blocks():
        masks, _ = b.masks()
        out[(b.patient_id, b.arm)] = np.array([cc3d.connected_components(m, connectivity=26).max() for m in masks])
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def oracle(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fc") / "oracle"
    simulate_forecasts(tiny_cohort, out, ForecasterSpec("oracle", samples=20, seed=5))
    return out


def test_oracle_mean_counts_match_truth(tiny_cohort: Path, oracle: Path) -> None:
    """Each sample's count is Poisson(expected_count), so the total over all samples of all blocks
    is Poisson(S x sum of expected counts): |z| < 3.29 (two-sided 0.001). Per arm too, at a
    Bonferroni-corrected 0.001/6 (|z| < 3.76)."""
    truth = read_cohort(tiny_cohort).truth.set_index(["patient_id", "arm"])["expected_count"]  # type: ignore[union-attr]
    counts = _counts(ForecastStore.open(oracle))
    assert len(counts) == 12 * 6
    total = sum(c.sum() for c in counts.values())
    mu = sum(20 * truth[k] for k in counts)
    assert abs(total - mu) / np.sqrt(mu) < 3.29
    for arm in {a for _, a in counts}:
        keys = [k for k in counts if k[1] == arm]
        t, m = sum(counts[k].sum() for k in keys), sum(20 * truth[k] for k in keys)
        assert abs(t - m) / np.sqrt(m) < 3.76, arm


def test_oracle_lesions_in_white_matter_and_seeds_recorded(tiny_cohort: Path, oracle: Path) -> None:
    store = ForecastStore.open(oracle)
    for b in list(store.blocks())[:12]:
        masks, affine = b.masks()
        tissues = load_volume(tiny_cohort / "images" / b.patient_id / "tissues.nii.gz")
        assert np.allclose(affine, tissues.affine)
        assert np.all(tissues.data[masks.max(axis=0) > 0] == 3)
        assert len(set(b.seeds)) == 20 and b.checkpoint == "simulated-oracle" and b.sampler["forecaster"] == "oracle"


def test_resume_and_workers_give_identical_store(tiny_cohort: Path, oracle: Path, tmp_path: Path) -> None:
    spec = ForecasterSpec("oracle", samples=20, seed=5)
    simulate_forecasts(tiny_cohort, tmp_path / "fc", spec, arms=["placebo", "dmf"])
    assert ForecastStore.open(tmp_path / "fc").arms == ["dmf", "placebo"]
    simulate_forecasts(tiny_cohort, tmp_path / "fc", spec, workers=2)
    assert _digest(tmp_path / "fc") == _digest(oracle)


def test_distorted_forecasters_are_distorted(tiny_cohort: Path, oracle: Path, tmp_path: Path) -> None:
    """biased: mean about 2x the oracle's (z-test on Poisson totals); overdispersed: same mean,
    larger within-block variance (its variance / mean ratio exceeds the oracle's)."""
    base = _counts(ForecastStore.open(oracle))
    simulate_forecasts(tiny_cohort, tmp_path / "b", ForecasterSpec("biased", samples=20, seed=5), arms=["ifnb1a_sc"])
    simulate_forecasts(tiny_cohort, tmp_path / "o", ForecasterSpec("overdispersed", samples=20, seed=5, extra_dispersion=0.5), arms=["ifnb1a_sc"])
    biased, over = _counts(ForecastStore.open(tmp_path / "b")), _counts(ForecastStore.open(tmp_path / "o"))
    truth = read_cohort(tiny_cohort).truth.set_index(["patient_id", "arm"])["expected_count"]  # type: ignore[union-attr]
    mu = sum(20 * truth[k] for k in biased)
    assert abs(sum(c.sum() for c in biased.values()) - 2 * mu) / np.sqrt(2 * mu) < 3.29
    disp_over = np.mean([c.var(ddof=1) / max(c.mean(), 0.5) for c in over.values()])
    disp_oracle = np.mean([base[k].var(ddof=1) / max(base[k].mean(), 0.5) for k in over])
    assert disp_over > 1.5 * disp_oracle


def test_bad_requests(tiny_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown forecaster kind"):
        simulate_forecasts(tiny_cohort, tmp_path / "x", ForecasterSpec("psychic"))
    with pytest.raises(InputError, match="unknown arm 'aspirin'"):
        simulate_forecasts(tiny_cohort, tmp_path / "x", ForecasterSpec("oracle"), arms=["aspirin"])
    assert not (tmp_path / "x").exists()
