"""Issue 21's size and volume checks of rendered trajectories on a DEV trial: an image count checkpoint draws trajectories
(`forecast.image_count_pipeline.forecast_trajectories`), a centre-conditioned diffusion decoder renders them
(`forecast.image_count_render.render_trajectories`), and the masks are compared with the observed cumulative NET2 masks
of the same patients, lesion by lesion and patient by patient, under the scoring rule of every count (26-connected
components of at least 3 mm^3, `mseval.lesions.components.count_lesions`). Observed outcomes only; truth.csv is not read.

Reported:
- per-lesion volume (mm^3) of the rendered lesions at the last visit against the observed NET2 lesions of the same
  patients (allocated arm): means with patient-clustered SEs, quartiles, their ratio;
- mean new-lesion volume per arm: rendered under every arm for the first `--arm-patients` patients, against the
  observed mean of each allocated arm (the world's truth per arm is read off its observed lesions: a DEV trial's
  observed lesions are the truth's draws);
- volume PIT: per patient and visit, the randomized PIT of the observed cumulative NET2 volume within the patient's
  members' rendered volumes (allocated arm), and its uniformity tests (`mseval.metrics.calibration.pit_uniformity`);
- the same for the rendered count (components), beside the drawn count's: how much rendering changes the count.

    PYTHONPATH=. .venv/bin/python bench/render_dev.py --dev DEV --checkpoint IC --renderer forecast/checkpoints/tiny_centre \
        --work DIR --samples 8 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def observed_visits(cohort_dir: Path, ids: list[str]) -> dict[tuple[str, str], tuple[float, np.ndarray]]:
    """(patient, visit) -> (observed cumulative NET2 volume mm^3, per-lesion volumes (K,) mm^3) for every observed
    follow-up visit of the given patients (visits.csv's net2_mask_cumulative; missing scans skipped)."""
    import nibabel as nib

    from mseval.lesions.components import count_lesions

    v = pd.read_csv(cohort_dir / "visits.csv", dtype={"patient_id": str, "visit": str})
    v = v[v["patient_id"].isin(ids) & v["net2_mask_cumulative"].notna()]
    out = {}
    for r in v.itertuples(index=False):
        img = nib.load(cohort_dir / r.net2_mask_cumulative)
        c = count_lesions(np.asarray(img.dataobj) > 0.5, img.affine)
        out[(r.patient_id, r.visit)] = (c.volume_mm3, c.lesions["voxels"].to_numpy() * (c.volume_mm3 / max(c.lesions["voxels"].sum(), 1)))
    return out


def rendered_visits(render_dir: Path, visits: list[str]) -> dict[tuple[str, str, str], tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
    """(patient, arm, visit) -> (rendered volume per member (S,) mm^3, per-lesion volumes per member, count per member (S,))."""
    from mseval.io.store import ForecastStore
    from mseval.lesions.components import count_lesions

    out = {}
    for visit in visits:
        store = ForecastStore.open(render_dir / visit)
        for pid, arm in store.keys():
            masks, affine = store.block(pid, arm).masks()
            cs = [count_lesions(m.astype(bool), affine) for m in masks]
            vox = [c.lesions["voxels"].to_numpy() * (c.volume_mm3 / max(c.lesions["voxels"].sum(), 1)) for c in cs]
            out[(pid, arm, visit)] = (np.array([c.volume_mm3 for c in cs]), vox, np.array([c.count for c in cs]))
    return out


def _subset(src: Path, dst: Path, keep) -> None:  # noqa: ANN001 - a row predicate
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("counts.csv", "lesions.csv"):
        t = pd.read_csv(src / name, dtype={"patient_id": str, "arm": str})
        t[keep(t)].to_csv(dst / name, index=False)


def main() -> None:
    from bench.location_references import clustered_mean
    from forecast.image_count_pipeline import forecast_trajectories
    from forecast.image_count_render import render_trajectories
    from mseval.io.cohort import read_cohort
    from mseval.metrics.calibration import pit_uniformity, randomized_pit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--renderer", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--arm-patients", type=int, default=60)
    ap.add_argument("--arm-samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    t0 = time.time()
    cohort = read_cohort(a.dev)
    ids = list(cohort.patient_ids)
    allocated = {p: str(cohort.row(p)["arm"]) for p in ids}
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "all" / "lesions.csv").is_file():
        counts, lesions = forecast_trajectories(a.dev, a.checkpoint, samples=a.samples, seed=a.seed)
        (a.work / "all").mkdir(exist_ok=True)
        counts.to_csv(a.work / "all" / "counts.csv", index=False)
        lesions.to_csv(a.work / "all" / "lesions.csv", index=False)
    print(f"trajectories in {time.time() - t0:.0f}s", flush=True)
    _subset(a.work / "all", a.work / "allocated", lambda t: t["arm"] == t["patient_id"].map(allocated))
    arm_ids = set(ids[: a.arm_patients])
    _subset(a.work / "all", a.work / "arms", lambda t: t["patient_id"].isin(arm_ids) & (t["arm"] != t["patient_id"].map(allocated))
            & (t["member"] < a.arm_samples))
    render_trajectories(a.dev, a.work / "allocated", a.renderer, a.work / "render_allocated")
    print(f"allocated arm rendered in {time.time() - t0:.0f}s", flush=True)
    render_trajectories(a.dev, a.work / "arms", a.renderer, a.work / "render_arms")
    print(f"other arms rendered in {time.time() - t0:.0f}s", flush=True)

    counts = pd.read_csv(a.work / "allocated" / "counts.csv", dtype={"patient_id": str, "arm": str, "visit": str})
    visits = list(dict.fromkeys(counts["visit"]))
    obs = observed_visits(a.dev, ids)
    ren = rendered_visits(a.work / "render_allocated", visits) | rendered_visits(a.work / "render_arms", visits)
    last = visits[-1]
    # per-lesion volumes at the last visit, allocated arm, on the patients observed there
    f_vol, f_grp, o_vol, o_grp = [], [], [], []
    for p in ids:
        if (p, last) not in obs:
            continue
        o = obs[(p, last)][1]
        o_vol += list(o)
        o_grp += [p] * len(o)
        for lv in ren[(p, allocated[p], last)][1]:
            f_vol += list(lv)
            f_grp += [p] * len(lv)
    fm, fse = clustered_mean(np.array(f_vol), np.array(f_grp))
    om, ose = clustered_mean(np.array(o_vol), np.array(o_grp))
    lesion = {"rendered": {"n": len(f_vol), "mean": fm, "se": fse, "quartiles": np.percentile(f_vol, [25, 50, 75]).tolist()},
              "observed": {"n": len(o_vol), "mean": om, "se": ose, "quartiles": np.percentile(o_vol, [25, 50, 75]).tolist()},
              "ratio": fm / om}
    # per arm: rendered under each arm (first arm_patients patients, members < arm_samples) vs observed per allocated arm
    arms = list(cohort.arms["arm"])
    per_arm = {}
    for arm in arms:
        fv = [v for p in arm_ids if (p, arm, last) in ren for lv in ren[(p, arm, last)][1][: a.arm_samples] for v in lv]
        ov = [v for p in ids if allocated[p] == arm and (p, last) in obs for v in obs[(p, last)][1]]
        per_arm[arm] = {"rendered_mean": float(np.mean(fv)) if fv else None, "rendered_n": len(fv),
                        "observed_mean": float(np.mean(ov)) if ov else None, "observed_n": len(ov),
                        "ratio": float(np.mean(fv) / np.mean(ov)) if fv and ov else None}
    # PIT of the cumulative volume and count per visit, allocated arm
    pit = {}
    drawn = counts.set_index(["patient_id", "visit", "member"])["net2"]
    for k, visit in enumerate(visits):
        keys = [p for p in ids if (p, visit) in obs]
        ens_v = np.stack([ren[(p, allocated[p], visit)][0] for p in keys])
        ens_c = np.stack([ren[(p, allocated[p], visit)][2] for p in keys])
        ens_d = np.stack([[drawn[(p, visit, m)] for m in range(a.samples)] for p in keys])
        y_v = np.array([obs[(p, visit)][0] for p in keys])
        y_c = np.array([len(obs[(p, visit)][1]) for p in keys])
        row = {"patients": len(keys)}
        for name, ens, y in (("volume", ens_v, y_v), ("rendered_count", ens_c, y_c), ("drawn_count", ens_d, y_c)):
            t = pit_uniformity(randomized_pit(ens, y, seed=a.seed + k))
            row[name] = {"chi2_p": t.chi2_p, "ks_p": t.ks_p, "mean": t.mean, "variance": t.variance, "tail_share": t.tail_share,
                         "forecast_mean": float(ens.mean()), "observed_mean": float(y.mean())}
        pit[visit] = row
    rl = pd.read_csv(a.work / "render_allocated" / "lesions.csv")
    result = {"dev": str(a.dev), "checkpoint": str(a.checkpoint), "renderer": str(a.renderer), "samples": a.samples,
              "lesion_volume_last_visit": lesion, "per_arm": per_arm, "pit": pit,
              "render": {"lesions": len(rl), "lost_share": float(rl["lost"].mean()), "merged_share": float((rl["merged_into"] >= 0).mean())},
              "seconds": time.time() - t0}
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
