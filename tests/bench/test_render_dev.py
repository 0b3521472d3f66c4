"""bench/render_dev.py's bookkeeping: the observed volumes per visit, and lesion-wise detection of an ensemble map against
the observed masks beside another patient's map."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bench.render_dev import detection
from forecast.image_count_tuning import observed_visits
from mseval.io.cohort import read_cohort


def test_a_perfect_map_detects_every_lesion_and_another_patients_fewer(visits_cohort: Path) -> None:
    c = read_cohort(visits_cohort)
    ids = list(c.patient_ids)
    allocated = {p: str(c.row(p)["arm"]) for p in ids}
    obs = observed_visits(visits_cohort, ids)
    ren = {}
    for p in ids:
        rows = c.visit_rows(p).set_index("visit")
        path = rows.loc["w96", "net2_mask_cumulative"]
        shape = nib.load(visits_cohort / c.row(p)["brain_mask"]).shape
        truth = np.asarray(nib.load(visits_cohort / path).dataobj) > 0.5 if isinstance(path, str) and path else np.zeros(shape, bool)
        ren[(p, allocated[p], "w96")] = (None, None, None, truth.astype(float))  # the ensemble map: the observed mask itself
        if (p, "w96") in obs:  # the observed total volume is the sum of its lesions' volumes
            assert np.isclose(obs[(p, "w96")][1].sum(), obs[(p, "w96")][0]) and (obs[(p, "w96")][0] > 0) == truth.any()
    d = detection(visits_cohort, ren, ids, allocated, "w96")
    own, other = d["majority"]["own"], d["majority"]["other_patient"]
    assert own["tp_ref"] > 0 and own["fn"] == 0 and own["fp"] == 0 and own["recall"] == own["precision"] == 1.0
    assert other["recall"] < 1.0 and other["tp_ref"] + other["fn"] == own["tp_ref"]  # the same observed lesions, fewer found
