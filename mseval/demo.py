"""`mseval demo`: the whole pipeline on a small synthetic six-arm trial, on the CPU, in minutes.

simulate -> forecast (the shipped image forecaster, the oracle, or the diffusion model alone) -> count -> evaluate ->
effects -> report. Writes `out/cohort`, `out/forecasts`, `out/report` (report.html inside) and `out/demo.json`.

The image forecaster (default, `forecaster="image"`): the shipped `forecast/checkpoints/image_count` reads each
patient's baseline images (N4 + WhiteStripe) and draws coherent W24/W48/W96 lesion trajectories under every arm
(`out/trajectories`), the shipped decoder `tiny_centre` renders them into masks at the threshold chosen for them on a
validation trial (`out/forecasts/<visit>/`, one forecast store per visit), and the report evaluates the last visit's
store against the observed cumulative NET2 masks. Both checkpoints were trained and tuned on other simulated trials.

The diffusion model is trained on one simulated trial (`out/train_cohort`, seed `seed`) and
evaluated on a second trial from the same simulator (`out/cohort`, seed `seed + 1`), so every
forecast-based number in the report is held-out; the report says so (`mseval.provenance`).
Training runs a fixed number of steps by default (`train_steps`), so the same seed and thread
count give the same model on any machine; `minutes` instead bounds it by wall-clock time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mseval.errors import InputError
from mseval.io.atomic import write_json_atomic

DEMO_PARTS = ("cohort", "train_cohort", "trajectories", "forecasts", "report", "checkpoint", "demo.json")
FORECASTERS = ("image", "diffusion", "oracle")

DEFAULTS: dict[str, dict[str, Any]] = {
    # The image forecaster: 48 patients read with N4 (about a minute on two cores), 48 x 6 x 2 trajectories rendered
    # by the decoder, a patient's arms in one batch (DDIM-6); 3 min 54 s in all on two cores (2026-12-08).
    "image": {"patients_per_arm": 8, "samples": 2, "shape": (32, 32, 32)},
    # The diffusion demo fits in 10 minutes on two CPU cores: DEFAULT_TRAIN_STEPS steps of training
    # (about 4 minutes) on one trial, then every patient of a second trial under every arm
    # (48 x 6 x 2 samples, DDIM-6 at guidance 1: ~3,500 network calls).
    "diffusion": {"patients_per_arm": 8, "samples": 2, "shape": (32, 32, 32)},
    # The oracle (the simulator's true law) costs nothing to sample: a larger trial at a larger size.
    "oracle": {"patients_per_arm": 20, "samples": 20, "shape": (64, 76, 64)},
}
"""Per-forecaster defaults of `run_demo` (and `mseval demo`) where the caller gives none."""

DEMO_GUIDANCE = 1.0
"""Classifier-free guidance scale of the demo's sampling (1 = conditional model, no extrapolation)."""

DEFAULT_TRAIN_STEPS = 300
"""Training steps of the diffusion demo (337-359 steps fitted in 3 minutes on two cores)."""

Stage = Callable[[str], Callable[[int, int], None]]
"""stage(description) -> update(done, total): opens a progress bar for one stage."""


class _TimeUp(KeyboardInterrupt):
    """Raised from the training hook when the time budget is spent (training then checkpoints)."""


def _diffusion_forecasts(
    train_cohort: Path, cohort: Path, out: Path, samples: int, seed: int, minutes: float | None, *, checkpoint: Path, config: str = "tiny",
    sample_steps: int = 10, threads: int = 2, say: Callable[[str], None] = lambda _m: None, stage: Stage | None = None,
    train_steps: int | None = None,
) -> dict[str, Any]:
    """Train the diffusion model (`config`) on `train_cohort` for exactly `train_steps` steps (or,
    with `train_steps` None, for at most `minutes`), then sample every patient of `cohort` under
    every arm into the forecast store `out` (DDIM with `sample_steps` steps, guidance DEMO_GUIDANCE = 1:
    the plain conditional model; the configs' guidance 3 was chosen by reading rate ratios against the
    simulator's truth, which a demo must not inherit, and a guidance scale is only to be tuned on
    validation data with observed outcomes: `mseval forecast evaluate --tune-on`).
    Returns the training summary (steps, minutes, last loss, threads, device)."""
    import torch

    from forecast.checkpoint import load_checkpoint
    from forecast.config import ForecastConfig
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings
    from forecast.train import train

    torch.set_num_threads(max(threads, 1))
    cfg = ForecastConfig.load(config).with_(seed=seed, steps=train_steps or 10**7)
    t_start = time.monotonic()
    minutes = float(minutes or 0.0)
    deadline = t_start + minutes * 60.0
    update = stage("training (time-bounded)" if train_steps is None else "training") if stage else None
    last = {"step": 0, "loss": float("nan")}

    def hook(step: int, loss: float) -> None:
        last.update(step=step, loss=loss)
        if train_steps is not None:
            if update:
                update(step, train_steps)
            return
        if update:
            update(int(min(minutes * 60, minutes * 60 - (deadline - time.monotonic()))), int(minutes * 60))
        if time.monotonic() >= deadline:
            raise _TimeUp

    try:
        train(train_cohort, cfg, checkpoint, device="cpu", on_step=hook)
    except _TimeUp:
        pass
    ckpt = load_checkpoint(checkpoint)
    elapsed_min = (time.monotonic() - t_start) / 60.0
    say(f"    trained {ckpt.step} steps in {elapsed_min:.1f} min (last loss {last['loss']:.4f}); sampling {samples} per patient and arm, DDIM-{sample_steps}")
    forecast_cohort(cohort, ckpt, out, samples=samples, settings=SamplerSettings("ddim", sample_steps, guidance=DEMO_GUIDANCE),
                    batch_size=8, seed=seed, device="cpu", progress=stage("sampling patients (every arm)") if stage else None)
    return {"config": config, "steps": ckpt.step, "minutes": round(elapsed_min, 2), "last_loss": last["loss"], "sample_steps": sample_steps, "guidance": DEMO_GUIDANCE,
            "threads": torch.get_num_threads(), "device": "cpu", "budget": "steps" if train_steps is not None else "minutes"}


def _shipped_forecasts(cohort: Path, out: Path, samples: int, seed: int, *, checkpoint: Path, threads: int = 2,
                       say: Callable[[str], None] = lambda _m: None, stage: Stage | None = None) -> dict[str, Any]:
    """Sample every patient of `cohort` under every arm with a trained checkpoint (the shipped one by
    default), at the sampler settings its config holds (for the shipped checkpoint: chosen on a
    validation trial, `forecast.release`). Returns the summary the report and demo.json show."""
    import torch

    from forecast.checkpoint import load_checkpoint
    from forecast.ensemble import forecast_cohort

    torch.set_num_threads(max(threads, 1))
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    say(f"    checkpoint {ckpt.id} ({checkpoint}); sampling {samples} per patient and arm, {cfg.sampler.upper()}-{cfg.sample_steps}, "
        f"guidance {cfg.guidance:g}")
    forecast_cohort(cohort, ckpt, out, samples=samples, batch_size=8, seed=seed, device="cpu",
                    progress=stage("sampling patients (every arm)") if stage else None)
    prov = ckpt.provenance
    return {"config": cfg.name, "checkpoint": str(checkpoint), "checkpoint_id": ckpt.id, "steps": ckpt.step, "sample_steps": cfg.sample_steps,
            "guidance": cfg.guidance, "threads": torch.get_num_threads(), "device": "cpu", "budget": "shipped",
            "trained_on": prov.get("trained_on", f"{len(ckpt.train_ids)} patients"),
            "tuned_on": (prov.get("tuned_on") or {}).get("cohort", "not tuned")}


def _image_renderer(forecaster: Path) -> tuple[dict[str, Any], Path, Any]:
    """(render settings, decoder folder, decoder) of an image forecaster, or InputError: no render.json (a bare
    `image-train` folder), or a shipped decoder other than the one its threshold was tuned with."""
    from forecast.checkpoint import load_checkpoint
    from forecast.image_release import read_render_settings
    from forecast.release import SHIPPED_CHECKPOINT

    tuned = read_render_settings(forecaster)
    if tuned is None:
        raise InputError(forecaster, "the image forecaster has no render.json (its decoder threshold, tuned on validation): build it with `make checkpoint`")
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
    if str(tuned["renderer"]) != ckpt.id:
        raise InputError(SHIPPED_CHECKPOINT, f"the forecaster's render settings were tuned for decoder {tuned['renderer']}, the shipped decoder is "
                         f"{ckpt.id}: rebuild both with `make checkpoint`", field="renderer")
    return tuned, SHIPPED_CHECKPOINT, ckpt


def _image_forecasts(cohort: Path, trajectories: Path, forecasts: Path, samples: int, seed: int, *, forecaster: Path, workers: int = 2,
                     say: Callable[[str], None] = lambda _m: None, stage: Stage | None = None) -> dict[str, Any]:
    """Every patient of `cohort` under every arm with the shipped image forecaster: `samples` coherent trajectories each
    (`trajectories`/counts.csv, lesions.csv), rendered by the decoder it was tuned with, at its tuned threshold and labels
    (`forecasts`/<visit>/). Returns the summary the report and demo.json show (`store`: the last visit's store)."""
    import torch

    from forecast.image_count import describe
    from forecast.image_count_checkpoint import load_image_count
    from forecast.image_count_pipeline import forecast_trajectories, write_trajectories
    from forecast.image_count_render import render_trajectories

    torch.set_num_threads(max(workers, 1))
    _, meta, digest = load_image_count(forecaster)
    tuned, renderer, ckpt = _image_renderer(forecaster)
    say(f"    image forecaster {digest[:12]} ({forecaster}): {describe(meta.net)}")
    counts, lesions = forecast_trajectories(cohort, forecaster, samples=samples, seed=seed, workers=workers,
                                            progress=stage("reading and sampling patients (every arm)") if stage else None)
    write_trajectories(trajectories, counts, lesions, forecaster)
    say(f"    decoder {ckpt.id} renders {len(lesions)} lesions at threshold {tuned['mask_threshold']:g} (chosen on {tuned['tuned_on']['cohort']})")
    render_trajectories(cohort, trajectories, renderer, forecasts, tuned=tuned, device="cpu",
                        progress=stage("rendering masks (every arm)") if stage else None)
    return {"config": "image_count", "checkpoint": str(forecaster), "checkpoint_id": digest[:12], "renderer": ckpt.id,
            "mask_threshold": float(tuned["mask_threshold"]), "labels": tuned["labels"], "description": tuned.get("description", describe(meta.net)),
            "threads": torch.get_num_threads(), "device": "cpu", "budget": "shipped", "trained_on": tuned.get("trained_on", ""),
            "tuned_on": tuned["tuned_on"]["cohort"], "visit": meta.visits[-1], "store": f"forecasts/{meta.visits[-1]}"}


def _prepare(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_PARTS)
    if foreign:
        raise InputError(out, f"exists and holds files that are not a demo's ({', '.join(foreign[:3])}); choose another --out")
    for name in DEMO_PARTS:  # a previous demo: replace it
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_demo(
    out: str | Path,
    forecaster: str = "image",
    *,
    patients_per_arm: int | None = None,
    shape: tuple[int, int, int] | None = None,
    samples: int | None = None,
    seed: int = 2026,
    workers: int = 2,
    minutes: float | None = None,
    config: str = "tiny_quality",
    sample_steps: int = 6,
    train_steps: int | None = None,
    power_sims: int = 10,
    train: bool = False,
    checkpoint: str | Path | None = None,
    report_settings: Any = None,
    say: Callable[[str], None] | None = None,
    stage: Stage | None = None,
) -> dict[str, Any]:
    """Run the demo into `out` (a previous demo there is replaced); returns timings and paths.

    Image, default: the shipped image forecaster (`forecast/checkpoints/image_count`) samples a trial simulated with
    `seed + 1` and the shipped decoder renders its trajectories (module docstring); `checkpoint` replaces the forecaster.

    Diffusion, default: samples a trial simulated with `seed + 1` with a trained checkpoint
    (`checkpoint`, default the shipped `forecast/checkpoints/tiny_centre`, trained and tuned on other
    simulated trials: `make checkpoint`), at its config's sampler settings.
    Diffusion with `train`: trains `train_steps` steps (default DEFAULT_TRAIN_STEPS; or, given `minutes` and no
    `train_steps`, for that wall-clock budget) on a trial simulated with `seed`, evaluates on a
    second trial simulated with `seed + 1`.

    report_settings: a `reports.builder.ReportSettings` (default: full quality, `workers`, `power_sims`, `seed`, the default
    analysis plan `mseval.sap.default`: the report opens with the plan and its adjusted primary table).
    power_sims: simulated trials per arm of the report's simulated power (10 keeps the demo within 10
    minutes on two cores; `mseval report --power-sims 50` on the demo's folders gives the full figure).
    say(message): progress messages; stage(description) -> update(done, total): progress bars.
    """
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial
    from reports.builder import ReportSettings, build_report

    say = say or (lambda _m: None)
    stage = stage or (lambda _d: (lambda _a, _b: None))
    if forecaster not in FORECASTERS:
        raise InputError(None, f"--forecaster must be one of {', '.join(FORECASTERS)}, got {forecaster!r}", field="forecaster")
    patients_per_arm = DEFAULTS[forecaster]["patients_per_arm"] if patients_per_arm is None else patients_per_arm
    samples = DEFAULTS[forecaster]["samples"] if samples is None else samples
    shape = DEFAULTS[forecaster]["shape"] if shape is None else shape
    if patients_per_arm < 2:
        raise InputError(None, "--patients-per-arm must be at least 2", field="patients_per_arm")
    if samples < 2:
        raise InputError(None, "--samples must be at least 2", field="samples")
    if train_steps is not None and train_steps < 1:
        raise InputError(None, "--train-steps must be at least 1", field="train_steps")
    if minutes is not None and minutes <= 0:
        raise InputError(None, "--minutes must be positive", field="minutes")
    if not train and (train_steps is not None or minutes is not None):
        train = True  # a training budget asks for training
    if forecaster != "diffusion" and train:
        raise InputError(None, "--train / --train-steps / --minutes / --config train the diffusion model: they go with --forecaster diffusion", field="forecaster")
    if checkpoint is not None and train:
        raise InputError(None, "--checkpoint samples a trained model; it does not go with --train / --train-steps / --minutes", field="checkpoint")
    if forecaster == "oracle" and checkpoint is not None:
        raise InputError(None, "--checkpoint names a trained model; the oracle is the simulator's own law", field="checkpoint")
    if forecaster == "image":
        from forecast.image_count_checkpoint import load_image_count
        from forecast.image_release import SHIPPED_IMAGE_CHECKPOINT

        checkpoint = Path(checkpoint) if checkpoint is not None else SHIPPED_IMAGE_CHECKPOINT
        shape = tuple(load_image_count(checkpoint)[1].shape)  # the forecaster's grid; an unusable folder fails here, before any work
        _image_renderer(checkpoint)  # and so do missing render settings or decoder
    if forecaster == "diffusion" and not train:
        from forecast.release import SHIPPED_CHECKPOINT

        checkpoint = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
        if not (checkpoint / "checkpoint.pt").is_file():
            raise InputError(checkpoint, "no checkpoint there: build the shipped one with `make checkpoint`, or pass --train", field="checkpoint")
        from forecast.checkpoint import load_checkpoint

        config = load_checkpoint(checkpoint).config.name
    if train_steps is None and minutes is None:
        train_steps = DEFAULT_TRAIN_STEPS
    out = Path(out)
    _prepare(out)
    out.mkdir(parents=True, exist_ok=True)
    cohort, forecasts, report = out / "cohort", out / "forecasts", out / "report"
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    if forecaster == "diffusion":
        from forecast.config import ForecastConfig

        model_shape = tuple(ForecastConfig.load(config).shape if train else load_checkpoint(checkpoint).config.shape)
        if tuple(shape) != model_shape:
            say(f"    the {config} model works at {model_shape[0]}x{model_shape[1]}x{model_shape[2]}: simulating at that shape")
            shape = model_shape
    eval_seed = seed + 1 if forecaster != "oracle" else seed
    if forecaster == "image":
        say(f"1/3 simulating a six-arm trial the forecaster never saw: {patients_per_arm} patients per arm, "
            f"{shape[0]}x{shape[1]}x{shape[2]} voxels, seed {eval_seed}")
    elif forecaster == "diffusion" and not train:
        say(f"1/3 simulating a six-arm trial the checkpoint never saw: {patients_per_arm} patients per arm, "
            f"{shape[0]}x{shape[1]}x{shape[2]} voxels, seed {eval_seed}")
    elif forecaster == "diffusion":
        say(f"1/3 simulating two six-arm trials from the same simulator: one to train on (seed {seed}), one to evaluate on (seed {eval_seed}); "
            f"{patients_per_arm} patients per arm, {shape[0]}x{shape[1]}x{shape[2]} voxels")
        simulate_trial(out / "train_cohort", TrialConfig(patients_per_arm=patients_per_arm, shape=tuple(shape), seed=seed), workers=workers,
                       progress=stage("simulating the training trial"))
    else:
        say(f"1/3 simulating a six-arm trial: {patients_per_arm} patients per arm, {shape[0]}x{shape[1]}x{shape[2]} voxels, seed {seed}")
    simulate_trial(cohort, TrialConfig(patients_per_arm=patients_per_arm, shape=tuple(shape), seed=eval_seed), workers=workers,
                   progress=stage("simulating the evaluation trial" if forecaster != "oracle" else "simulating patients"))
    times["simulate_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    training: dict[str, Any] | None = None
    store = forecasts
    if forecaster == "image":
        say(f"2/3 image forecaster: {samples} trajectories per patient and arm of the trial, rendered into masks")
        training = _image_forecasts(cohort, out / "trajectories", forecasts, samples, seed, forecaster=Path(checkpoint), workers=workers, say=say,
                                    stage=stage)
        store = out / training["store"]
    elif forecaster == "oracle":
        say(f"2/3 oracle forecasts: every patient under every arm, {samples} samples each")
        simulate_forecasts(cohort, forecasts, ForecasterSpec("oracle", samples=samples, seed=seed), workers=workers,
                           progress=stage("forecasting patients"))
    elif not train:
        say(f"2/3 diffusion model: the trained checkpoint samples {samples} per patient and arm of the trial")
        training = _shipped_forecasts(cohort, forecasts, samples, seed, checkpoint=Path(checkpoint), threads=workers, say=say, stage=stage)
    else:
        budget = f"for at most {minutes:g} min" if train_steps is None else f"for {train_steps} steps"
        say(f"2/3 diffusion model: training {budget} on the training trial, then {samples} samples per patient and arm of the evaluation trial")
        training = _diffusion_forecasts(out / "train_cohort", cohort, forecasts, samples, seed, minutes, checkpoint=out / "checkpoint", config=config,
                                        sample_steps=sample_steps, threads=workers, say=say, stage=stage, train_steps=train_steps)
    times["forecast_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("3/3 counting lesions, evaluating, estimating effects, writing the report")
    extra: tuple[tuple[str, str], ...] = ()
    if forecaster == "image" and training is not None:
        extra = (("Model (demo)", f"{training['description']}; forecaster {training['checkpoint_id']} trained on {training['trained_on']}; decoder "
                                  f"threshold {training['mask_threshold']:g} and labels {training['labels']} chosen on {training['tuned_on']} (observed "
                                  f"outcomes only); evaluated at {training['visit']} on this trial (cohort, seed {eval_seed}), which neither model saw; "
                                  f"torch threads {training['threads']}, device {training['device']}"),)
    elif training is not None and training["budget"] == "shipped":
        extra = (("Model (demo)", f"checkpoint {training['checkpoint_id']} ({training['config']}, {training['steps']} steps), trained on "
                                  f"{training['trained_on']}; sampler settings chosen on {training['tuned_on']} (observed counts only); "
                                  f"evaluated on this trial (cohort, seed {eval_seed}), which it never saw; torch threads {training['threads']}, "
                                  f"device {training['device']}"),)
    elif training is not None:
        how = (f"{training['steps']} steps (fixed budget)" if training["budget"] == "steps"
               else f"{training['steps']} steps in a {minutes:g}-minute wall-clock budget (the step count depends on the machine)")
        extra = (("Training (demo)", f"model {training['config']} trained {how} on a separate simulated trial (train_cohort, seed {seed}; "
                                     f"{patients_per_arm} patients per arm); evaluated on this trial (cohort, seed {eval_seed}), which it never saw; "
                                     f"last loss {training['last_loss']:.4f}; torch threads {training['threads']}, device {training['device']}"),)
    build_report(cohort, store, report, title=f"mseval demo: six-arm synthetic RRMS trial ({forecaster} forecasts)",
                 settings=report_settings or ReportSettings(workers=workers, power_sims=power_sims, seed=seed, sap="default"), progress=lambda m: say(f"    {m}"),
                 extra_settings=extra)
    times["report_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    info = {"forecaster": forecaster, "patients_per_arm": patients_per_arm, "shape": list(shape), "samples": samples, "seed": seed,
            "evaluation_seed": eval_seed, "workers": workers, "cohort": "cohort",
            "train_cohort": "train_cohort" if forecaster == "diffusion" and train else None, "forecasts": str(store.relative_to(out)),
            "trajectories": "trajectories" if forecaster == "image" else None, "report": "report/report.html", "training": training,
            "timings_s": {k: round(v, 1) for k, v in times.items()}}
    write_json_atomic(info, out / "demo.json")
    return {**info, "report_html": report / "report.html"}
