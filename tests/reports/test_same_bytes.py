"""`mseval report` writes the same bytes for the same inputs whatever folder it writes into: every
file (HTML, Markdown, figures, tables, summary.json and the evaluation and effects folders it
computes, JSON and Parquet included) and no file names the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mseval.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The smallest trial the report tests use (3 patients per arm, 32x38x32) and 2 oracle samples."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    root = tmp_path_factory.mktemp("same_bytes")
    simulate_trial(root / "cohort", TrialConfig(patients_per_arm=3, shape=(32, 38, 32), seed=4, followup_weeks=48))
    simulate_forecasts(root / "cohort", root / "fc", ForecasterSpec("oracle", samples=2, seed=5))
    return {"cohort": root / "cohort", "fc": root / "fc"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_report_folders_from_the_same_inputs_hold_identical_files(inputs: dict[str, Path], tmp_path: Path) -> None:
    outs = [tmp_path / "one" / "report", tmp_path / "two" / "deeper" / "rep"]
    for out in outs:
        out.parent.mkdir(parents=True)
        assert main(["report", str(inputs["cohort"]), str(inputs["fc"]), "--out", str(out), "--power-sims", "2"]) == 0
    a, b = _files(outs[0]), _files(outs[1])
    assert sorted(a) == sorted(b)
    assert {"summary.json", "results/effects/effects.json", "results/evaluation/summary.json", "results/counts/counts.parquet"} <= set(a)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, differ
    for name, data in b.items():  # not even a relative mention of the folder's own name
        assert str(tmp_path).encode() not in data and b"deeper" not in data, name
