"""`mseval simulate`: write a synthetic RRMS trial cohort with its ground truth.

Cohort folder::

    manifest.csv, arms.csv          the cohort, as a real trial export would give it
    truth.csv                       every patient x every arm: true rate, expected count, P(active)
    truth_lesions.csv               every simulated lesion and its kind (baseline / new / enlarging)
    simulation.json                 the TrialConfig, the model, and where the truth files are
    images/<patient>/*.nii.gz       baseline t1, t2, flair, pd, t1gd, brain_mask, t2_lesion_mask,
                                    gd_lesion_mask; follow-up t2_lesion_mask_followup, net2_mask;
                                    tissues (truth: tissue labels, see `anatomy.TISSUE_LABELS`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.errors import SimulationError
from mseval.io.atomic import atomic_dir, write_csv_atomic, write_json_atomic
from mseval.io.nifti import save_volume
from mseval.seeding import rng_for
from mseval.simulate.anatomy import Anatomy, default_spacing, make_anatomy
from mseval.simulate.arms import arms_frame
from mseval.simulate.lesions import LesionField, add_net2_lesions, periventricular_weights
from mseval.simulate.model import WEEKS_PER_YEAR, TrialConfig, draw_patients, truth_frame
from mseval.simulate.mri import SEQUENCES, synthesize_mri
from mseval.parallel import process_pool

MASKS = ("brain_mask", "t2_lesion_mask", "gd_lesion_mask", "t2_lesion_mask_followup", "net2_mask")
TISSUES_FILE = "images/{patient_id}/tissues.nii.gz"


@lru_cache(maxsize=8)
def anatomy_for(shape: tuple[int, int, int], spacing: tuple[float, float, float], ventricle_scale: float, seed: int) -> tuple[Anatomy, np.ndarray]:
    """The anatomy and its periventricular lesion weights (cached: patients share a few ventricle sizes)."""
    anat = make_anatomy(shape, spacing, ventricle_scale=ventricle_scale, seed=seed)
    return anat, periventricular_weights(anat.ventricle_distance_mm())


@dataclass(frozen=True)
class PatientResult:
    patient_id: str
    t2_volume_mm3: float
    realized_count: int
    lesions: pd.DataFrame


def _place_or_fail(lf: LesionField, rng: np.random.Generator, cfg: TrialConfig, pid: str, k: int, n: int) -> int:
    lid = lf.place_new(rng, median_radius_mm=cfg.baseline_radius_mm, min_voxels=cfg.min_voxels)
    if lid is None:
        raise SimulationError(
            None,
            f"patient {pid}: no room for baseline lesion {k + 1} of {n} at shape {cfg.shape} "
            "(lesions keep a one-voxel gap); use a larger --shape",
        )
    return lid


def simulate_patient(row: dict, expected_count: float, cfg: TrialConfig, spacing: tuple[float, float, float], folder: Path) -> PatientResult:
    """Draw one patient's lesions, follow-up and images, and write them under `folder`."""
    pid = row["patient_id"]
    rng = rng_for(cfg.seed, "patient", pid)
    anat, weights = anatomy_for(tuple(cfg.shape), spacing, float(row["ventricle_scale"]), cfg.seed)
    lf = LesionField(allowed=anat.wm_mask.astype(bool), weights=weights, spacing=spacing)
    n_base = int(row["n_baseline_lesions"])
    base_ids = [_place_or_fail(lf, rng, cfg, pid, k, n_base) for k in range(n_base)]
    gd_ids = base_ids[: int(row["gd_count"])]
    baseline_labels = lf.labels.copy()
    base_voxels = {lid: lf.voxels(lid) for lid in base_ids}
    n_net2 = int(rng.poisson(expected_count))
    try:
        net2 = add_net2_lesions(
            lf, n_net2, rng, baseline_ids=base_ids, p_enlarging=cfg.p_enlarging,
            new_radius_mm=cfg.new_radius_mm, min_voxels=cfg.min_voxels,
        )
    except RuntimeError as exc:
        raise SimulationError(None, f"patient {pid}: {exc} at shape {cfg.shape} (lesions keep a one-voxel gap); use a larger --shape") from None
    kinds = {lid: kind for lid, kind in net2}
    t2 = (baseline_labels > 0).astype(np.uint8)
    gd = np.isin(baseline_labels, gd_ids).astype(np.uint8)
    masks = {
        "brain_mask": anat.brain_mask.astype(np.uint8),
        "t2_lesion_mask": t2,
        "gd_lesion_mask": gd,
        "t2_lesion_mask_followup": (lf.labels > 0).astype(np.uint8),
        "net2_mask": lf.mask([lid for lid, _ in net2]),
        "tissues": anat.labels.astype(np.uint8),
    }
    images = synthesize_mri(anat, t2, gd, rng)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SEQUENCES:
        save_volume(images[name].astype(np.float32), anat.affine, folder / f"{name}.nii.gz")
    for name, m in masks.items():
        save_volume(m, anat.affine, folder / f"{name}.nii.gz")
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for lid in sorted(lf.boxes):
        c = lf.centroid(lid)
        rows.append(
            {
                "patient_id": pid,
                "lesion_id": lid,
                "kind": kinds.get(lid, "baseline"),
                "gd": lid in gd_ids,
                "baseline_voxels": base_voxels.get(lid, 0),
                "followup_voxels": lf.voxels(lid),
                "followup_volume_mm3": lf.voxels(lid) * voxel_mm3,
                "centroid_x": round(float(c[0]), 4),
                "centroid_y": round(float(c[1]), 4),
                "centroid_z": round(float(c[2]), 4),
            }
        )
    return PatientResult(pid, float(t2.sum()) * voxel_mm3, n_net2, pd.DataFrame(rows))


def _run(args: tuple) -> PatientResult:
    return simulate_patient(*args)


def simulate_trial(
    out: str | Path,
    cfg: TrialConfig,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate the trial described by `cfg` into the folder `out` (written atomically).

    progress(done, total) is called after each patient. Results do not depend on `workers`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise SimulationError(out, "output folder already exists; remove it or pass --overwrite")
    spacing = tuple(float(s) for s in (cfg.spacing or default_spacing(tuple(cfg.shape))))
    if len(cfg.shape) != 3 or min(cfg.shape) < 16:
        raise SimulationError(None, f"shape {tuple(cfg.shape)}: each axis needs at least 16 voxels")
    patients = draw_patients(cfg, rng_for(cfg.seed, "patients"))
    truth0 = truth_frame(patients, cfg)
    alloc = truth0[truth0["allocated"]].set_index("patient_id")["expected_count"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        jobs = [
            (row, float(alloc[row["patient_id"]]), cfg, spacing, tmp / "images" / row["patient_id"])
            for row in patients.to_dict("records")
        ]
        results: list[PatientResult] = []
        if workers <= 1:
            for k, job in enumerate(jobs):
                results.append(_run(job))
                if progress:
                    progress(k + 1, len(jobs))
        else:
            with process_pool(workers) as pool:
                for k, res in enumerate(pool.map(_run, jobs, chunksize=1)):
                    results.append(res)
                    if progress:
                        progress(k + 1, len(jobs))
        by_id = {r.patient_id: r for r in results}
        manifest = patients[["patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss"]].copy()
        manifest["t2_volume_mm3"] = [round(by_id[p].t2_volume_mm3, 3) for p in manifest["patient_id"]]
        manifest["gd_count"] = patients["gd_count"].to_numpy()
        for name in ("t1", "t2", "flair", "pd", "t1gd", *MASKS):
            manifest[name] = [f"images/{p}/{name}.nii.gz" for p in manifest["patient_id"]]
        write_csv_atomic(manifest, tmp / "manifest.csv")
        write_csv_atomic(arms_frame(cfg.arms), tmp / "arms.csv")
        truth = truth_frame(patients, cfg, realized={r.patient_id: r.realized_count for r in results})
        write_csv_atomic(truth, tmp / "truth.csv")
        write_csv_atomic(pd.concat([by_id[p].lesions for p in manifest["patient_id"]], ignore_index=True), tmp / "truth_lesions.csv")
        write_json_atomic(
            {
                "generator": f"mseval {__version__}",
                "config": cfg.to_dict(),
                "spacing_mm": list(spacing),
                "weeks_per_year": WEEKS_PER_YEAR,
                "truth_files": {"truth": "truth.csv", "lesions": "truth_lesions.csv", "tissues": TISSUES_FILE},
                "latent": {
                    p: {"latent_activity": float(u), "placebo_rate": float(r), "ventricle_scale": float(v)}
                    for p, u, r, v in zip(patients["patient_id"], patients["latent_activity"], patients["placebo_rate"], patients["ventricle_scale"])
                },
            },
            tmp / "simulation.json",
        )
    return out
