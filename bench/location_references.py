"""Issue 21's location references for a centre law scored on a DEV trial: per observed new-lesion centre, the log
score of the uniform-white-matter map and of the periventricular+proximity prior (`mseval.simulate.spatial`), beside a
model's, paired over lesions with patient-clustered SEs. Used by `bench/image_count_dev.py --location-references`.

The centres are those the model is trained and scored on (`forecast.image_count_data`: the 26-connected components
of the last observed cumulative NET2 mask, one centre voxel each). The acceptance's "per observed new lesion" is read
off the observed data: a centre outside the baseline T2 lesions' one-voxel margin is a new lesion; one inside it is the
new part of an enlarging lesion (about a quarter of the centres on DEV). The primary table is over the new lesions; the
table over every centre is reported beside it. The two reference maps are built as the world bench
builds them (`bench/world_realism.py`): from the simulator's tissue map (`tissues.nii.gz`, truth-only: white matter
= 3, ventricles = 5) and the patient's baseline T2 lesion mask. They put no mass inside a baseline lesion or its
one-voxel margin, where the centre of an *enlarging* lesion's new part can lie, so every map (the model's too) is
scored as the defensive mixture (1 - eps) map + eps uniform-over-the-brain, eps = `EPS` (it matters only for the
table over every centre); the share of centres outside each reference's support is reported beside the scores. The
simulator's own new-lesion centre intensity (`centre_intensity.nii.gz`, truth-only) is scored beside them as the
ceiling of a location law.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mseval.simulate.spatial import proximity_prior, uniform_white_matter

REFERENCES = ("uniform_wm", "proximity_prior", "true_intensity")
"""The maps every centre law is compared with: the two simple references and the simulator's own (the ceiling)."""

EPS = 0.01
"""Weight of the uniform-over-the-brain component mixed into every map before scoring."""


def lesion_margin(mask: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: the baseline lesions (mask > 0.5) and their one-voxel (26-neighbourhood) margin, where the new part
    of an enlarging lesion lies; its complement is where new lesions arise."""
    return ndimage.binary_dilation(np.asarray(mask) > 0.5, structure=np.ones((3, 3, 3), bool))


def reference_logs(root: Path, patient_id: str, centres: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """{"uniform_wm", "proximity_prior", "true_intensity"} -> (K,) log probability (nats) of each centre (K, 3) voxel under the
    eps-mixed reference map, "<name>_outside" (K,) bool: the centre lies outside that map's support, and "enlarging"
    (K,) bool: the centre lies inside the baseline T2 lesions' one-voxel margin (observed data only)."""
    folder = Path(root) / "images" / patient_id
    tissues = np.asarray(nib.load(folder / "tissues.nii.gz").dataobj)
    spacing = tuple(float(s) for s in nib.load(folder / "tissues.nii.gz").header.get_zooms()[:3])
    wm, vent = tissues == 3, tissues == 5
    t2 = np.asarray(nib.load(folder / "t2_lesion_mask.nii.gz").dataobj) > 0
    margin = lesion_margin(t2)
    vdist = ndimage.distance_transform_edt(~vent, sampling=spacing)
    true = np.asarray(nib.load(folder / "centre_intensity.nii.gz").dataobj, dtype=np.float64)
    maps = {"uniform_wm": uniform_white_matter(wm & ~margin),
            "proximity_prior": proximity_prior(wm, vdist, t2, spacing),
            "true_intensity": true / max(float(true.sum()), 1e-300)}
    idx = tuple(np.asarray(centres, dtype=np.int64).T)
    n_brain = float(brain.sum())
    out: dict[str, np.ndarray] = {"enlarging": margin[idx]}
    for name, m in maps.items():
        p = m[idx]
        out[name] = np.log((1.0 - EPS) * p + EPS * brain[idx] / n_brain)
        out[f"{name}_outside"] = p <= 0
    return out


def mixed_model_log(log_p: np.ndarray, n_brain: float) -> np.ndarray:
    """(K,) the model's log probabilities at the centres (a law over the brain) -> the same eps mixture."""
    return np.log((1.0 - EPS) * np.exp(np.asarray(log_p, dtype=np.float64)) + EPS / n_brain)


def clustered_mean(d: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean of the per-lesion values d (K,) and its SE with the lesions of a patient as one cluster (the
    linearised ratio estimator sum_i D_i / sum_i n_i, SE from the patients' residual totals D_i - mean n_i)."""
    d, groups = np.asarray(d, dtype=np.float64), np.asarray(groups)
    mean = float(d.mean())
    _, inv = np.unique(groups, return_inverse=True)
    resid = np.bincount(inv, weights=d - mean)
    g = len(resid)
    return mean, float(np.sqrt(g / (g - 1) * np.sum(resid ** 2)) / len(d)) if g > 1 else float("nan")


def location_table(model_logs: dict[str, np.ndarray], ref_logs: dict[str, np.ndarray], groups: Sequence,
                   conditional: dict[str, np.ndarray] | None = None) -> dict:
    """Per-lesion log scores of each model (eps-mixed) and reference -> {"new": table over the new lesions' centres,
    "all": table over every centre}; each table: mean log score per lesion of each map, and each model minus each
    reference (mean, clustered SE) over the same lesions. `conditional`: each model's log score of a new lesion's
    centre under its law restricted to where new lesions arise (outside the baseline lesions' margin) and renormalised,
    the law the references are (they put no mass in the margin); it is what the "new" table scores when given, while
    the unconditional law's score is kept beside it as "<model>_unconditional"."""
    keep = ~np.asarray(ref_logs["enlarging"], dtype=bool)
    new_logs = {k: np.asarray(v)[keep] for k, v in (conditional or model_logs).items()}
    if conditional:
        new_logs |= {f"{k}_unconditional": np.asarray(v)[keep] for k, v in model_logs.items()}
    subr = {k: np.asarray(v)[keep] for k, v in ref_logs.items()}
    return {"new": _table(new_logs, subr, np.asarray(groups)[keep]), "all": _table(model_logs, ref_logs, np.asarray(groups))}


def _table(model_logs: dict[str, np.ndarray], ref_logs: dict[str, np.ndarray], groups: np.ndarray) -> dict:
    out: dict = {"lesions": int(len(groups)), "patients": int(len(set(groups))), "eps": EPS,
                 "logscore_per_lesion": {k: float(np.mean(v)) for k, v in {**model_logs, **{r: ref_logs[r] for r in REFERENCES}}.items()},
                 "outside_support_share": {r: float(np.mean(ref_logs[f"{r}_outside"])) for r in REFERENCES}}
    for m, lm in model_logs.items():
        for r in REFERENCES:
            out[f"{m}_minus_{r}"] = clustered_mean(lm - ref_logs[r], np.asarray(groups))
    out["proximity_prior_minus_uniform_wm"] = clustered_mean(ref_logs["proximity_prior"] - ref_logs["uniform_wm"], np.asarray(groups))
    out["true_intensity_minus_uniform_wm"] = clustered_mean(ref_logs["true_intensity"] - ref_logs["uniform_wm"], np.asarray(groups))
    return out


__all__ = ["EPS", "REFERENCES", "clustered_mean", "lesion_margin", "location_table", "mixed_model_log", "reference_logs"]
