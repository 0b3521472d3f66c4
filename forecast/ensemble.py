"""Ensemble sampling into the forecast store: every patient under every arm (counterfactuals),
S samples each, optionally under blended arms (efficacy sweep).

Ensemble members, arms and both halves of a guidance pair share network batches; each member's
noise comes from its own seed `derive_seed(seed, patient, arm, sample)`, so the output does not
depend on the batch size. Blocks already in the store are skipped (resume); under torchrun the
patients are sharded by rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from forecast.checkpoint import Checkpoint, build_model, load_checkpoint
from forecast.config import ForecastConfig
from forecast.data import load_patient
from forecast.diffusion import alphas_cumprod
from forecast.model import arm_weights, blend_weights, count_labels
from forecast.runtime import configure_backend
from forecast.sampler import SamplerSettings, binarize, chunked_rows, sample
from mseval.errors import InputError
from mseval.io.cohort import Cohort, read_cohort
from mseval.io.store import ForecastStore
from mseval.provenance import write_store_provenance
from mseval.seeding import derive_seed


MIN_NET_BATCH = 4
"""Network calls run on at least this many members (padded with copies). On the CPU, oneDNN's 3D
convolution takes another code path for a batch of 1 and MKL's GEMM another for 1-3 rows, whose
sums differ in the last bits from those for larger batches; from 4 rows up every member's numbers
do not depend on the batch (checked up to 64), so padding makes the output batch-size invariant.
On CUDA, kernels chosen per batch size may still differ in the last bits."""


def inference_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """On the CPU, put the weights in the channels-last 3D layout (NDHWC): oneDNN's 3D convolutions
    run about 1.3x faster on it at 32^3 (bench/RESULTS.md). Inputs follow via `to_layout`."""
    return model.to(memory_format=torch.channels_last_3d) if device.type == "cpu" else model


def to_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A 5D tensor in the layout `inference_layout` chose for `device`."""
    return x.contiguous(memory_format=torch.channels_last_3d) if device.type == "cpu" and x.dim() == 5 else x


@dataclass(frozen=True)
class Condition:
    """One treatment to sample under: a store arm name and its (K+1,) class weights."""

    name: str
    weights: torch.Tensor


def parse_blend(spec: str, cfg: ForecastConfig) -> list[Condition]:
    """'A:B:0.25,0.5,0.75' -> blended conditions named 'A:B:0.25', ... ((1-f) A + f B)."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise InputError(None, f"--blend {spec!r}: expected ARM_A:ARM_B:F1,F2,...", field="blend")
    a, b, fr = parts
    for arm in (a, b):
        if arm not in (cfg.arms or ()):
            raise InputError(None, f"--blend: arm {arm!r} was never seen by the checkpoint (arms: {', '.join(cfg.arms or ())})", field="blend")
    try:
        fracs = [float(f) for f in fr.split(",") if f.strip()]
    except ValueError:
        raise InputError(None, f"--blend {spec!r}: fractions must be numbers", field="blend") from None
    if not fracs or any(not 0 <= f <= 1 for f in fracs):
        raise InputError(None, f"--blend {spec!r}: fractions must lie in [0, 1]", field="blend")
    return [Condition(f"{a}:{b}:{f:g}", blend_weights(cfg, a, b, f)) for f in fracs]


def resolve_conditions(cohort: Cohort, cfg: ForecastConfig, arms: str | Sequence[str], blend: Sequence[str] = ()) -> list[Condition]:
    """'all' = every arm of the cohort's arms table; each must be one the checkpoint was trained on."""
    known = list(cfg.arms or ())
    if isinstance(arms, str):
        wanted = list(cohort.arms["arm"]) if arms == "all" else [a.strip() for a in arms.split(",") if a.strip()]
        source = cohort.root / "arms.csv" if arms == "all" else None
    else:
        wanted, source = list(arms), None
    for a in wanted:
        if a not in known:
            raise InputError(source, f"arm {a!r} was never seen by the checkpoint (arms: {', '.join(known)})", field="arm" if source else "arms")
    conds = [Condition(a, arm_weights(cfg, [a])[0]) for a in wanted]
    for spec in blend:
        conds += parse_blend(spec, cfg)
    return conds


def check_sampler(cfg: ForecastConfig, settings: SamplerSettings) -> None:
    if (cfg.objective == "rflow") != (settings.sampler == "rflow"):
        need = "rflow" if cfg.objective == "rflow" else "ddim or ddpm"
        raise InputError(None, f"sampler {settings.sampler!r} does not fit a {cfg.objective} checkpoint (use {need})", field="sampler")


def mask_counts(x0: torch.Tensor, affine: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Lesions in each sampled mask (B,) of x0 (B, 1, X, Y, Z): the rule the forecasts are scored with
    (26-connected components of at least 3 mm^3, `forecast.evaluate`)."""
    from forecast.evaluate import count_masks

    return count_masks(binarize(x0, threshold)[0], affine)


def head_features(cohort: Cohort, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Raw count-head features (5,) per patient, read from the input masks and the manifest."""
    from forecast.count_head import feature_matrix
    from mseval.lesions.baseline_features import baseline_features

    if not ids:
        return {}
    f = baseline_features(cohort, ids, outcome=False)
    try:
        x = feature_matrix(f)
    except ValueError as exc:
        raise InputError(cohort.root / "manifest.csv", f"count head: {exc}", field="t2_lesion_mask") from None
    return {pid: x[k] for k, pid in enumerate(f["patient_id"])}


def requested_counts(model: torch.nn.Module, x: np.ndarray, conditions: Sequence[Condition], seeds: Sequence[Sequence[int]]) -> list[list[int]]:
    """The number of NET2 lesions each member is drawn with: one NB2 draw from the count head's law
    for the patient's features x (5,) under the condition's arm weights, from the member's seed."""
    from forecast.count_head import draw_counts, nb2_params

    w = torch.stack([c.weights for c in conditions]).float().numpy()
    mean, alpha = nb2_params(model.count_head, np.repeat(x[None], len(conditions), 0), w)
    return [draw_counts(float(m), float(a), sd) for m, a, sd in zip(mean, alpha, seeds)]


def member_centre_maps(logits: np.ndarray, counts: Sequence[int], seeds: Sequence[int], min_distance: int) -> torch.Tensor:
    """(B, 1, X, Y, Z) centre maps of B members: counts[i] centres drawn from the intensity logits (X, Y, Z)
    from a seed derived from the member's seed (`forecast.centres.draw_centres`)."""
    from forecast.centres import draw_centres

    return given_centre_maps([draw_centres(logits, n, derive_seed(s, "centres"), min_distance=min_distance) for n, s in zip(counts, seeds)],
                             logits.shape)


def given_centre_maps(centres: Sequence[np.ndarray], shape: Sequence[int]) -> torch.Tensor:
    """(B, 1, X, Y, Z) centre maps of B members whose centres (K_i, 3) voxel indices are given."""
    from forecast.centres import centre_map

    return torch.from_numpy(np.stack([centre_map(c, shape) for c in centres])[:, None])


def sample_patient(
    model: torch.nn.Module,
    cfg: ForecastConfig,
    cond: np.ndarray,
    conditions: Sequence[Condition],
    seeds: Sequence[Sequence[int]],
    settings: SamplerSettings,
    *,
    batch_size: int,
    acp: torch.Tensor,
    device: torch.device,
    max_rows: int | None = None,
    counts: Sequence[Sequence[int]] | None = None,
    affine: np.ndarray | None = None,
    centres: Sequence[Sequence[np.ndarray]] | None = None,
) -> list[torch.Tensor]:
    """Sample one patient under each condition. cond: (C, X, Y, Z); seeds[j]: the seeds of condition j;
    counts[j]: for a count-conditioned model, the number of NET2 lesions each member of condition j is drawn with
    (with `settings.count_tries` > 1, redrawn until the mask holds that many lesions; `affine` (4, 4) then needed);
    a centre-conditioned model (`centre_map`) draws that many centres per member and renders around them, or, when
    centres[j][s] (K, 3) are given, renders around those (counts[j][s] should then be K).
    Returns, per condition, x0 (S, 1, X, Y, Z) on the CPU. Members are batched `batch_size` at a time
    (x2 rows when guided); `max_rows` caps the rows of one network call (less memory, same output)."""
    jobs = [(j, s) for j, c in enumerate(conditions) for s in range(len(seeds[j]))]
    threshold = cfg.mask_threshold if settings.threshold is None else settings.threshold
    c = torch.from_numpy(cond).to(device)
    out: dict[tuple[int, int], torch.Tensor] = {}
    logits: np.ndarray | None = None  # centre_map models: the patient's centre intensity, computed once
    for lo in range(0, len(jobs), batch_size):
        chunk = jobs[lo: lo + batch_size]
        labels = torch.stack([conditions[j].weights for j, _ in chunk]).to(device)
        if counts is not None:
            labels = count_labels(labels, torch.tensor([float(counts[j][s]) for j, s in chunk]))
        gens = [torch.Generator().manual_seed(int(seeds[j][s])) for j, s in chunk]
        conds = c.unsqueeze(0).expand(len(chunk), *c.shape)
        if cfg.centre_map:
            if counts is None and centres is None:
                raise ValueError("a centre-conditioned model samples with the count head's counts")
            if centres is not None:
                cmaps = given_centre_maps([centres[j][s] for j, s in chunk], tuple(c.shape[1:]))
            else:
                if logits is None:
                    with torch.no_grad():
                        logits = model.location(c.unsqueeze(0))[0].float().cpu().numpy()
                cmaps = member_centre_maps(logits, [int(counts[j][s]) for j, s in chunk], [int(seeds[j][s]) for j, s in chunk],
                                           cfg.centre_min_distance)
            conds = torch.cat([conds, cmaps.to(device, conds.dtype)], dim=1)
        conds = to_layout(conds, device)  # once, not at every step

        def denoise(x: torch.Tensor, cc: torch.Tensor, t: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            if n < MIN_NET_BATCH:  # pad with copies of the last member; see MIN_NET_BATCH
                pad = MIN_NET_BATCH - n
                x, cc, t, lab = (torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for v in (x, cc, t, lab))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return model(to_layout(x, device), to_layout(cc, device), t, lab)[:n].contiguous()

        x0 = sample(chunked_rows(denoise, max_rows), conds, labels, gens, settings, alphas_cumprod=acp, prediction=cfg.prediction,
                    num_train_timesteps=cfg.num_train_timesteps).cpu()
        if counts is not None and settings.count_tries > 1:
            if affine is None:
                raise ValueError("rejection on the lesion count needs the patient's affine")
            want = np.array([int(counts[j][s]) for j, s in chunk])
            gap = np.abs(mask_counts(x0, affine, threshold) - want)
            for k in range(1, settings.count_tries):  # redraw, from seeds derived from the member's, the members off their count
                redo = np.flatnonzero(gap > 0)
                if not len(redo):
                    break
                g2 = [torch.Generator().manual_seed(int(derive_seed(seeds[chunk[i][0]][chunk[i][1]], "count-try", k))) for i in redo]
                idx = torch.as_tensor(redo, device=device)
                x_new = sample(chunked_rows(denoise, max_rows), conds[idx], labels[idx], g2, settings, alphas_cumprod=acp,
                               prediction=cfg.prediction, num_train_timesteps=cfg.num_train_timesteps).cpu()
                g_new = np.abs(mask_counts(x_new, affine, threshold) - want[redo])
                better = g_new < gap[redo]
                for r in np.flatnonzero(better):
                    x0[redo[r]] = x_new[r]
                    gap[redo[r]] = g_new[r]
        for k, key in enumerate(chunk):
            out[key] = x0[k]
    return [torch.stack([out[(j, s)] for s in range(len(seeds[j]))]) for j in range(len(conditions))]


def forecast_cohort(
    cohort_dir: str | Path,
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    *,
    samples: int,
    arms: str | Sequence[str] = "all",
    settings: SamplerSettings | None = None,
    batch_size: int = 8,
    seed: int = 0,
    blend: Sequence[str] = (),
    patients: Sequence[str] | None = None,
    save_prob: bool = False,
    device: str | torch.device | None = None,
    ema: bool = True,
    progress: Callable[[int, int], None] | None = None,
    deterministic: bool = False,
    max_rows: int | None = None,
) -> ForecastStore | None:
    """Write S sampled NET2 masks of every (given) patient under every requested arm into a store.

    Every input is checked before the store is created; blocks present are skipped. Under
    torchrun, patient i goes to rank i mod world and rank 0 consolidates the index; every rank
    skips the blocks already in the store (index or journal) when it starts. Compression and
    writing of a patient's blocks run on a writer thread while the next patient samples (CUDA only;
    on the CPU they run in turn, since sampling already occupies every core). Each block
    records the device, dtype and deterministic settings (`forecast.runtime`); batch-size
    invariance is claimed only on the CPU. Returns the store opened for reading (None on ranks other than 0).
    """
    from forecast.train import default_device, dist_info

    if samples < 1:
        raise InputError(None, "--samples must be at least 1", field="samples")
    if batch_size < 1:
        raise InputError(None, "--batch-size must be at least 1", field="batch_size")
    if max_rows is not None and max_rows < 1:
        raise InputError(None, "--max-rows must be at least 1", field="max_rows")
    cohort = read_cohort(cohort_dir)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = ckpt.config
    settings = settings or SamplerSettings(cfg.sampler, cfg.sample_steps, cfg.guidance, cfg.clip_x0, cfg.count_tries)
    if settings.threshold is None:  # the checkpoint's mask threshold, recorded in every block
        settings = replace(settings, threshold=cfg.mask_threshold)
    check_sampler(cfg, settings)
    conditions = resolve_conditions(cohort, cfg, arms, blend)
    ids = cohort.patient_ids if patients is None else list(patients)
    for pid in ids:
        cohort.row(pid)
    rank, world = dist_info()
    dev = torch.device(device) if device is not None else default_device()
    runtime = configure_backend(dev, deterministic=deterministic)
    model = inference_layout(build_model(ckpt, ema=ema, device=dev), dev)
    out = Path(out)
    existing = ForecastStore.open(out) if (out / "store.json").is_file() else None
    done = set(existing.keys()) if existing is not None else set()  # what every rank must not sample again
    todo = [pid for k, pid in enumerate(ids) if k % world == rank and any((pid, c.name) not in done for c in conditions)]
    loaded = {pid: load_patient(cohort, pid, cfg, with_target=False) for pid in todo}  # every check before any write
    head_x = head_features(cohort, todo) if cfg.count_head else {}
    if rank == 0:
        store = ForecastStore.create(out)
        write_store_provenance(out, ckpt.id, ckpt.provenance)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        store = ForecastStore.appender(out)
    acp = alphas_cumprod(cfg).to(torch.float64)
    record = {"model": "forecast", **settings.to_dict(), "seed": int(seed), "ema": bool(ema), **runtime}

    def write(pid: str, missing: list[Condition], x0s: list[torch.Tensor], seeds: list[list[int]], affine: np.ndarray,
              counts: list[list[int]] | None) -> None:
        for j, (c, x0, sd) in enumerate(zip(missing, x0s, seeds)):
            masks, prob = binarize(x0, settings.threshold)
            rec = record if counts is None else {**record, "requested_counts": [int(n) for n in counts[j]]}
            store.write_block(pid, c.name, masks, affine, sd, checkpoint=ckpt.id,
                              sampler=rec, prob=prob if save_prob else None)

    from concurrent.futures import Future, ThreadPoolExecutor

    pending: Future | None = None
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast-writer")
    try:
        for n, pid in enumerate(todo):
            p = loaded.pop(pid)
            missing = [c for c in conditions if (pid, c.name) not in done]
            seeds = [[derive_seed(seed, pid, c.name, s) for s in range(samples)] for c in missing]
            counts = requested_counts(model, head_x[pid], missing, seeds) if cfg.count_head else None
            x0s = sample_patient(model, cfg, p.cond, missing, seeds, settings, batch_size=batch_size, acp=acp, device=dev,
                                 max_rows=max_rows, counts=counts, affine=p.affine)
            if dev.type != "cuda":  # on the CPU the cores are busy sampling: a writer thread would only oversubscribe them
                write(pid, missing, x0s, seeds, p.affine, counts)
            else:
                if pending is not None:
                    pending.result()  # at most one patient waits for the writer; its errors surface here
                pending = writer.submit(write, pid, missing, x0s, seeds, p.affine, counts)
            if progress:
                progress(n + 1, len(todo))
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            store.flush()
    return ForecastStore.open(out) if rank == 0 else None
