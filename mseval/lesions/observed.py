"""Observed NET2 counts of a cohort: the lesions of each patient's follow-up `net2_mask`."""

from __future__ import annotations

import pandas as pd

from mseval.errors import InputError
from mseval.io.cohort import Cohort
from mseval.io.nifti import load_volume
from mseval.lesions.components import count_lesions
from mseval.units import WEEKS_PER_YEAR


MANIFEST_COVARIATES = ("patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss", "t2_volume_mm3", "gd_count")
"""The manifest columns an analysis table carries (with net2, net2_volume_mm3 and followup_years)."""


def analysis_table(cohort: Cohort, *, connectivity: int = 26, min_volume_mm3: float = 3.0, require_observed: bool = True) -> pd.DataFrame:
    """One row per patient: manifest covariates, `followup_years`, and `net2` = the number of
    lesions in the patient's observed NET2 mask (same connectivity and size filter as the
    forecasts are counted with) and `net2_volume_mm3`. Patients without a NET2 mask get no count;
    with `require_observed`, that is an InputError naming the row."""
    m = cohort.manifest
    rows = []
    for k, pid in enumerate(m["patient_id"]):
        path = cohort.path(pid, "net2_mask") if "net2_mask" in m.columns else None
        if path is None:
            if require_observed:
                raise InputError(cohort.root / "manifest.csv", f"patient {pid} has no net2_mask (observed follow-up is needed)", row=k + 1, field="net2_mask")
            rows.append({"patient_id": pid, "net2": pd.NA, "net2_volume_mm3": pd.NA})
            continue
        vol = load_volume(path, mask=True, field="net2_mask")
        res = count_lesions(vol.data, vol.affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
        rows.append({"patient_id": pid, "net2": res.count, "net2_volume_mm3": res.volume_mm3})
    obs = pd.DataFrame(rows)
    keep = list(MANIFEST_COVARIATES)
    out = m[keep].merge(obs, on="patient_id", how="left")
    out["followup_years"] = out["followup_weeks"] / WEEKS_PER_YEAR
    return out
