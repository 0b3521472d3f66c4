"""Shared fixtures: small simulated cohorts (made once per session) and a CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mseval.cli import main
from mseval.simulate.model import TrialConfig



@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two patients per arm (12 in all) at 32^3: the cohort bad-input tests copy and break."""
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("cohorts") / "tiny"
    simulate_trial(out, TrialConfig(patients_per_arm=2, shape=(32, 32, 32), seed=11))
    return out


@pytest.fixture()
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_cohort` that a test may break."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, dst)
    return dst


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run `mseval ARGS...` in-process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def _count_trial(seed: int, patients_per_arm: int = 40):  # noqa: ANN202
    """A trial drawn exactly as `mseval simulate` draws it, without images: (features + observed net2,
    true expected count under the allocated arm, latent activity). The T2 volume is the lesion count
    times a u-free per-patient lesion size, as in the image simulator."""
    import numpy as np
    import pandas as pd

    from mseval.simulate.model import WEEKS_PER_YEAR, draw_patients, truth_frame

    cfg = TrialConfig(patients_per_arm=patients_per_arm, seed=seed)
    pats = draw_patients(cfg, np.random.default_rng(seed))
    truth = truth_frame(pats, cfg)
    mu = truth[truth["allocated"]].set_index("patient_id").loc[pats["patient_id"], "expected_count"].to_numpy()
    rng = np.random.default_rng([seed, 1])
    feats = pd.DataFrame({
        "patient_id": pats["patient_id"], "arm": pats["arm"], "age": pats["age"], "followup_years": pats["followup_weeks"] / WEEKS_PER_YEAR,
        "gd_count": pats["gd_count"], "t2_count": pats["n_baseline_lesions"],
        "t2_volume_mm3": pats["n_baseline_lesions"] * 180.0 * rng.lognormal(0.0, 0.3, len(pats)),
        "net2": rng.poisson(mu),
    })
    return feats, mu, pats["latent_activity"].to_numpy()


@pytest.fixture()
def count_trial():  # noqa: ANN201
    """count_trial(seed, patients_per_arm=40) -> (features with observed net2, true allocated mean, latent activity):
    a trial of the simulator's count model without images (baseline features as the inputs show them)."""
    return _count_trial
