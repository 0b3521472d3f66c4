"""Training: AdamW, EMA of the weights, gradient clipping, checkpoints every N steps and on
interrupt, bit-for-bit resume, DDP under torchrun.

Every random draw of step k (which patients, their augmentation, timesteps, noise, dropped arm
labels) comes from seeds derived from (config seed, k, global member index), so a run resumed
from the checkpoint of step k continues exactly as the uninterrupted run would, and the same
global batch split over 1 or N ranks (or micro-batches of gradient accumulation) draws the same
numbers for each member: the gradient is the same mean over members up to floating-point
summation order (exactly so for the plain MSE loss; `fg_weight > 0` normalizes by the weight of
each micro-batch, which is not split-invariant).

The Ctrl-C flag is all-reduced with the loss at every step, so all ranks stop at the same step
and save one consistent checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from forecast.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weights_path
from forecast.config import ForecastConfig
from forecast.cache import PatientCache, build_cache, step_loader
from forecast.centres import centre_batch
from forecast.data import Augment, split_patients
from forecast.diffusion import alphas_cumprod, diffusion_loss, to_signed
from forecast.model import NET2Denoiser, arm_weights, count_labels
from forecast.runtime import configure_backend
from mseval.errors import InputError
from mseval.io.cohort import Cohort, read_cohort
from mseval.provenance import training_provenance
from mseval.seeding import derive_seed

Progress = Callable[[int, int, float], None]
"""progress(step, total_steps, loss)."""
StepHook = Callable[[int, float], None]
"""on_step(step, loss), called after each completed step (tests raise KeyboardInterrupt from it)."""


def _seed(x: int) -> int:
    return int(x) % (2**63)


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment) start the process group (nccl on CUDA,
    gloo on the CPU). Returns True when this call started it."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # before NCCL starts, or every rank's communicator lands on GPU 0
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_model(cfg: ForecastConfig) -> NET2Denoiser:
    """A fresh denoiser whose initial weights depend only on the config seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(derive_seed(cfg.seed, "init")))
        return NET2Denoiser(cfg)


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA of every floating state entry, with the usual warm-up min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                ema[k].copy_(v)


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[list[bool]]:
    """Turn Ctrl-C into a flag checked at step boundaries, so a checkpoint never holds half a step."""
    flag = [False]
    try:
        old = signal.signal(signal.SIGINT, lambda *_: flag.__setitem__(0, True))
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def _start(cohort: Cohort, cfg: ForecastConfig, out: Path, resume: bool) -> tuple[ForecastConfig, Checkpoint | None, list[str], list[str]]:
    cohort_arms = list(cohort.arms["arm"])
    if resume:
        if not weights_path(out).is_file():
            raise InputError(out, "nothing to resume (no checkpoint.pt); drop --resume to start")
        ckpt = load_checkpoint(out)
        if cfg.steps != ckpt.config.steps:
            ckpt.config = ckpt.config.with_(steps=cfg.steps)
        return ckpt.config, ckpt, ckpt.train_ids, ckpt.val_ids
    if weights_path(out).is_file():
        raise InputError(out, "a checkpoint is already there; pass --resume to continue it or choose a new folder")
    if cfg.arms is None:
        cfg = cfg.with_(arms=tuple(cohort_arms))
    unknown = [a for a in cohort_arms if a not in (cfg.arms or ())]
    if unknown:
        raise InputError(cohort.root / "arms.csv", f"arm {unknown[0]!r} is not among the config's arms ({', '.join(cfg.arms or ())})", field="arm")
    train_ids, val_ids = split_patients(cohort.patient_ids, list(cohort.manifest["arm"]), cfg.val_fraction, cfg.seed)
    return cfg, None, train_ids, val_ids


def fit_location_on_cohort(model: NET2Denoiser, data: PatientCache, cohort: Cohort, val_ids: list[str]):  # noqa: ANN201 - LocationFit
    """Fit `model.location` on the cached training patients' observed NET2 lesion centres, choosing the
    epoch on the held-out patients' (`forecast.centres.fit_location`)."""
    from forecast.centres import fit_location, lesion_centres
    from forecast.data import load_patient

    cfg = model.cfg

    def item(i: int) -> tuple[torch.Tensor, object]:
        c, t = data.item(i)
        return c, lesion_centres(t[0].numpy())

    val = []
    for pid in val_ids:
        p = load_patient(cohort, pid, cfg)
        val.append((torch.from_numpy(p.cond), lesion_centres(p.target)))
    return fit_location(model.location, item, len(data), val, epochs=cfg.location_epochs,
                        seed=derive_seed(cfg.seed, "location"))


def train(
    cohort_dir: str | Path,
    cfg: ForecastConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    on_step: StepHook | None = None,
    deterministic: bool = False,
    cache_dir: str | Path | None = None,
    workers: int = 0,
) -> Checkpoint:
    """Train (or with `resume`, continue) a model on a cohort's observed NET2 masks; checkpoints go to `out`.

    Raises InputError for bad input before anything is written. Ctrl-C (or KeyboardInterrupt from
    `on_step`) saves a checkpoint of the last completed step, then re-raises. Each rank runs
    batch_size / (ranks x grad_accumulation) members per network call. `deterministic` selects
    deterministic kernels on CUDA (see `forecast.runtime`); the checkpoint records the settings.

    Data: the training patients go to a memory-mapped cache (`forecast.cache`; default
    `out/data_cache`, built by rank 0, reused when the cohort and inputs are unchanged); a
    DataLoader with `workers` processes (pinned memory on CUDA) reads each step's members ahead of
    the step, and augmentation runs on the training device.
    """
    out = Path(out)
    cohort = read_cohort(cohort_dir)
    cfg, ckpt, train_ids, val_ids = _start(cohort, cfg, out, resume)
    rank, world = dist_info()
    acc = cfg.grad_accumulation
    if cfg.batch_size % (world * acc):
        raise InputError(None, f"batch_size {cfg.batch_size} is not divisible by {world} processes x grad_accumulation {acc}", field="batch_size")
    dev = torch.device(device) if device is not None else default_device()
    runtime = {**configure_backend(dev, deterministic=deterministic), "world_size": world, "grad_accumulation": acc}
    cache = Path(cache_dir) if cache_dir is not None else out / "data_cache"
    if rank == 0:
        fresh, out_fresh = not cache.exists(), not out.exists()
        try:
            build_cache(cohort, train_ids, cfg, cache)
        except InputError:
            import shutil

            if fresh:  # nothing partial is left behind
                shutil.rmtree(cache, ignore_errors=True)
            if out_fresh and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    if world > 1:
        torch.distributed.barrier()
    data = PatientCache(cache, train_ids)
    augment = Augment(cfg) if cfg.augment else None
    model = init_model(cfg)
    counts: torch.Tensor | None = None
    head_fit: dict | None = None
    if cfg.count_head:  # the count pathway: observed NET2 counts condition the network; the head is fitted once, at step 0
        from forecast.count_head import fit_head_on_cohort

        counts, fit = fit_head_on_cohort(model, cohort, train_ids, val_ids, fit=ckpt is None)
        head_fit = fit.to_dict() if fit is not None else ckpt.provenance.get("count_head")  # fit is None only when resuming
    location_fit: dict | None = None
    if cfg.centre_map:  # the location pathway, fitted once at step 0 on the observed NET2 masks
        location_fit = fit_location_on_cohort(model, data, cohort, val_ids).to_dict() if ckpt is None else ckpt.provenance.get("location")
    model = model.to(dev)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, log = 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        ema = {k: v.to(dev).clone() for k, v in ckpt.ema.items()}
        if ckpt.optimizer is not None:
            opt.load_state_dict(ckpt.optimizer)
        step, log = ckpt.step, list(ckpt.log)
    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    acp = alphas_cumprod(cfg)
    local = cfg.batch_size // (world * acc)
    provenance = {**training_provenance(cohort, train_ids, val_ids), "device": str(dev), "world_size": world,
                  "torch_threads": torch.get_num_threads()}
    if head_fit is not None:
        provenance["count_head"] = head_fit
    if location_fit is not None:
        provenance["location"] = location_fit
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)

    def snapshot(at: int) -> Checkpoint:
        c = Checkpoint(
            config=cfg, model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            ema={k: v.detach().cpu().clone() for k, v in ema.items()}, optimizer=opt.state_dict(), step=at,
            train_ids=list(train_ids), val_ids=list(val_ids), log=list(log), runtime=dict(runtime), provenance=provenance,
        )
        if rank == 0:
            save_checkpoint(c, out)
        if world > 1:
            torch.distributed.barrier()
        return c

    last = snapshot(step) if step == 0 else None
    model.train()
    batches = iter(step_loader(data, cfg, step + 1, cfg.steps, rank, world, workers=workers, pin_memory=dev.type == "cuda"))
    with _deferred_sigint() as sigint:
        try:
            while step < cfg.steps:
                k = step + 1
                cond_all, target_all, member_ids, aug_seeds, patient_ids = next(batches)  # prepared while step k-1 ran
                opt.zero_grad(set_to_none=True)
                total = torch.zeros((), device=dev)
                for j in range(acc):  # micro-batch j of rank r holds global members (j x world + r) x local ...
                    sl = slice(j * local, (j + 1) * local)
                    cond = cond_all[sl].to(dev, non_blocking=True)
                    target = target_all[sl].to(dev, non_blocking=True)
                    if augment is not None:  # on the training device, seeded per member
                        pairs = [augment(c, t, int(s)) for c, t, s in zip(cond, target, aug_seeds[sl])]
                        cond, target = torch.stack([c for c, _ in pairs]), torch.stack([t for _, t in pairs])
                    members = [int(m) for m in member_ids[sl]]
                    arms = [data.arms[int(p)] for p in patient_ids[sl]]
                    gens = [torch.Generator().manual_seed(_seed(derive_seed(cfg.seed, "noise", k, m))) for m in members]
                    labels = arm_weights(cfg, arms, device=dev)
                    if cfg.centre_map:  # the centres of the (augmented) target, and their number as the count
                        cmap, n_centres = centre_batch(target)
                        cond = torch.cat([cond, cmap.to(cond.dtype)], dim=1)
                        labels = count_labels(labels, n_centres)
                    elif counts is not None:
                        labels = count_labels(labels, counts[patient_ids[sl].long()])
                    sync = net.no_sync() if world > 1 and j < acc - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                            loss = diffusion_loss(net, to_signed(target), cond, labels, cfg, acp, gens)
                        (loss / acc).backward()
                    total += loss.detach().float() / acc
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                ema_update(ema, model, cfg.ema_decay, k)
                stats = torch.stack([total, torch.tensor(float(sigint[0]), device=dev)])
                if world > 1:  # one collective per step: the mean loss and whether any rank saw Ctrl-C
                    torch.distributed.all_reduce(stats)
                value = stats[0] / world
                sigint[0] = bool(stats[1] > 0)
                step = k
                log.append({"step": k, "loss": float(value), "seconds": time.perf_counter() - t0})
                if progress:
                    progress(step, cfg.steps, float(value))
                if on_step:
                    on_step(step, float(value))
                if sigint[0]:
                    raise KeyboardInterrupt
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    last = snapshot(step)
        except KeyboardInterrupt:
            snapshot(step)
            raise
    if last is None or last.step != step:
        last = snapshot(step)
    last.path = out
    return load_checkpoint(out) if rank == 0 else last
