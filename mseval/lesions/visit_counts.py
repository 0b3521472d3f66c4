"""Per-visit lesion counts of a multi-visit cohort: the per-visit table of issue 23.

One row per patient and scheduled follow-up visit (sorted by patient_id, visit_index), with the
columns every multi-visit analysis reads (`mseval.stats.visits`, `mseval.stats.gee`):

    patient_id, visit, visit_index (1..V), start_weeks, end_weeks, net2, gd_count, missing

- net2: lesions (connected components after the size filter) of the visit's `net2_mask`, the
  new/enlarging T2 lesions against the previous scan that took place (`previous_visit`);
- gd_count: lesions of the visit's `gd_lesion_mask` (same connectivity and size filter);
- the interval (start_weeks, end_weeks] in weeks from baseline: end_weeks is the visit's actual
  week, start_weeks the week of the previous scan that took place (0 = baseline). After a missed
  visit the next observed visit's interval therefore spans two scheduled intervals;
- a visit that did not take place keeps its row with net2 and gd_count <NA> (never 0), its reason in
  `missing` ('dropout', 'missed', ...), end_weeks its scheduled week and start_weeks the week of the
  previous scan that took place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.cohort import Cohort
from mseval.io.nifti import load_volume
from mseval.lesions.components import count_lesions

VISIT_COLUMNS: tuple[str, ...] = ("patient_id", "visit", "visit_index", "start_weeks", "end_weeks", "net2", "gd_count", "missing")


def _count(cohort: Cohort, rel: object, field: str, connectivity: int, min_volume_mm3: float) -> int | None:
    if not isinstance(rel, str) or not rel:
        return None
    vol = load_volume(cohort.root / rel, mask=True, field=field)
    return count_lesions(vol.data, vol.affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3).count


def per_visit_counts(cohort: Cohort, *, connectivity: int = 26, min_volume_mm3: float = 3.0) -> pd.DataFrame:
    """The per-visit table (module docstring) of `cohort`, read from each visit's masks.

    InputError when the cohort has no visits.csv, or when a visit that took place has no net2_mask.
    Every mask is loaded and checked before anything is returned.
    """
    if cohort.visits is None:
        raise InputError(cohort.root / "visits.csv", "per-visit counts need visits.csv (this cohort has one follow-up only)")
    visits = cohort.visits.reset_index(drop=True)
    rows = []
    for pid in cohort.patient_ids:
        prev = 0.0
        mine = visits[visits["patient_id"] == pid].sort_values("visit_index")
        for idx, r in mine[mine["visit_index"] > 0].iterrows():
            reason = r["missing"] if isinstance(r["missing"], str) else ""
            rec = {"patient_id": pid, "visit": r["visit"], "visit_index": int(r["visit_index"]), "start_weeks": prev}
            if reason:
                rows.append({**rec, "end_weeks": float(r["scheduled_weeks"]), "net2": None, "gd_count": None, "missing": reason})
                continue
            net2 = _count(cohort, r.get("net2_mask"), "net2_mask", connectivity, min_volume_mm3)
            if net2 is None:
                raise InputError(cohort.root / "visits.csv", f"visit {r['visit']!r} of patient {pid!r} took place but names no net2_mask",
                                 row=int(idx) + 1, field="net2_mask")
            gd = _count(cohort, r.get("gd_lesion_mask"), "gd_lesion_mask", connectivity, min_volume_mm3)
            rows.append({**rec, "end_weeks": float(r["weeks"]), "net2": net2, "gd_count": gd, "missing": ""})
            prev = float(r["weeks"])
    out = pd.DataFrame(rows, columns=list(VISIT_COLUMNS))
    for col in ("net2", "gd_count"):
        out[col] = pd.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v) for v in out[col]], dtype="Int64")
    out["start_weeks"] = out["start_weeks"].astype(float)
    out["end_weeks"] = out["end_weeks"].astype(float)
    return out.sort_values(["patient_id", "visit_index"]).reset_index(drop=True)
