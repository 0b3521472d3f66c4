"""What the baseline inputs show, per patient: the features a count forecaster may condition on.

One row per patient: patient_id, arm, age (years), followup_years, gd_count (lesions of the Gd+
mask), t2_count and t2_volume_mm3 (lesions of the baseline T2 mask and their volume), and, where the
follow-up NET2 mask is there, the observed outcome `net2` (its lesion count). Lesions are
connected components (26-connectivity, at least 3 mm^3 by default), the rule the forecasts are
counted with. Nothing here reads the simulator's truth (truth.csv, simulation.json, tissues).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mseval.io.cohort import Cohort
from mseval.io.nifti import load_volume
from mseval.lesions.components import count_lesions
from mseval.units import WEEKS_PER_YEAR

FEATURE_COLUMNS = ("patient_id", "arm", "age", "followup_years", "gd_count", "t2_count", "t2_volume_mm3")


def _count(cohort: Cohort, pid: str, field: str, connectivity: int, min_volume_mm3: float) -> tuple[int, float] | None:
    path = cohort.path(pid, field)
    if path is None:
        return None
    vol = load_volume(path, mask=True, field=field)
    c = count_lesions(vol.data, vol.affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
    return c.count, c.volume_mm3


def baseline_features(
    cohort: Cohort, patient_ids: Sequence[str] | None = None, *, connectivity: int = 26, min_volume_mm3: float = 3.0,
    outcome: bool = True,
) -> pd.DataFrame:
    """The feature table (FEATURE_COLUMNS, plus `net2` when every patient has a NET2 mask; with
    `outcome` False the NET2 masks are not read at all, as a forecaster at sampling time must not)."""
    ids = list(patient_ids) if patient_ids is not None else cohort.patient_ids
    rows = []
    for pid in ids:
        row = cohort.row(pid)
        gd = _count(cohort, pid, "gd_lesion_mask", connectivity, min_volume_mm3)
        t2 = _count(cohort, pid, "t2_lesion_mask", connectivity, min_volume_mm3)
        net2 = _count(cohort, pid, "net2_mask", connectivity, min_volume_mm3) if outcome else None
        rows.append({
            "patient_id": pid, "arm": str(row["arm"]), "age": float(row["age"]),
            "followup_years": float(row["followup_weeks"]) / WEEKS_PER_YEAR,
            "gd_count": gd[0] if gd else np.nan, "t2_count": t2[0] if t2 else np.nan, "t2_volume_mm3": t2[1] if t2 else np.nan,
            "net2": net2[0] if net2 else np.nan,
        })
    out = pd.DataFrame(rows)
    if out["net2"].isna().any():
        out = out.drop(columns="net2")
    return out
