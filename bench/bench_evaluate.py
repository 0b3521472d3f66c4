"""Benchmark: the metrics of `mseval evaluate` on a paper-scale counts table (no images, no voxels).

2,131 patients x 6 arms x 20 samples = 255,720 rows, built from the simulator's truth model
(`draw_patients` / `truth_frame`): each sample ~ Poisson(expected count) (the oracle forecaster's
law), the observed count ~ Poisson(expected count) under the allocated arm. Timed: checking and
reshaping the table, activity, count error, P(active) and count calibration overall and per arm
(with the 1,000-replicate patient bootstrap of the ECE), and writing every table as
`mseval evaluate` does. Voxel reliability and detection need images and are not included.
Goal: evaluate + effects < 30 s on 2 cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_PATIENTS, SAMPLES = 2131, 20


def paper_scale_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(counts, observed, truth, arms) for 2,131 patients x 6 arms x 20 samples."""
    from mseval.simulate.model import TrialConfig, draw_patients, truth_frame

    rng = np.random.default_rng(seed)
    cfg = TrialConfig(patients_per_arm=-(-N_PATIENTS // 6), seed=seed)
    pats = draw_patients(cfg, rng).iloc[:N_PATIENTS]
    truth = truth_frame(pats, cfg)
    n = len(truth)
    counts = pd.DataFrame({
        "patient_id": np.repeat(truth["patient_id"].to_numpy(), SAMPLES),
        "arm": np.repeat(truth["arm"].to_numpy(), SAMPLES),
        "sample": np.tile(np.arange(SAMPLES, dtype=np.int64), n),
        "count": rng.poisson(np.repeat(truth["expected_count"].to_numpy(), SAMPLES)),
    })
    counts["volume_mm3"] = counts["count"] * 40.0
    al = truth[truth["allocated"]]
    observed = pd.DataFrame({"patient_id": al["patient_id"].to_numpy(), "arm": al["arm"].to_numpy(),
                             "observed_count": rng.poisson(al["expected_count"].to_numpy()), "observed_source": "simulated"})
    return counts.sample(frac=1.0, random_state=seed).reset_index(drop=True), observed, truth, [a.arm for a in cfg.arms]


def run() -> dict[str, float]:
    from mseval.evaluation import EvaluationSettings, compute_metrics
    from mseval.io.atomic import write_csv_atomic, write_parquet_atomic

    counts, observed, truth, arms = paper_scale_tables()
    assert len(counts) == 255_720
    settings = EvaluationSettings(voxel=False, detection=False)
    t0 = time.perf_counter()
    res = compute_metrics(counts, observed, arms, settings, truth=truth)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, df in res.tables().items():
            write_csv_atomic(df, Path(d) / f"{name}.csv")
        write_parquet_atomic(res.patients, Path(d) / "patients.parquet")
    t2 = time.perf_counter()
    return {"rows": float(len(counts)), "metrics_s": t1 - t0, "write_s": t2 - t1, "evaluate_total_s": t2 - t0}


if __name__ == "__main__":
    import os

    print(f"# bench_evaluate: {N_PATIENTS} patients x 6 arms x {SAMPLES} samples, {os.cpu_count()} cores")
    for k, v in run().items():
        print(f"{k:24s} {v:10.2f}")
