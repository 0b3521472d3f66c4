"""Shared inputs of the BIDS tests: one tiny simulated trial, its BIDS export and the import of that, made once."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mseval.cli import main


@pytest.fixture(scope="session")
def trial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16^3 multi-visit cohort (2 patients per arm, visits w24/w48/w96), a 2-sample oracle store, the
    cohort exported to BIDS by `mseval export bids` and imported back by `mseval import bids`."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("bids")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=2, shape=(20, 24, 20), seed=5))
    simulate_forecasts(root / "cohort", root / "store", ForecasterSpec("oracle", samples=2, seed=0))
    assert main(["export", "bids", str(root / "cohort"), str(root / "bids")]) == 0
    assert main(["import", "bids", str(root / "bids"), "--out", str(root / "imported")]) == 0
    return {"root": root, "cohort": root / "cohort", "store": root / "store", "bids": root / "bids", "imported": root / "imported"}


@pytest.fixture()
def bids_copy(trial: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the exported BIDS dataset, for a test to damage."""
    return Path(shutil.copytree(trial["bids"], tmp_path / "bids"))


def write_foreign(store: Path, folder: Path, *, per_sample: bool = True, probability: bool = False) -> list[tuple[str, str, int, str]]:
    """Read the project's 4D blocks with nibabel and write them back as another group would: plain nib.save,
    3D per sample (`{patient}_{arm}_{sample}.nii.gz`) or 4D per patient and arm (`{patient}-{arm}.nii.gz`).
    probability: float32 maps, 0.8 inside the mask and 0.1 outside (so p > 0.5 gives the masks back).
    Returns (patient, arm, sample or -1, file name) of every file written."""
    folder.mkdir(parents=True)
    written = []
    for path in sorted((store / "masks").glob("*/*.nii.gz")):
        pid, arm = path.parent.name, path.name.removesuffix(".nii.gz")
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.uint8)
        if probability:
            data = np.where(data > 0, 0.8, 0.1).astype(np.float32)
        if per_sample:
            for s in range(data.shape[3]):
                nib.save(nib.Nifti1Image(data[..., s], img.affine), str(folder / f"{pid}_{arm}_{s}.nii.gz"))
                written.append((pid, arm, s, f"{pid}_{arm}_{s}.nii.gz"))
        else:
            nib.save(nib.Nifti1Image(data, img.affine), str(folder / f"{pid}-{arm}.nii.gz"))
            written.append((pid, arm, -1, f"{pid}-{arm}.nii.gz"))
    return written


@pytest.fixture(scope="session")
def foreign() -> Callable[..., list[tuple[str, str, int, str]]]:
    """`write_foreign`, for tests that bring forecasts made outside the project."""
    return write_foreign
