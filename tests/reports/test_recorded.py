"""`mseval report` reuses the seed, power-simulation count and bootstrap size that the given
`mseval effects` / `mseval evaluate` folders recorded, refuses a contradicting option (exit 2,
one line), and says where each value came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mseval.errors import InputError
from reports.recorded import DEFAULTS, resolve_run_settings


def _folders(tmp_path: Path, seed: int = 7, power_sims: int = 13, n_boot: int = 33) -> tuple[Path, Path]:
    ev, ef = tmp_path / "ev", tmp_path / "ef"
    ev.mkdir()
    ef.mkdir()
    (ev / "summary.json").write_text(json.dumps({"settings": {"seed": seed, "n_boot": n_boot}}))
    (ef / "effects.json").write_text(json.dumps({"settings": {"seed": seed, "power_sims": power_sims}}))
    return ev, ef


def test_recorded_values_are_reused_when_no_option_is_given(tmp_path):
    ev, ef = _folders(tmp_path)
    run, lines = resolve_run_settings(None, None, None, ev, None)
    assert run == {"seed": 7, "power_sims": DEFAULTS["power_sims"], "n_boot": 33}
    assert lines == ["seed 7: reused from the evaluation folder", "power_sims 50: default", "n_boot 33: reused from the evaluation folder"]
    run, _ = resolve_run_settings(None, None, None, None, ef)
    assert run["seed"] == 7 and run["power_sims"] == 13


def test_defaults_and_given_values_are_named(tmp_path):
    run, lines = resolve_run_settings(3, None, None, None, None)
    assert run == {"seed": 3, "power_sims": 50, "n_boot": 1000}
    assert lines[0] == "seed 3: given (--seed)" and lines[1] == "power_sims 50: default"


def test_an_option_contradicting_a_folder_is_refused(tmp_path):
    ev, ef = _folders(tmp_path)
    with pytest.raises(InputError, match=r"--power-sims 20 differs from the power_sims 13 recorded by `mseval effects`"):
        resolve_run_settings(None, 20, None, None, ef)
    assert resolve_run_settings(7, 13, None, ev, ef)[0]["seed"] == 7  # agreeing values are fine


def test_cli_refuses_a_contradicting_seed_with_exit_2(tmp_path, tiny_cohort, cli):
    _, ef = _folders(tmp_path)
    res = cli("report", tiny_cohort, tmp_path / "no-store", "--out", tmp_path / "rep", "--effects", ef, "--seed", "1")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "--seed 1 differs from the seed 7 recorded by `mseval effects`" in res.err
    assert not (tmp_path / "rep").exists()
