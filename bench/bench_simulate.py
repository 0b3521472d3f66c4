"""Simulator speed: a 120-patient six-arm trial at 32^3 (the acceptance: well under a minute on
2 cores), one patient at the full 182 x 218 x 182 grid, and the oracle forecaster at 32^3.
These are CPU wall times on the machine that runs the benchmark (one process)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial


def run() -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="mseval-bench-"))
    try:
        t = time.perf_counter()
        simulate_trial(tmp / "c32", TrialConfig(patients_per_arm=20, shape=(32, 32, 32), seed=1))
        sim32 = time.perf_counter() - t
        t = time.perf_counter()
        simulate_forecasts(tmp / "c32", tmp / "f32", ForecasterSpec("oracle", samples=10, seed=1))
        fc32 = time.perf_counter() - t
        t = time.perf_counter()
        simulate_trial(tmp / "full", TrialConfig(patients_per_arm=1, shape=(182, 218, 182), seed=1, arms=TrialConfig().arms[:1]))
        full = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "simulate_120_patients_32cube_s": sim32,
        "oracle_720_blocks_x10_samples_32cube_s": fc32,
        "simulate_1_patient_full_grid_s": full,
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:42s} {v:10.2f}")
