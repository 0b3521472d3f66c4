"""`mseval simulate`: write a synthetic RRMS trial cohort with its ground truth.

Cohort folder (the layout is documented in docs/cohort_format.md)::

    manifest.csv, arms.csv          one row per patient / arm, as a real trial export would give it;
                                    the manifest's follow-up is the last observed visit
    visits.csv                      one row per patient and visit (baseline included): weeks, image
                                    and mask paths, `missing` reason for absent visits
    truth.csv                       every patient x every arm over the manifest's follow-up
    truth_visits.csv                every patient x arm x scheduled visit: interval and cumulative truth
    truth_lesions.csv               every simulated lesion: kind, birth week, first visit seen, black hole
    oracle_inputs.csv               what an ideal reader reads off the baseline (DAWM share, visible
                                    pre-lesional sites): the observable oracle's inputs
    simulation.json                 the TrialConfig, the model, and where the truth files are
    images/<patient>/*.nii.gz       baseline t1, t2, flair, pd, t1gd (mtr when asked), brain_mask,
                                    t2_lesion_mask, gd_lesion_mask; truth: tissues, dawm_mask,
                                    centre_intensity (the true density of a new lesion's centre
                                    over the white matter that baseline lesions leave free)
    images/<patient>/ses-<visit>/   flair, t1, t1gd, t2_lesion_mask, gd_lesion_mask, net2_mask (vs the
                                    previous observed scan), net2_mask_cumulative (vs baseline)
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.errors import SimulationError
from mseval.io.atomic import atomic_dir, write_csv_atomic, write_json_atomic
from mseval.io.nifti import save_volume
from mseval.parallel import run_jobs
from mseval.seeding import rng_for
from mseval.simulate.anatomy import Anatomy, default_spacing, make_anatomy
from mseval.simulate.arms import arms_frame
from mseval.simulate.events import Events, draw_events
from mseval.simulate.lesions import LesionField, grow_one, periventricular_weights
from mseval.simulate.model import (WEEKS_PER_YEAR, TrialConfig, arm_rate_ratios, draw_patients, site_scanner, truth_frame,
                                   visit_truth_frame)
from mseval.simulate.mri import SEQUENCES, mtr_map, synthesize_mri
from mseval.simulate.spatial import centre_intensity, dawm_mask, patient_field, regional_load

MASKS = ("brain_mask", "t2_lesion_mask", "gd_lesion_mask", "t2_lesion_mask_followup", "net2_mask")
VISIT_IMAGES = ("flair", "t1", "t1gd")
VISIT_MASKS = ("t2_lesion_mask", "gd_lesion_mask", "net2_mask", "net2_mask_cumulative")
TISSUES_FILE = "images/{patient_id}/tissues.nii.gz"
BLACK_HOLE_DELAY_WEEKS = 26.0


@lru_cache(maxsize=8)
def anatomy_for(shape: tuple[int, int, int], spacing: tuple[float, float, float], ventricle_scale: float, seed: int) -> tuple[Anatomy, np.ndarray, np.ndarray]:
    """The anatomy, its periventricular lesion weights and ventricle distance (mm) (cached: patients
    share a few ventricle sizes)."""
    anat = make_anatomy(shape, spacing, ventricle_scale=ventricle_scale, seed=seed)
    vdist = anat.ventricle_distance_mm()
    return anat, periventricular_weights(vdist), vdist


@dataclass(frozen=True)
class PatientResult:
    patient_id: str
    t2_volume_mm3: float
    realized_count: int | None
    lesions: pd.DataFrame
    visits: pd.DataFrame
    realized_visits: dict[tuple[str, str], int]
    followup_weeks: float
    prelesional_sites: int
    without_room: dict[str, int]  # visit label -> NET2 events the patient's full white matter could not show
    confluent: dict[str, int]  # visit label -> new NET2 lesions without room, read as a baseline lesion enlarging


def _place_or_fail(lf: LesionField, rng: np.random.Generator, cfg: TrialConfig, pid: str, k: int, n: int) -> int:
    lid = lf.place_new(rng, median_radius_mm=cfg.baseline_radius_mm, min_voxels=cfg.min_voxels)
    if lid is None:
        raise SimulationError(
            None,
            f"patient {pid}: no room for baseline lesion {k + 1} of {n} at shape {cfg.shape} "
            "(lesions keep a one-voxel gap); use a larger --shape",
        )
    return lid


def new_lesion_radius_mm(cfg: TrialConfig, spec) -> float:  # noqa: ANN001
    """Median radius (mm) of a new lesion on arm `spec`: the arm's size multiplier scales its volume."""
    return float(cfg.new_radius_mm * spec.size_multiplier ** (1.0 / 3.0))


def observed_visits(row: dict, interval_counts: np.ndarray, cfg: TrialConfig, rng: np.random.Generator) -> list[str]:
    """Missing reason per scheduled visit ('' = observed, 'dropout', 'missed'). Dropout hazard per year:
    dropout_per_year (+ dropout_arm_difference on the reference arm) x exp(dropout_mnar log u) x
    exp(dropout_mar) after an observed interval with NET2 activity."""
    reasons, prev_w, active, gone = [], 0.0, False, False
    ref = cfg.reference_arm
    for k, n in enumerate(interval_counts):
        w = float(row[f"visit_{k + 1}_weeks"])
        if not gone and cfg.dropout_per_year > 0:
            h = cfg.dropout_per_year * (1.0 + (cfg.dropout_arm_difference if row["arm"] == ref else 0.0))
            h *= np.exp(cfg.dropout_mnar * np.log(max(float(row["latent_activity"]), 1e-12)) + (cfg.dropout_mar if active else 0.0))
            gone = rng.random() < -np.expm1(-h * (w - prev_w) / WEEKS_PER_YEAR)
        if gone:
            reasons.append("dropout")
        elif cfg.missed_visit > 0 and rng.random() < cfg.missed_visit:
            reasons.append("missed")
        else:
            reasons.append("")
            active = n > 0
        prev_w = w
    return reasons


def _paint_ghost(intensity: np.ndarray, free: np.ndarray, rng: np.random.Generator, radius_vox: float) -> np.ndarray:
    """A small ball at a centre drawn from `intensity` over free voxels: the footprint of a
    pre-lesional site whose lesion never appears on the allocated arm or comes after the trial."""
    w = np.where(free, intensity, 0.0).ravel()
    out = np.zeros(intensity.shape, dtype=bool)
    if w.sum() <= 0:
        return out
    c = np.array(np.unravel_index(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right")), intensity.shape))
    r = max(1.0, radius_vox)
    lo = np.maximum(c - int(np.ceil(r)), 0)
    hi = np.minimum(c + int(np.ceil(r)) + 1, intensity.shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = ((grid - c) ** 2).sum(-1) <= r * r
    return out & free


def small_lesions(labels: np.ndarray, max_voxels: float) -> np.ndarray:
    """bool (X, Y, Z): voxels of labelled lesions with fewer than `max_voxels` voxels."""
    sizes = np.bincount(labels.ravel().astype(np.int64))
    small = sizes < max_voxels
    small[0] = False
    return small[labels.astype(np.int64)]


def simulate_patient(row: dict, cfg: TrialConfig, spacing: tuple[float, float, float], folder: Path) -> PatientResult:
    """Draw one patient's lesions, visits and images, and write them under `folder`."""
    pid = row["patient_id"]
    rng = rng_for(cfg.seed, "patient", pid)
    anat, _, vdist = anatomy_for(tuple(cfg.shape), spacing, float(row["ventricle_scale"]), cfg.seed)
    wm = anat.wm_mask
    field = patient_field(wm, spacing, cfg.spatial_smooth_mm, rng)
    dawm = dawm_mask(field, wm, vdist, float(row["dawm_fraction"]))
    intensity = centre_intensity(wm, vdist, field, dawm, spatial_strength=cfg.spatial_strength, dawm_preference=cfg.dawm_preference)
    lf = LesionField(allowed=wm.astype(bool), weights=intensity, spacing=spacing)
    n_base = int(row["n_baseline_lesions"])
    base_ids = [_place_or_fail(lf, rng, cfg, pid, k, n_base) for k in range(n_base)]
    gd_ids = set(base_ids[: int(row["gd_count"])])
    black = {lid for lid in base_ids if lid not in gd_ids and rng.random() < cfg.p_black_hole}
    baseline_labels = lf.labels.copy()
    if cfg.load_preference > 0:  # new lesions favour the regions of the patient's baseline lesions
        intensity = intensity * (1.0 + cfg.load_preference * regional_load(baseline_labels, spacing, cfg.load_smooth_mm, lf.free))
        lf.reweight(intensity)
    # The law of a new lesion's centre given the baseline: the intensity over the white matter that no
    # baseline lesion (or its one-voxel margin) takes, the space `place_new` draws from.
    free_intensity = np.where(lf.free, intensity, 0.0)
    free_intensity /= max(float(free_intensity.sum()), 1e-300)
    base_voxels = {lid: lf.voxels(lid) for lid in base_ids}
    sched = [float(row[f"visit_{k + 1}_weeks"]) for k in range(len(cfg.schedule))]
    events: Events = draw_events(float(row["placebo_rate"]), sched[-1], cfg, rng)
    spec = next(a for a in cfg.arms if a.arm == row["arm"])
    rho = float(arm_rate_ratios(pd.DataFrame([row]), cfg)[spec.arm][0])
    appears = events.under(rho)
    radius = new_lesion_radius_mm(cfg, spec)
    gd_weeks = cfg.gd_per_rate * WEEKS_PER_YEAR
    unused = [int(i) for i in rng.permutation(np.asarray(base_ids, dtype=np.int64))]
    snapshots, added, info = [], [], {}
    footprint: dict[int, int] = {}  # event index -> lesion id
    without_room: dict[str, int] = {}  # visit -> NET2 events the full white matter could not show
    confluent: dict[str, int] = {}  # visit -> new lesions without room, read as an uncounted baseline lesion enlarging
    full = False  # no new lesion fits and no unused baseline lesion can grow
    prev = 0.0
    for k, wk in enumerate(sched):
        new_ids = []
        for e in np.flatnonzero(appears & (events.birth > prev) & (events.birth <= wk)):
            lid = None
            if events.enlarging[e]:
                lid, kind = grow_one(lf, unused, rng), "enlarging"
            if lid is None and not full:
                lid, kind = lf.place_new(rng, median_radius_mm=radius, min_voxels=cfg.min_voxels), "new"
            # No room for a separate new lesion (a very active patient on a coarse grid): it forms confluent with an
            # uncounted baseline lesion, which radiologists read as that lesion enlarging (tallied in `confluent`); when
            # none can grow either, the white matter is full and the masks cannot show this event or any later one
            # (tallied in `without_room`; free space only shrinks, so no new lesion is tried again). Never raised.
            if lid is None and not full:
                lid, kind = grow_one(lf, unused, rng), "enlarging"
                if lid is not None:
                    confluent[cfg.visit_labels[k]] = confluent.get(cfg.visit_labels[k], 0) + 1
                full = lid is None
            if lid is None:
                without_room[cfg.visit_labels[k]] = without_room.get(cfg.visit_labels[k], 0) + 1
                continue
            footprint[int(e)] = lid
            vol_rel = lf.voxels(lid) / max(1.0, np.median(list(base_voxels.values()) or [lf.voxels(lid)]))
            bh = kind == "new" and rng.random() < min(1.0, cfg.p_black_hole * spec.black_hole_multiplier * float(np.sqrt(vol_rel)))
            info[lid] = {"kind": kind, "birth_weeks": float(events.birth[e]), "visit": cfg.visit_labels[k], "black_hole": bh}
            new_ids.append(lid)
        snapshots.append(lf.labels.copy())
        added.append(new_ids)
        prev = wk
    # pre-lesional sites visible at baseline: the future lesion's footprint, or a ghost where it never appears
    pre = np.zeros(wm.shape, dtype=bool)
    ghost_r = cfg.new_radius_mm / min(spacing)
    free_now = lf.free.copy()
    for e in np.flatnonzero(events.visible):
        if int(e) in footprint and info[footprint[int(e)]]["kind"] == "new":
            pre |= lf.labels == footprint[int(e)]
        else:
            g = _paint_ghost(intensity, free_now, rng, ghost_r)
            pre |= g
            free_now &= ~g
    n_visible = int(events.visible.sum())
    counts = np.array([len(a) for a in added], dtype=np.int64)
    reasons = observed_visits(row, counts, cfg, rng)
    # images
    scanner = site_scanner(cfg, row["site"])
    gain, offset = scanner.gain, scanner.offset
    faint = cfg.small_lesion_contrast_1p5t if scanner.field_strength_t < 3.0 else 1.0
    voxel_mm3 = float(np.prod(spacing))

    def faint_mask(labels: np.ndarray) -> np.ndarray | None:  # small lesions, fainter at 1.5 T
        return small_lesions(labels, cfg.small_lesion_mm3 / voxel_mm3) if faint < 1.0 else None

    folder.mkdir(parents=True, exist_ok=True)
    t2 = (baseline_labels > 0).astype(np.uint8)
    gd = np.isin(baseline_labels, list(gd_ids)).astype(np.uint8)
    bh0 = np.isin(baseline_labels, list(black))
    images = synthesize_mri(anat, t2, gd, rng, dawm_mask=dawm, black_hole_mask=bh0, prelesion_mask=pre,
                            prelesion_contrast=cfg.prelesion_contrast, dawm_contrast=cfg.dawm_contrast, gain=gain, offset=offset,
                            faint_mask=faint_mask(baseline_labels), faint_contrast=faint)
    if cfg.mtr:
        images["mtr"] = mtr_map(anat, t2, pre if cfg.prelesion_fraction > 0 else None, rng)
    for name, img in images.items():
        save_volume(img.astype(np.float32), anat.affine, folder / f"{name}.nii.gz")
    base_masks = {"brain_mask": anat.brain_mask.astype(np.uint8), "t2_lesion_mask": t2, "gd_lesion_mask": gd,
                  "tissues": anat.labels.astype(np.uint8), "dawm_mask": dawm.astype(np.uint8)}
    for name, m in base_masks.items():
        save_volume(m, anat.affine, folder / f"{name}.nii.gz")
    save_volume(free_intensity.astype(np.float32), anat.affine, folder / "centre_intensity.nii.gz")
    visit_rows = [{"patient_id": pid, "visit": "baseline", "visit_index": 0, "scheduled_weeks": 0.0, "weeks": 0.0, "missing": "",
                   "previous_visit": "", **{n: f"images/{pid}/{n}.nii.gz" for n in (*SEQUENCES, "t2_lesion_mask", "gd_lesion_mask")},
                   **({"mtr": f"images/{pid}/mtr.nii.gz"} if cfg.mtr else {}),
                   "net2_mask": "", "net2_mask_cumulative": ""}]
    realized: dict[tuple[str, str], int] = {}
    last_obs, last_labels, last_label = None, baseline_labels, "baseline"
    cumulative_ids: list[int] = []
    for k, (label, wk) in enumerate(zip(cfg.visit_labels, sched)):
        cumulative_ids += added[k]
        base = {"patient_id": pid, "visit": label, "visit_index": k + 1, "scheduled_weeks": cfg.schedule[k]}
        if reasons[k]:
            visit_rows.append({**base, "weeks": np.nan, "missing": reasons[k], "previous_visit": ""})
            continue
        realized[(pid, label)] = int(counts[k])
        labels = snapshots[k]
        sub = folder / f"ses-{label}"
        sub.mkdir(exist_ok=True)
        since_prev = [lid for lid in np.unique(labels[labels > 0]) if lid in info and (last_obs or 0.0) < info[lid]["birth_weeks"] <= wk]
        recent = [lid for lid in since_prev if info[lid]["birth_weeks"] > wk - gd_weeks]
        holes = [lid for lid in np.unique(labels[labels > 0])
                 if (lid in black and lid not in info) or (lid in info and info[lid]["black_hole"] and info[lid]["birth_weeks"] <= wk - BLACK_HOLE_DELAY_WEEKS)]
        t2k = (labels > 0).astype(np.uint8)
        gdk = np.isin(labels, recent).astype(np.uint8)
        vis = synthesize_mri(anat, t2k, gdk, rng, sequences=VISIT_IMAGES, dawm_mask=dawm, black_hole_mask=np.isin(labels, holes),
                             dawm_contrast=cfg.dawm_contrast, gain=gain, offset=offset, faint_mask=faint_mask(labels), faint_contrast=faint)
        masks = {"t2_lesion_mask": t2k, "gd_lesion_mask": gdk, "net2_mask": np.isin(labels, since_prev).astype(np.uint8),
                 "net2_mask_cumulative": np.isin(labels, cumulative_ids).astype(np.uint8)}
        for name, img in vis.items():
            save_volume(img.astype(np.float32), anat.affine, sub / f"{name}.nii.gz")
        for name, m in masks.items():
            save_volume(m, anat.affine, sub / f"{name}.nii.gz")
        visit_rows.append({**base, "weeks": wk, "missing": "", "previous_visit": last_label,
                           **{n: f"images/{pid}/ses-{label}/{n}.nii.gz" for n in (*VISIT_IMAGES, *VISIT_MASKS)}})
        last_obs, last_labels, last_label = wk, labels, label
    rows = []
    first_seen = {lid: d["visit"] for lid, d in info.items()}
    for lid in sorted(lf.boxes):
        c = lf.centroid(lid)
        d = info.get(lid, {})
        rows.append({
            "patient_id": pid, "lesion_id": lid, "kind": d.get("kind", "baseline"), "gd": lid in gd_ids,
            "birth_weeks": round(d["birth_weeks"], 4) if d else None, "visit": first_seen.get(lid, "baseline"),
            "black_hole": bool(d.get("black_hole", lid in black)),
            "baseline_voxels": base_voxels.get(lid, 0), "followup_voxels": lf.voxels(lid),
            "followup_volume_mm3": lf.voxels(lid) * voxel_mm3,
            "centroid_x": round(float(c[0]), 4), "centroid_y": round(float(c[1]), 4), "centroid_z": round(float(c[2]), 4),
            **dict(zip(("seed_x", "seed_y", "seed_z"), lf.seeds.get(lid, (None, None, None)))),
        })
    total = None if last_obs is None else int(sum(counts[k] for k in range(len(sched)) if sched[k] <= last_obs))
    followup = last_obs if last_obs is not None else sched[0]
    return PatientResult(pid, float(t2.sum()) * voxel_mm3, total, pd.DataFrame(rows), pd.DataFrame(visit_rows), realized, followup, n_visible,
                         without_room, confluent)


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
    with atomic_dir(out, overwrite=overwrite) as tmp:
        jobs = [(row, cfg, spacing, tmp / "images" / row["patient_id"]) for row in patients.to_dict("records")]
        results: list[PatientResult] = run_jobs(_run, jobs, workers, progress)
        by_id = {r.patient_id: r for r in results}
        patients["followup_weeks"] = [by_id[p].followup_weeks for p in patients["patient_id"]]
        manifest = patients[["patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss"]].copy()
        manifest["t2_volume_mm3"] = [round(by_id[p].t2_volume_mm3, 3) for p in manifest["patient_id"]]
        manifest["gd_count"] = patients["gd_count"].to_numpy()
        visits = pd.concat([by_id[p].visits for p in manifest["patient_id"]], ignore_index=True)
        for name in ("t1", "t2", "flair", "pd", "t1gd", "brain_mask", "t2_lesion_mask", "gd_lesion_mask"):
            manifest[name] = [f"images/{p}/{name}.nii.gz" for p in manifest["patient_id"]]
        last = visits[(visits["visit_index"] > 0) & (visits["missing"] == "")].groupby("patient_id").last()
        manifest["t2_lesion_mask_followup"] = [last.loc[p, "t2_lesion_mask"] if p in last.index else None for p in manifest["patient_id"]]
        manifest["net2_mask"] = [last.loc[p, "net2_mask_cumulative"] if p in last.index else None for p in manifest["patient_id"]]
        write_csv_atomic(manifest, tmp / "manifest.csv")
        write_csv_atomic(visits, tmp / "visits.csv")
        write_csv_atomic(arms_frame(cfg.arms), tmp / "arms.csv")
        truth = truth_frame(patients, cfg, realized={r.patient_id: r.realized_count for r in results if r.realized_count is not None})
        write_csv_atomic(truth, tmp / "truth.csv")
        realized = {k: v for r in results for k, v in r.realized_visits.items()}
        write_csv_atomic(visit_truth_frame(patients, cfg, realized), tmp / "truth_visits.csv")
        write_csv_atomic(pd.concat([by_id[p].lesions for p in manifest["patient_id"]], ignore_index=True), tmp / "truth_lesions.csv")
        write_csv_atomic(pd.DataFrame({"patient_id": patients["patient_id"], "gd_count": patients["gd_count"],
                                       "t2_count": patients["n_baseline_lesions"], "dawm_fraction": patients["dawm_fraction"].round(8),
                                       "prelesional_sites": [by_id[p].prelesional_sites for p in patients["patient_id"]]}),
                         tmp / "oracle_inputs.csv")
        write_json_atomic(
            {
                "generator": f"mseval {__version__}",
                "config": cfg.to_dict(),
                "spacing_mm": list(spacing),
                "sites": {site: dataclasses.asdict(site_scanner(cfg, site)) for site in sorted(patients["site"].unique())},
                "weeks_per_year": WEEKS_PER_YEAR,
                "net2_confluent": {r.patient_id: r.confluent for r in results if r.confluent},
                "net2_without_room": {r.patient_id: r.without_room for r in results if r.without_room},
                "truth_files": {"truth": "truth.csv", "visits": "truth_visits.csv", "lesions": "truth_lesions.csv",
                                "oracle_inputs": "oracle_inputs.csv", "tissues": TISSUES_FILE,
                                "centre_intensity": "images/{patient_id}/centre_intensity.nii.gz",
                                "dawm": "images/{patient_id}/dawm_mask.nii.gz"},
                "latent": {
                    p: {"latent_activity": float(u), "placebo_rate": float(r), "ventricle_scale": float(v)}
                    for p, u, r, v in zip(patients["patient_id"], patients["latent_activity"], patients["placebo_rate"], patients["ventricle_scale"])
                },
            },
            tmp / "simulation.json",
        )
    return out
