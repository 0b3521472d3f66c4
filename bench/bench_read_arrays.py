"""Reading patients for the image forecaster (`forecast.image_count_data.load_arrays`, N4 + WhiteStripe, 32^3): seconds
a patient in one process and in two (`workers=2`), and their ratio. Reading is the largest part of building the image
forecaster (`forecast/image_release.py`: 600 training patients). CPU wall times on the machine that runs the benchmark."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from forecast.image_count_data import load_arrays
from mseval.io.cohort import read_cohort
from mseval.simulate.model import TrialConfig
from mseval.simulate.trial import simulate_trial


def run(per_arm: int = 8) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="mseval-bench-"))
    try:
        simulate_trial(tmp / "c", TrialConfig(patients_per_arm=per_arm, shape=(32, 32, 32), seed=1))
        c = read_cohort(tmp / "c")
        arms, ids = list(c.arms["arm"]), c.patient_ids
        serial = ids[: len(ids) // 3]
        t = time.perf_counter()
        load_arrays(c, serial, arms, normalization="n4_whitestripe", workers=1)
        one = (time.perf_counter() - t) / len(serial)
        t = time.perf_counter()
        load_arrays(c, ids, arms, normalization="n4_whitestripe", workers=2)
        two = (time.perf_counter() - t) / len(ids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"read_n4_1_worker_s_per_patient": one, "read_n4_2_workers_s_per_patient": two, "speedup_2_workers_x": one / two}


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k:42s} {v:10.2f}")
