"""Lesion masks for the image count model's trajectories (`mseval forecast image-render`): a centre-conditioned
diffusion decoder (a `centre_map` checkpoint such as the shipped `tiny_centre`) draws each member's lesions around
the centres `image-sample` drew, and the rendered mask is split by the lesions' first visits.

How a member becomes masks, one per scheduled visit:
1. the decoder renders one mask around all the member's centres (its last visit), conditioned on the patient's
   baseline images, the member's arm and its number of lesions; its noise comes from
   `derive_seed(member seed, "render")`, so a member's masks do not depend on the batch or the patient order;
2. each 26-connected component of that mask is *claimed* by the drawn centres that lie in it or touch it (within one
   voxel, 26-neighbourhood); it takes the earliest birth visit among them (two lesions whose shapes merged are one
   component, present from the first one's visit). A component no centre claims is not part of the trajectory (the
   count and the places are the count law's and the centre law's, not the renderer's) and is dropped;
3. the mask at visit k is the union of the components with birth visit <= k, so a member's visits are one coherent
   trajectory: the W48 mask holds its own W24 lesions, voxel for voxel.

The decoder shapes lesions; it does not move them or change their number, except that a centre around which it
draws nothing is lost (`lost` in the lesion table) and merged shapes count once. The numbers are conditional on both
checkpoints (the trajectories' and the decoder's): no training uncertainty of either is carried.
"""

from __future__ import annotations

import json

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.sampler import SamplerSettings

SHAPE_LABELS = ("arm-count", "none")
"""What the decoder may be told besides the images and the drawn centres (`render_trajectories`' labels)."""

RENDER_LESION_COLUMNS = ("patient_id", "arm", "member", "lesion", "birth_visit", "x", "y", "z", "volume_mm3", "lost", "merged_into")
"""One row per drawn lesion: its rendered component's volume (mm^3; 0 when lost or merged into an earlier lesion's
component), lost (the decoder drew nothing at its centre), merged_into (the lesion whose component it shares, -1 if none)."""


@dataclass(frozen=True)
class SplitMember:
    """One rendered member split among its lesions. labels: (X, Y, Z) int16, 0 background, k + 1 where a claimed
    component is first present at visit k; volume_mm3: (K,) its component's volume for the lesion that owns it (the
    earliest born of those claiming it, ties to the lower index), 0 for the others; lost: (K,) bool, no component at
    the centre; merged_into: (K,) int64 the owner of the shared component, -1 when the lesion owns its own (or is
    lost); dropped_voxels: voxels of components no centre claimed."""

    labels: np.ndarray
    volume_mm3: np.ndarray
    lost: np.ndarray
    merged_into: np.ndarray
    dropped_voxels: int


def split_by_birth(mask: np.ndarray, centres: np.ndarray, birth: np.ndarray, voxel_mm3: float = 1.0) -> SplitMember:
    """Split one rendered mask (X, Y, Z) bool among its member's lesions (centres (K, 3) voxel indices, birth (K,) visit
    indices), by the rules of the module docstring (26-connected components, claimed within one voxel). voxel_mm3:
    the volume of one voxel."""
    import cc3d
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    comp = cc3d.connected_components(mask.astype(np.uint8), connectivity=26).astype(np.int64)
    grown = ndimage.grey_dilation(comp, size=(3, 3, 3))  # a component's label reaches one voxel around it
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    birth = np.asarray(birth, dtype=np.int64).reshape(-1)
    if len(birth) != len(centres):
        raise ValueError(f"{len(centres)} centres but {len(birth)} birth visits")
    idx = tuple(centres.T)
    claimed = np.where(comp[idx] > 0, comp[idx], grown[idx]) if len(centres) else np.zeros(0, np.int64)
    voxels = np.bincount(comp.ravel(), minlength=int(comp.max()) + 1)
    owner = np.full(len(voxels), -1, dtype=np.int64)
    for k in np.lexsort((np.arange(len(birth)), birth)):  # earliest birth first, then lower index
        if claimed[k] > 0 and owner[claimed[k]] < 0:
            owner[claimed[k]] = k
    first = np.zeros(len(voxels), dtype=np.int16)
    first[owner >= 0] = birth[owner[owner >= 0]] + 1
    labels = first[comp]
    lost = claimed == 0
    own = ~lost & (owner[claimed] == np.arange(len(claimed)))
    volume = np.where(own, voxels[claimed] * float(voxel_mm3), 0.0)
    merged = np.where(~lost & ~own, owner[claimed], -1)
    return SplitMember(labels, volume, lost, merged, int((mask & (labels == 0)).sum()))


def masks_at_visits(labels: np.ndarray, n_visits: int) -> np.ndarray:
    """(V, S, X, Y, Z) bool from S members' birth labels (S, X, Y, Z): the mask at visit k holds labels 1..k+1."""
    labels = np.asarray(labels)
    return np.stack([(labels >= 1) & (labels <= k + 1) for k in range(n_visits)])


def read_trajectories(samples_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts, lesions) of an `image-sample` folder (`SAMPLE_COUNT_COLUMNS`, `LESION_COLUMNS`), checked: one line
    naming the file, row and field for a missing file, a missing column or a lesion whose member or visit is unknown."""
    from forecast.image_count_pipeline import LESION_COLUMNS, SAMPLE_COUNT_COLUMNS
    from mseval.errors import InputError

    folder = Path(samples_dir)
    tables = []
    for name, columns in (("counts.csv", SAMPLE_COUNT_COLUMNS), ("lesions.csv", LESION_COLUMNS)):
        path = folder / name
        if not path.is_file():
            raise InputError(path, "not found: expected the folder written by `mseval forecast image-sample`")
        t = pd.read_csv(path, dtype={"patient_id": str, "arm": str, "visit": str, "birth_visit": str})
        missing = [c for c in columns if c not in t.columns]
        if missing:
            raise InputError(path, f"lacks column {missing[0]!r} (an `image-sample` table has {', '.join(columns)})", field=missing[0])
        tables.append(t)
    counts, lesions = tables
    for col in ("x", "y", "z", "member", "lesion"):
        v = pd.to_numeric(lesions[col], errors="coerce")
        bad = ~(v.notna() & (v >= 0) & (v == v.round()))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(folder / "lesions.csv", f"{col} {lesions[col].iloc[i]!r} is not a non-negative integer", row=i + 1, field=col)
    members = set(zip(counts["patient_id"], counts["arm"], counts["member"]))
    visits = list(dict.fromkeys(counts["visit"]))
    for i, r in enumerate(lesions.itertuples(index=False)):
        if (r.patient_id, r.arm, r.member) not in members:
            raise InputError(folder / "lesions.csv", f"member {r.member} of patient {r.patient_id!r} under {r.arm!r} is not in counts.csv", row=i + 1, field="member")
        if r.birth_visit not in visits:
            raise InputError(folder / "lesions.csv", f"visit {r.birth_visit!r} is not one of counts.csv's ({', '.join(visits)})", row=i + 1, field="birth_visit")
    return counts, lesions


def render_trajectories(cohort_dir: str | Path, samples_dir: str | Path, renderer: str | Path, out: str | Path, *,
                        steps: int | None = None, threshold: float | None = None, batch_size: int = 8, device: str | None = None,
                        save_prob: bool = False, labels: str | None = None, tuned: Mapping[str, Any] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Render every member of an `image-sample` folder into masks (module docstring) and write, under `out`, one
    forecast store per scheduled visit (`out/<visit>/`: blocks per patient and arm, S members, the same seeds as the
    trajectories) and `lesions.csv` (`RENDER_LESION_COLUMNS`). Every input is checked before anything is written; a
    (patient, arm) already in every visit's store is skipped (resume). A patient's arms are rendered in one sampling call,
`batch_size` members per network batch across arms (each member from its own seed: the masks do not depend on the
batch size; a member's row in a batch can change its probabilities in the last float bits). Each store's provenance.json
records the decoder's training patients and, when `samples_dir` holds one (`image-sample` writes it), the forecaster's. The decoder samples with its config's sampler,
    guidance and steps (`steps` overrides them) and thresholds at its `mask_threshold` (or `threshold`). save_prob: the last visit's blocks also keep each
    member's rendered voxel probability (S, X, Y, Z), from which another threshold can be applied later (`split_by_birth`
    on prob > t). labels: what the decoder is told besides the images and the centre map -- "arm-count" (the member's arm
    and its number of lesions) or "none" (the null label of classifier-free guidance, on which the decoder was also
    trained: shapes that cannot depend on the arm). tuned: the render settings an image count checkpoint was exported with
    (`forecast.image_release.read_render_settings`): its threshold and labels become the defaults, and the decoder and the
    trajectories' checkpoint must be the ones they were tuned for (InputError otherwise). Without either, labels
    "arm-count" and the decoder's own threshold. Returns the lesion table."""
    import torch

    from forecast.checkpoint import build_model, load_checkpoint
    from forecast.data import load_patient
    from forecast.diffusion import alphas_cumprod
    from forecast.ensemble import Condition, check_sampler, inference_layout, resolve_conditions, sample_patient
    from forecast.model import arm_weights
    from forecast.runtime import configure_backend
    from forecast.sampler import binarize
    from forecast.train import default_device
    from mseval.errors import InputError
    from mseval.io.atomic import write_csv_atomic
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.lesions.components import voxel_volume
    from mseval.provenance import PROVENANCE_FILE, write_store_provenance
    from mseval.seeding import derive_seed

    counts, lesions = read_trajectories(samples_dir)
    prov_path = Path(samples_dir) / PROVENANCE_FILE
    sampled_provenance = json.loads(prov_path.read_text()).get("checkpoints", {}) if prov_path.is_file() else {}
    ckpt = load_checkpoint(renderer)
    cfg = ckpt.config
    if not cfg.centre_map:
        raise InputError(ckpt.path, f"config {cfg.name!r} does not render around given centres (centre_map false); use a centre-conditioned "
                         "checkpoint such as the shipped tiny_centre", field="centre_map")
    if tuned is not None and threshold is None:
        threshold = float(tuned["mask_threshold"])
    labels = labels or (str(tuned["labels"]) if tuned is not None else "arm-count")
    settings = SamplerSettings(cfg.sampler, steps or cfg.sample_steps, cfg.guidance, cfg.clip_x0,
                               threshold=cfg.mask_threshold if threshold is None else threshold)
    check_sampler(cfg, settings)
    if labels not in SHAPE_LABELS:
        raise InputError(None, f"--labels {labels!r}: choose one of {', '.join(SHAPE_LABELS)}", field="labels")
    cohort = read_cohort(cohort_dir)
    groups = list(dict.fromkeys(zip(counts["patient_id"], counts["arm"])))
    conditions = {c.name: c for c in resolve_conditions(cohort, cfg, sorted({a for _, a in groups}))}
    if labels == "none":
        conditions = {name: Condition(name, arm_weights(cfg, [None])[0]) for name in conditions}
    visits = list(dict.fromkeys(counts["visit"]))
    trajectory_ckpt = str(counts["checkpoint"].iloc[0]) if len(counts) else ""
    if tuned is not None and str(tuned["renderer"]) != ckpt.id:
        raise InputError(ckpt.path, f"the forecaster's render settings were tuned for decoder {tuned['renderer']}, not {ckpt.id}; "
                         "give that decoder, or --mask-threshold without --forecaster", field="renderer")
    if tuned is not None and len(counts) and str(tuned["trajectories_checkpoint"]) != trajectory_ckpt:
        raise InputError(Path(samples_dir) / "counts.csv", f"the trajectories come from checkpoint {trajectory_ckpt}, not from the forecaster "
                         f"{tuned['trajectories_checkpoint']} whose render settings were given", row=1, field="checkpoint")
    out = Path(out)
    existing = [ForecastStore.open(out / v) if (out / v / "store.json").is_file() else None for v in visits]
    done = set.intersection(*(set(s.keys()) for s in existing)) if visits and all(existing) else set()
    todo = [g for g in groups if g not in done]
    patients = {pid: load_patient(cohort, pid, cfg, with_target=False) for pid in dict.fromkeys(p for p, _ in todo)}  # every check first
    for i, r in enumerate(lesions.itertuples(index=False)):
        shape = patients[r.patient_id].cond.shape[1:] if r.patient_id in patients else None
        if shape is not None and not (r.x < shape[0] and r.y < shape[1] and r.z < shape[2]):
            raise InputError(Path(samples_dir) / "lesions.csv", f"centre ({r.x}, {r.y}, {r.z}) lies outside patient {r.patient_id!r}'s grid "
                             f"{list(shape)}", row=i + 1, field="x")
    stores = {v: ForecastStore.create(out / v) for v in visits}
    forecaster_prov = sampled_provenance.get(trajectory_ckpt)  # only the checkpoint that drew these trajectories
    if tuned is not None and forecaster_prov is not None:  # the threshold and labels were chosen for these trajectories
        forecaster_prov = {**forecaster_prov, "tuned_on": tuned.get("tuned_on")}
    for v in visits:  # what each store's masks were learned from: the decoder's patients and the trajectories' forecaster's
        write_store_provenance(out / v, ckpt.id, ckpt.provenance)
        if forecaster_prov is not None:
            write_store_provenance(out / v, trajectory_ckpt, forecaster_prov)
    present = {v: set(st.keys()) for v, st in stores.items()}  # blocks a stopped run wrote for some visits only
    dev = torch.device(device) if device is not None else default_device()
    runtime = configure_backend(dev)
    model = inference_layout(build_model(ckpt, ema=True, device=dev), dev)
    acp = alphas_cumprod(cfg).to(torch.float64)
    record = {"model": "image-count trajectories + centre-conditioned diffusion decoder", **settings.to_dict(), **runtime, "labels": labels,
              "trajectories_checkpoint": trajectory_ckpt, "renderer_checkpoint": ckpt.id}
    part_dir = out / "_lesions"
    part_dir.mkdir(parents=True, exist_ok=True)
    by_member = {k: g.sort_values("lesion") for k, g in lesions.groupby(["patient_id", "arm", "member"], sort=False)}
    members = {k: g.sort_values("member") for k, g in counts.drop_duplicates(["patient_id", "arm", "member"]).groupby(["patient_id", "arm"], sort=False)}
    arms_of: dict[str, list[str]] = {}
    for pid, arm in todo:  # every arm of a patient in one sampling call: fewer, fuller network batches (the same members)
        arms_of.setdefault(pid, []).append(arm)
    done_groups = 0
    for pid, arms in arms_of.items():
        p = patients[pid]
        voxel_mm3 = voxel_volume(p.affine)
        group: list[tuple[pd.DataFrame, list[int], list[pd.DataFrame], list[np.ndarray], list[np.ndarray]]] = []
        for arm in arms:
            mem = members[(pid, arm)]
            seeds = [int(s) for s in mem["seed"]]
            rows = [by_member.get((pid, arm, int(m)), lesions.iloc[:0]) for m in mem["member"]]
            cents = [r[["x", "y", "z"]].to_numpy(np.int64).reshape(-1, 3) for r in rows]
            births = [np.array([visits.index(v) for v in r["birth_visit"]], dtype=np.int64) for r in rows]
            group.append((mem, seeds, rows, cents, births))
        x0s = sample_patient(model, cfg, p.cond, [conditions[arm] for arm in arms], [[derive_seed(s, "render") for s in g[1]] for g in group],
                             settings, batch_size=batch_size, acp=acp, device=dev,
                             counts=[[len(c) for c in g[3]] for g in group] if labels == "arm-count" else None, centres=[g[3] for g in group])
        for arm, (mem, seeds, rows, cents, births), x0 in zip(arms, group, x0s):
            masks, prob = binarize(x0, settings.threshold)
            splits = [split_by_birth(m if len(c) else np.zeros_like(m), c, b, voxel_mm3) for m, c, b in zip(masks, cents, births)]
            by_visit = masks_at_visits(np.stack([sp.labels for sp in splits]), len(visits))
            table = [(pid, arm, int(m), int(r["lesion"].iloc[j]), r["birth_visit"].iloc[j], *map(int, c[j]), float(sp.volume_mm3[j]),
                      bool(sp.lost[j]), int(sp.merged_into[j]))
                     for m, r, c, sp in zip(mem["member"], rows, cents, splits) for j in range(len(c))]
            write_csv_atomic(pd.DataFrame(table, columns=list(RENDER_LESION_COLUMNS)), part_dir / f"{derive_seed(0, pid, arm)}.csv")
            for k, v in enumerate(visits):
                if (pid, arm) not in present[v]:
                    stores[v].write_block(pid, arm, by_visit[k], p.affine, seeds, checkpoint=ckpt.id,
                                          sampler={**record, "visit": v, "dropped_voxels": [sp.dropped_voxels for sp in splits]},
                                          prob=prob if save_prob and k == len(visits) - 1 else None)
            done_groups += 1
            if progress:
                progress(done_groups, len(todo))
    for s in stores.values():
        s.flush()
    parts = [pd.read_csv(f, dtype={"patient_id": str, "arm": str, "birth_visit": str}) for f in sorted(part_dir.glob("*.csv"))]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(RENDER_LESION_COLUMNS))
    table = table.sort_values(["patient_id", "arm", "member", "lesion"], kind="stable").reset_index(drop=True)
    write_csv_atomic(table, out / "lesions.csv")
    return table


__all__ = ["RENDER_LESION_COLUMNS", "SHAPE_LABELS", "SplitMember", "masks_at_visits", "read_trajectories", "render_trajectories", "split_by_birth"]
