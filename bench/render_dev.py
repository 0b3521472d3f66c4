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
- the same for the rendered count (components), beside the drawn count's: how much rendering changes the count;
- lesion-wise detection (`mseval.lesions.matching.match_lesions`, preset msseg2) at the last visit of the ensemble's
  probability map thresholded at 0.5 (a majority of members) and at 1/S (any member), against the observed NET2 mask,
  pooled over patients (TP/FP/FN summed), beside the same for *another* patient's ensemble of the same allocated arm
  (the next one in manifest order): a forecast with the same count and size law that knows nothing of where this
  patient's lesions arise; of any arm when the arm has one patient). The difference is what the place adds.

    PYTHONPATH=. .venv/bin/python bench/render_dev.py --dev DEV --checkpoint IC --renderer forecast/checkpoints/tiny_centre \
        --work DIR --samples 8 [--cache ARRAYS.pkl] --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd


def rendered_visits(render_dir: Path, visits: list[str], threshold: float) -> dict[tuple[str, str, str], tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
    """(patient, arm, visit) -> (rendered volume per member (S,) mm^3, per-lesion volumes per member, count per member (S,),
    the ensemble's probability map (X, Y, Z): the share of members with the voxel in their mask) with the members' rendered
    probabilities (kept by `--prob`) thresholded at `threshold` and split by birth as `image-render` does
    (`forecast.image_count_tuning.rendered_members`); "lost_share": the drawn centres with nothing rendered at them."""
    from forecast.image_count_tuning import rendered_members
    from mseval.lesions.components import count_lesions, voxel_volume

    out, lost = {}, [0, 0]
    for r in rendered_members(render_dir, visits, threshold):
        lost[0] += r.lost
        lost[1] += r.centres
        for k, visit in enumerate(visits):
            cs = [count_lesions(mk, r.affine) for mk in r.masks[k]]
            vox = [c.lesions["voxels"].to_numpy() * voxel_volume(r.affine) for c in cs]
            out[(r.patient_id, r.arm, visit)] = (np.array([c.volume_mm3 for c in cs]), vox, np.array([c.count for c in cs]), r.masks[k].mean(axis=0))
    out["lost_share"] = lost[0] / max(lost[1], 1)
    return out


def detection(dev: Path, ren: dict, ids: list[str], allocated: dict[str, str], last: str) -> dict:
    """Pooled lesion-wise detection of each patient's ensemble map vs its observed mask, and of the next same-arm
    patient's map (module docstring). Only patients observed at `last`."""
    import nibabel as nib

    from mseval.lesions.matching import match_lesions
    from mseval.lesions.presets import PRESETS

    v = pd.read_csv(dev / "visits.csv", dtype={"patient_id": str, "visit": str})
    v = v[(v["visit"] == last) & v["net2_mask_cumulative"].notna()].set_index("patient_id")
    prob = {p: ren[(p, allocated[p], last)][3] for p in ids}
    seen = [p for p in ids if p in v.index]
    nxt = {p: seen[(k + 1) % len(seen)] for k, p in enumerate(seen)}  # an arm with one patient: the next patient of any arm
    for arm in set(allocated.values()):
        group = [p for p in seen if allocated[p] == arm]
        if len(group) > 1:
            nxt |= {p: group[(k + 1) % len(group)] for k, p in enumerate(group)}
    out = {}
    for name, thr in (("majority", 0.5), ("any_member", 1e-9)):
        tot = {"own": np.zeros(4), "other_patient": np.zeros(4)}
        for p in seen:
            img = nib.load(dev / v.loc[p, "net2_mask_cumulative"])
            ref = np.asarray(img.dataobj) > 0.5
            for key, q in (("own", p), ("other_patient", nxt[p])):
                m = match_lesions(prob[q] >= thr, ref, img.affine, PRESETS["msseg2"])
                tot[key] += (m.tp_ref, m.tp_pred, m.fp, m.fn)
        row = {}
        for key, (tp, tpp, fp, fn) in tot.items():
            rec, prec = tp / max(tp + fn, 1), tpp / max(tpp + fp, 1)
            row[key] = {"tp_ref": int(tp), "tp_pred": int(tpp), "fp": int(fp), "fn": int(fn), "recall": rec, "precision": prec,
                        "f1": 2 * rec * prec / (rec + prec) if rec + prec > 0 else 0.0}
        out[name] = row
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
    from forecast.evaluate import THRESHOLD_GRID
    from forecast.image_count_tuning import observed_visits, select_render_threshold
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
    ap.add_argument("--threshold", type=float, default=None, help="the renderer's voxel threshold; default: chosen on this trial's "
                    "observed volumes (fair CRPS at the last visit), so give it when reporting on a check trial")
    ap.add_argument("--labels", default="arm-count", help="the decoder's labels (forecast.image_count_render.SHAPE_LABELS)")
    ap.add_argument("--cache", type=Path, default=None, help="pickle of load_arrays outputs: (train, val, dev) or the DEV list")
    ap.add_argument("--workers", type=int, default=2, help="processes reading the DEV patients")
    ap.add_argument("--array-cache", type=Path, default=None, help="load_arrays' disk cache (forecast.image_count_cache)")
    ap.add_argument("--forecaster", action="store_true", help="threshold and labels from the checkpoint's render.json (make checkpoint's "
                    "export, tuned on its validation trial), not chosen on this DEV trial")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.forecaster:
        from forecast.image_release import read_render_settings

        tuned = read_render_settings(a.checkpoint)
        if tuned is None:
            raise SystemExit(f"{a.checkpoint} has no render.json")
        a.threshold, a.labels = float(tuned["mask_threshold"]), str(tuned["labels"])
    t0 = time.time()
    cohort = read_cohort(a.dev)
    ids = list(cohort.patient_ids)
    allocated = {p: str(cohort.row(p)["arm"]) for p in ids}
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "all" / "lesions.csv").is_file():
        arrays = pickle.loads(a.cache.read_bytes()) if a.cache else None
        arrays = arrays[2] if isinstance(arrays, tuple) else arrays  # (train, val, dev) or the DEV list alone
        counts, lesions = forecast_trajectories(a.dev, a.checkpoint, samples=a.samples, seed=a.seed, arrays=arrays, workers=a.workers,
                                                cache=a.array_cache)
        (a.work / "all").mkdir(exist_ok=True)
        counts.to_csv(a.work / "all" / "counts.csv", index=False)
        lesions.to_csv(a.work / "all" / "lesions.csv", index=False)
    print(f"trajectories in {time.time() - t0:.0f}s", flush=True)
    _subset(a.work / "all", a.work / "allocated", lambda t: t["arm"] == t["patient_id"].map(allocated))
    arm_ids = set(ids[: a.arm_patients])
    _subset(a.work / "all", a.work / "arms", lambda t: t["patient_id"].isin(arm_ids) & (t["arm"] != t["patient_id"].map(allocated))
            & (t["member"] < a.arm_samples))
    render_trajectories(a.dev, a.work / "allocated", a.renderer, a.work / "render_allocated", save_prob=True, labels=a.labels)
    print(f"allocated arm rendered in {time.time() - t0:.0f}s", flush=True)
    render_trajectories(a.dev, a.work / "arms", a.renderer, a.work / "render_arms", save_prob=True, labels=a.labels)
    print(f"other arms rendered in {time.time() - t0:.0f}s", flush=True)

    counts = pd.read_csv(a.work / "allocated" / "counts.csv", dtype={"patient_id": str, "arm": str, "visit": str})
    visits = list(dict.fromkeys(counts["visit"]))
    obs = observed_visits(a.dev, ids)
    last = visits[-1]
    tuning = {}
    if a.threshold is None:  # the renderer's threshold by the fair CRPS of the observed last-visit volume (observed outcomes only)
        chosen = select_render_threshold(a.dev, a.work / "render_allocated", THRESHOLD_GRID)
        print(chosen.summary(), flush=True)
        tuning, threshold = chosen.crps, chosen.chosen
    else:
        threshold = a.threshold
    ren = rendered_visits(a.work / "render_allocated", visits, threshold)
    lost_share = ren["lost_share"]
    ren |= rendered_visits(a.work / "render_arms", visits, threshold)
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
        fv = [(p, v) for p in arm_ids if (p, arm, last) in ren for lv in ren[(p, arm, last)][1][: a.arm_samples] for v in lv]
        ov = [(p, v) for p in ids if allocated[p] == arm and (p, last) in obs for v in obs[(p, last)][1]]
        if not (fv and ov):
            per_arm[arm] = {"rendered_n": len(fv), "observed_n": len(ov), "ratio": None, "note": "no lesion on one side: not estimable"}
            continue
        (fm_, fse_), (om_, ose_) = (clustered_mean(np.array([v for _, v in x]), np.array([p for p, _ in x])) for x in (fv, ov))
        ratio = fm_ / om_
        per_arm[arm] = {"rendered_mean": fm_, "rendered_se": fse_, "rendered_n": len(fv), "observed_mean": om_, "observed_se": ose_,
                        "observed_n": len(ov), "observed_patients": len({p for p, _ in ov}), "ratio": ratio,
                        "ratio_se": ratio * float(np.hypot(fse_ / fm_, ose_ / om_))}  # delta method, independent patients
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
    det = detection(a.dev, ren, ids, allocated, last)
    result = {"dev": str(a.dev), "checkpoint": str(a.checkpoint), "renderer": str(a.renderer), "samples": a.samples,
              "threshold": threshold, "threshold_tuning_crps": tuning, "labels": a.labels,
              "lesion_volume_last_visit": lesion, "per_arm": per_arm, "pit": pit, "detection_last_visit": det,
              "lost_share_allocated": lost_share,
              "seconds": time.time() - t0}
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
