"""`mseval forecast ...`: train, sample, evaluate, plan, import, export (beside the other commands; the model lives in forecast/). Thin: parse, call, print.

Only typer, pathlib and typing are imported here; torch and MONAI load inside the commands, so
`mseval --help` stays fast and torch-free. `InputError` is turned into one stderr line and exit
code 2 by mseval's entry point (or by `main` below when this sub-app runs on its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="forecast",
    help="Train the treatment-conditioned diffusion model, sample forecasts, evaluate checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _progress(description: str, *, loss: bool = False):  # noqa: ANN202 - (context manager, update)
    from mseval.commands._progress import progress

    return progress(description, loss=loss)


def _rank0() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@app.command()
def train(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder with follow-up NET2 masks.")],
    config: Annotated[Optional[str], typer.Option("--config", help="Config JSON file, or a shipped config name: tiny, paper (default: tiny; with --resume, the checkpoint's).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder (config.json, checkpoint.pt, train_log.csv).")] = Path("checkpoint"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out (bit-for-bit on the CPU).")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Override the config's number of optimizer steps.")] = None,
    grad_accumulation: Annotated[Optional[int], typer.Option("--grad-accumulation", help="Override the config's micro-batches per step (batch_size = ranks x micro-batch x this).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 (default: cuda when present).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another mseval run is writing OUT, wait for it instead of stopping.")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="CUDA: deterministic kernels, no TF32, no cudnn.benchmark (slower; the CPU always is).")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader processes preparing the next steps (0: in the training process).")] = 0,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Per-patient training cache folder (default: OUT/data_cache).")] = None,
) -> None:
    """Train (or resume) the model. Under `torchrun --nproc-per-node N`, runs DDP."""
    from forecast.config import ForecastConfig
    from forecast.train import init_distributed_from_env, train as run_train
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.errors import InputError
    from mseval.io.lock import output_lock

    check_min(steps, "--steps", 1)
    check_out_folder(out)
    recorded = out / "config.json"
    if resume and recorded.is_file():
        previous = ForecastConfig.load(str(recorded))
        cfg = previous if config is None else ForecastConfig.load(config)
        old, new = previous.to_dict(), cfg.to_dict()
        diff = next((k for k in new if k not in ("steps", "arms") and old.get(k) != new.get(k)), None)
        if diff is not None:
            raise InputError(recorded, f"the checkpoint was trained with {diff} = {old.get(diff)!r}, --config {config} says {new.get(diff)!r}; "
                                       "resume with the checkpoint's config (omit --config) or train into a new --out", field=diff)
    else:
        cfg = ForecastConfig.load(config or "tiny")
    if steps is not None:
        cfg = cfg.with_(steps=steps)
    if workers < 0:
        from mseval.errors import InputError

        raise InputError(None, "--workers must be at least 0", field="workers")
    if grad_accumulation is not None:
        if grad_accumulation < 1:
            from mseval.errors import InputError

            raise InputError(None, "--grad-accumulation must be at least 1", field="grad_accumulation")
        cfg = cfg.with_(grad_accumulation=grad_accumulation)
    started = init_distributed_from_env()
    try:
        prog, update = _progress("training", loss=True)
        with output_lock(out, wait=wait, clean=_world() == 1) if _rank0() else _Null(), prog if _rank0() else _Null():
            ckpt = run_train(cohort, cfg, out, resume=resume, device=device, progress=update if _rank0() else None,
                             deterministic=deterministic, workers=workers, cache_dir=cache)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if _rank0():
        last = ckpt.log[-1]["loss"] if ckpt.log else float("nan")
        typer.echo(f"{out}: step {ckpt.step}, loss {last:.4f}, {len(ckpt.train_ids)} training / {len(ckpt.val_ids)} validation patients ({ckpt.id})")


def _world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


@app.command()
def sample(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder (baseline images; no follow-up needed).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint folder from `mseval forecast train`.")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder (created, or resumed).")],
    samples: Annotated[int, typer.Option(help="Ensemble members per patient and arm.")] = 10,
    arms: Annotated[str, typer.Option(help="'all' (every arm of the cohort) or a comma-separated list.")] = "all",
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the config's, 50).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddim | ddpm | rflow (default: the config's).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale w: uncond + w (cond - uncond); 1 = conditional.")] = None,
    count_tries: Annotated[Optional[int], typer.Option("--count-tries", help="Count-conditioned checkpoints: draws per member until its mask holds the requested lesion count (default: the config's).")] = None,
    mask_threshold: Annotated[Optional[float], typer.Option("--mask-threshold", help="A voxel is lesion where its sampled probability exceeds this (default: the config's, chosen on validation).")] = None,
    batch_size: Annotated[int, typer.Option(help="Network batch (members, arms and guidance halves together); results do not depend on it.")] = 8,
    seed: Annotated[int, typer.Option(help="Base seed; sample seeds derive from (seed, patient, arm, sample).")] = 0,
    blend: Annotated[Optional[list[str]], typer.Option(help="Efficacy sweep A:B:0.25,0.5,0.75 (repeatable): sample under (1-f) A + f B.")] = None,
    patients: Annotated[Optional[str], typer.Option(help="Only these patients (comma-separated; default: all).")] = None,
    prob: Annotated[bool, typer.Option("--prob/--no-prob", help="Also store the soft probability of each sample.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: cuda when present).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store at OUT (instead of resuming it with the same settings).")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If another mseval run is writing OUT, wait for it instead of stopping.")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="CUDA: deterministic kernels, no TF32, no cudnn.benchmark (the store records it).")] = False,
    max_rows: Annotated[Optional[int], typer.Option("--max-rows", help="At most this many rows per network call (a guided batch of B members has 2B rows); same output, less memory.")] = None,
) -> None:
    """Sample every patient under every arm into a forecast store. Shards patients under torchrun."""
    from dataclasses import asdict

    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SAMPLERS, SamplerSettings
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.commands._common import store_run
    from mseval.io.lock import output_lock
    from forecast.checkpoint import load_checkpoint
    from forecast.train import init_distributed_from_env
    from mseval.errors import InputError

    if sampler is not None and sampler not in SAMPLERS:
        raise InputError(None, f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}", field="sampler")
    if steps is not None and steps < 1:
        raise InputError(None, "--steps must be at least 1", field="steps")
    if count_tries is not None:
        check_min(count_tries, "--count-tries", 1)
    if mask_threshold is not None and not 0.0 < mask_threshold < 1.0:
        raise InputError(None, f"--mask-threshold {mask_threshold:g}: must lie strictly between 0 and 1", field="mask_threshold")
    check_min(samples, "--samples", 1)
    check_min(batch_size, "--batch-size", 1)
    check_out_folder(out)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    settings = SamplerSettings(sampler or cfg.sampler, steps or cfg.sample_steps, cfg.guidance if guidance is None else guidance, cfg.clip_x0,
                               cfg.count_tries if count_tries is None else count_tries,
                               cfg.mask_threshold if mask_threshold is None else mask_threshold)
    defining = {"checkpoint": ckpt.id, "samples": samples, "seed": seed, "sampler": asdict(settings), "prob": prob}
    names = {"checkpoint": "--checkpoint", "samples": "--samples", "seed": "--seed", "sampler": "--sampler/--steps/--guidance/--count-tries/--mask-threshold", "prob": "--prob"}
    started = init_distributed_from_env()
    try:
        prog, update = _progress("sampling patients")
        lock = output_lock(out, wait=wait, clean=_world() == 1) if _rank0() else _Null()
        with lock, store_run(out, defining, names, overwrite=overwrite and _rank0()), prog if _rank0() else _Null():
            store = forecast_cohort(cohort, ckpt, out, samples=samples, arms=arms, settings=settings, batch_size=batch_size,
                                    seed=seed, blend=blend or (), save_prob=prob,
                                    patients=[p.strip() for p in patients.split(",") if p.strip()] if patients else None, device=device, progress=update if _rank0() else None,
                                    deterministic=deterministic, max_rows=max_rows)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if store is not None:
        typer.echo(f"{len(store)} blocks ({len(store.patients)} patients x {len(store.arms)} arms, {samples} samples each) in {out}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    cohort: Annotated[Path, typer.Argument(help="Cohort with observed follow-up NET2 masks.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for forecasts/, evaluation.csv, summary.json.")],
    split: Annotated[str, typer.Option(help="validation (the checkpoint's held-out patients) | test (patients it never saw) | all")] = "validation",
    samples: Annotated[int, typer.Option(help="Ensemble members per patient and arm.")] = 10,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the config's).")] = None,
    arms: Annotated[str, typer.Option(help="'all' (every arm: counterfactual ratios), 'allocated' (skill only), or a comma-separated list.")] = "all",
    tune_on: Annotated[Optional[Path], typer.Option("--tune-on", help="Validation cohort: choose the sampler settings there on observed counts only (fair CRPS), then report once.")] = None,
    tune_guidance: Annotated[Optional[str], typer.Option(help="Guidance values to try, e.g. 1,2,3 (default: the config's).")] = None,
    tune_steps: Annotated[Optional[str], typer.Option(help="Sampling steps to try, e.g. 6,12 (default: --steps or the config's).")] = None,
    tune_count_tries: Annotated[Optional[str], typer.Option(help="Count-conditioned checkpoints: --count-tries values to try, e.g. 1,4 (default: the config's).")] = None,
    tune_sampler: Annotated[Optional[str], typer.Option(help="Samplers to try, e.g. ddim,ddpm (default: the config's).")] = None,
    tune_thresholds: Annotated[Optional[str], typer.Option(help="Mask thresholds to try after the sampler is chosen, e.g. 0.5,0.7,0.9: lowest fair CRPS of the NET2 volume against the observed (default: the config's).")] = None,
    tune_samples: Annotated[int, typer.Option(help="Ensemble members per validation patient while tuning.")] = 12,
    baseline_cohort: Annotated[Optional[Path], typer.Option(help="Training trial for the NB2 baseline (default: this cohort's training patients).")] = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Also write the tuning choice into the checkpoint folder (tuning.json).")] = True,
    batch_size: Annotated[int, typer.Option(help="Network batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another mseval run is writing OUT, wait for it instead of stopping.")] = False,
) -> None:
    """Sample a split of patients and score the forecasts against what was observed, beside the true-law
    oracle, the observable oracle and the NB2 baseline (settings tuned on validation data with --tune-on)."""
    from forecast.evaluate import evaluate_checkpoint, parse_grid
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.io.lock import output_lock

    check_min(samples, "--samples", 1)
    check_min(steps, "--steps", 1)
    check_min(batch_size, "--batch-size", 1)
    check_out_folder(out)

    with output_lock(out, wait=wait):
        summary = evaluate_checkpoint(checkpoint, cohort, out, split=split, samples=samples, steps=steps, batch_size=batch_size,
                                      seed=seed, device=device, arms=arms, tune_cohort=tune_on,
                                      tune_guidance=parse_grid(tune_guidance, float, None) if tune_guidance else None,
                                      tune_steps=parse_grid(tune_steps, int, None) if tune_steps else None,
                                      tune_count_tries=parse_grid(tune_count_tries, int, None) if tune_count_tries else None,
                                      tune_samplers=parse_grid(tune_sampler, str, None) if tune_sampler else None,
                                      tune_thresholds=parse_grid(tune_thresholds, float, None) if tune_thresholds else None,
                                      tune_samples=tune_samples, baseline_cohort=baseline_cohort, record_in_checkpoint=record)
    for k, v in summary.items():
        if isinstance(v, (int, float, str)):
            typer.echo(f"{k:32s} {v}")
    for name, r in (summary.get("references") or {}).items():
        typer.echo(f"reference {name:22s} " + (f"exact CRPS {r['crps_count']:.3f}  AUC {r['auc_p_active']:.3f}" if r.get("estimable") else r["note"]))
    fid = summary.get("count_fidelity")
    if fid:
        typer.echo(f"count fidelity                   {fid['exact_share']:.3f} of {fid['samples']} samples hold exactly the requested lesion count "
                   f"(within one: {fid['within_one_share']:.3f}; mean drawn {fid['mean_drawn']:.2f} vs requested {fid['mean_requested']:.2f})")


@app.command()
def plan(
    config: Annotated[str, typer.Option("--config", help="Config JSON file, or a shipped config name: tiny, paper.")] = "paper",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training micro-batch per device (default: the config's batch_size / grad_accumulation).")] = None,
    sample_members: Annotated[int, typer.Option("--sample-members", help="Ensemble members per sampling call (each with its guidance pair).")] = 8,
    gpu_memory: Annotated[Optional[float], typer.Option("--gpu-memory", help="Device memory in GiB: also report what fits and the largest batches.")] = None,
    headroom: Annotated[float, typer.Option(help="Share of --gpu-memory kept free for the CUDA context, cuDNN workspaces, fragmentation.")] = 0.1,
    fp32: Annotated[bool, typer.Option("--fp32", help="Plan without bf16 autocast.")] = False,
    model: Annotated[str, typer.Option("--model", help="diffusion (the config's network) or image-count (the image forecaster's count and centre model, make checkpoint's recipe, on the config's grid; fp32; --batch-size patients, default 16).")] = "diffusion",
) -> None:
    """Parameters, FLOPs per network call and peak memory of training and sampling, computed on fake
    tensors (no GPU needed); with --gpu-memory, the largest batches that fit."""
    from forecast.config import ForecastConfig
    from forecast.planner import plan as make_plan
    from mseval.errors import InputError

    if batch_size is not None and batch_size < 1:
        raise InputError(None, "--batch-size must be at least 1", field="batch_size")
    if sample_members < 1:
        raise InputError(None, "--sample-members must be at least 1", field="sample_members")
    if gpu_memory is not None and gpu_memory <= 0:
        raise InputError(None, "--gpu-memory must be positive (GiB)", field="gpu_memory")
    if not 0 <= headroom < 1:
        raise InputError(None, "--headroom must lie in [0, 1)", field="headroom")
    if model not in ("diffusion", "image-count"):
        raise InputError(None, f"--model {model!r}: choose diffusion or image-count", field="model")
    cfg = ForecastConfig.load(config)
    if model == "image-count":
        from forecast.image_count_planner import plan_image_count

        typer.echo(plan_image_count(cfg.shape, batch=batch_size or 16, gpu_gib=gpu_memory, headroom=headroom).summary())
        return
    result = make_plan(cfg, batch_size=batch_size, sample_members=sample_members, gpu_gib=gpu_memory, headroom=headroom, bf16=not fp32)
    typer.echo(result.summary())


def main(argv: list[str] | None = None) -> int:
    """Run this sub-app on its own (`python -m mseval.commands.forecast`), with mseval's error handling."""
    from mseval.cli import run_typer

    return run_typer(app, argv, "mseval forecast")


from mseval.commands.forecast_import import forecast_export, forecast_import  # noqa: E402 - light: nibabel is imported inside

app.command("import")(forecast_import)
app.command("export")(forecast_export)

from mseval.commands.forecast_image import image_laws, image_render, image_sample, image_train  # noqa: E402 - light: torch is imported inside

app.command("image-train")(image_train)
app.command("image-laws")(image_laws)
app.command("image-sample")(image_sample)
app.command("image-render")(image_render)


if __name__ == "__main__":
    raise SystemExit(main())
