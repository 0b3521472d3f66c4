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
