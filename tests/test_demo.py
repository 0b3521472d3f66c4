"""`mseval demo` end to end on a tiny trial: every stage runs and the report is where it says."""

from __future__ import annotations

import json

import pytest

from mseval.errors import InputError
from reports.demo import run_demo


def test_small_demo_writes_a_report(tmp_path):
    said: list[str] = []
    from reports.builder import ReportSettings

    fast = ReportSettings(n_boot=20, power_sims=2, figure_dpi=40, html_dpi=40, figure_formats=("png",))
    info = run_demo(tmp_path / "demo", patients_per_arm=2, shape=(32, 38, 32), samples=2, seed=1, workers=1, report_settings=fast, say=said.append)
    html = info["report_html"]
    assert html.is_file() and html.read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "demo" / "cohort" / "manifest.csv").is_file() and (tmp_path / "demo" / "forecasts" / "store.json").is_file()
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert demo["forecaster"] == "oracle" and demo["timings_s"]["total_s"] > 0
    assert any("1/3" in m for m in said) and any("3/3" in m for m in said)


def test_diffusion_forecaster_is_a_clear_error_until_connected(tmp_path):
    from reports.demo import _diffusion_forecasts

    with pytest.raises(InputError, match="not available yet"):
        _diffusion_forecasts(tmp_path / "cohort", tmp_path / "fc", 2, 0, 1.0)


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a demo"):
        run_demo(tmp_path, patients_per_arm=2, shape=(32, 38, 32), samples=2)
    assert (tmp_path / "precious.txt").exists()
