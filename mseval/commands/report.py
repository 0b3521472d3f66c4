"""`mseval report` and `mseval demo`: trial-style reports, and the whole pipeline on a small trial."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    cohort: Path = typer.Argument(..., help="Cohort folder (manifest.csv, arms.csv, observed net2_mask files; truth.csv if simulated). Without any net2_mask (baseline scans only): a forecast-only report."),
    forecasts: Path = typer.Argument(..., help="Forecast store holding every patient under every arm."),
    out: Path = typer.Option(..., "--out", help="Report folder to create (report.html, report.md, figures/, tables/, summary.json)."),
    title: str = typer.Option("NET2 lesion forecasts: trial report", help="Title of the report."),
    evaluation: Optional[Path] = typer.Option(None, help="Use this `mseval evaluate` folder instead of evaluating here."),
    effects: Optional[Path] = typer.Option(None, help="Use this `mseval effects` folder instead of estimating here."),
    connectivity: int = typer.Option(26, help="Lesion connectivity: 6, 18 or 26."),
    min_volume_mm3: float = typer.Option(3.0, help="Drop components under this volume (mm^3, inclusive bound)."),
    detection_preset: Optional[str] = typer.Option(None, help="Detection rule preset (msseg2, shifts, brats2023, isles22, panoptica)."),
    formula: str = typer.Option("net2 ~ arm", help="NB2 model formula for the effects."),
    power_sims: Optional[int] = typer.Option(None, help="Simulated trials per arm for the simulated power (default: as recorded in --effects, else 50)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the bootstrap, randomized PIT and power simulations (default: as recorded in --effects / --evaluation, else 0)."),
    n_boot: Optional[int] = typer.Option(None, help="Bootstrap resamples of the evaluation (default: as recorded in --evaluation, else 1000)."),
    workers: int = typer.Option(1, help="Processes for counting lesions."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists (only once the new report is complete)."),
    wait: bool = typer.Option(False, "--wait", help="If another mseval run is writing OUT, wait for it instead of stopping."),
    figure_formats: str = typer.Option("pdf,png", "--figure-formats", help="Comma-separated formats of the files in figures/ "
                                       "(pdf, png, svg; at --figure-dpi). The HTML page embeds its own PNGs either way."),
    figure_dpi: int = typer.Option(300, "--figure-dpi", help="Resolution of the raster files in figures/ (300 for print; less for drafts)."),
    observed_bootstrap: int = typer.Option(999, "--observed-bootstrap", help="Resamples of the studentized bootstrap behind the observed "
                                           "rate ratio interval of the effects computed here (as `mseval effects --observed-bootstrap`)."),
    sap: Optional[str] = typer.Option(None, "--sap", help="Analysis plan (SAP file or 'default') for the effects computed here; the report "
                                      "then opens with the plan, its deviations and the adjusted primary table. An --effects folder run "
                                      "with --sap brings its own plan."),
) -> None:
    """Write a self-contained trial report: settings, Table 1, rate ratios (observed, forecast,
    counterfactual), lesion-free proportions, activity, calibration, detection, responders,
    prognostic adjustment, power, example slices. A cohort with baseline scans only gets a forecast-only
    report (forecast counts per arm, counterfactual effects, and what needs follow-up)."""
    from mseval.commands._checks import OBSERVED_COLUMNS, check_conn, check_formula_syntax, check_min, check_out_folder
    from mseval.commands._common import quiet_numerics
    from mseval.errors import InputError
    from mseval.io.cohort import read_cohort
    from mseval.io.lock import output_lock
    from mseval.io.store import ForecastStore
    from reports.builder import ReportSettings, build_report, check_store_covers_cohort
    from reports.forecast_only import followup_mode
    from reports.recorded import resolve_run_settings

    check_conn(connectivity)
    check_min(min_volume_mm3, "--min-volume-mm3", 0)
    check_min(power_sims, "--power-sims", 0)
    check_min(n_boot, "--n-boot", 1)
    check_min(workers, "--workers", 1)
    check_min(figure_dpi, "--figure-dpi", 50)
    check_min(observed_bootstrap, "--observed-bootstrap", 99)
    formats = tuple(f.strip().lower() for f in figure_formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("pdf", "png", "svg")]
    if not formats or unknown or len(set(formats)) != len(formats):
        raise InputError(None, f"--figure-formats must list distinct formats among pdf, png, svg (comma-separated), got {figure_formats!r}")
    check_out_folder(out)
    if out.exists() and not overwrite:
        raise InputError(out, "exists already; remove it, choose another --out, or pass --overwrite")
    for option, folder in (("--evaluation", evaluation), ("--effects", effects)):
        if folder is not None and not folder.is_dir():
            raise InputError(folder, f"{option} must be a folder written by `mseval {option[2:]}`")
    run, sources = resolve_run_settings(seed, power_sims, n_boot, evaluation, effects)  # never silently another seed than the folders used
    c = read_cohort(cohort)  # every input checked before the first progress line
    check_formula_syntax(formula, [*c.manifest.columns, *OBSERVED_COLUMNS], c.root / "manifest.csv")
    check_store_covers_cohort(c, ForecastStore.open(forecasts), forecasts)
    mode = followup_mode(c, evaluation, effects)  # a cohort with follow-up for some patients only, refused before any counting work
    settings = ReportSettings(connectivity=connectivity, min_volume_mm3=min_volume_mm3, detection_preset=detection_preset, formula=formula,
                              power_sims=run["power_sims"], seed=run["seed"], n_boot=run["n_boot"], workers=workers, sap=sap,
                              figure_formats=formats, figure_dpi=figure_dpi, observed_bootstrap=observed_bootstrap)
    for line in sources if mode == "trial" else ():  # a forecast-only report draws nothing at random
        typer.echo(f"... {line}", err=True)
    with output_lock(out, wait=wait), quiet_numerics(lambda m: typer.echo(f"... {m}", err=True)):
        rep = build_report(cohort, forecasts, out, title=title, evaluation_dir=evaluation, effects_dir=effects, settings=settings,
                           overwrite=overwrite, progress=lambda m: typer.echo(f"... {m}", err=True),
                           extra_settings=(("Seed, power simulations, bootstrap", "; ".join(sources)),) if mode == "trial" else ())
    typer.echo(f"report: {rep.html}")


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for cohort/, forecasts/, report/ (a previous demo there is replaced)."),
    forecaster: Optional[str] = typer.Option(None, help="(default: image; diffusion with --train, --train-steps, --minutes or --config) image (the shipped image forecaster forecast/checkpoints/image_count samples lesion trajectories from each patient's images and the shipped decoder renders them) | diffusion (the decoder tiny_centre with its own count law; --train trains one first) | oracle (the simulator's true law: a larger trial)."),
    train: bool = typer.Option(False, "--train", help="Diffusion: train a model from scratch on one simulated trial (--config, --train-steps) instead of the shipped checkpoint."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Sample with this checkpoint folder instead of the shipped one (image: forecast/checkpoints/image_count; diffusion: forecast/checkpoints/tiny_centre)."),
    patients_per_arm: Optional[int] = typer.Option(None, help="Patients randomized to each of the six arms (default 8 for image and diffusion, 20 for oracle)."),
    samples: Optional[int] = typer.Option(None, help="Forecast samples per patient and arm (default 2 for image and diffusion, 20 for oracle)."),
    seed: int = typer.Option(2026, help="Seed of the trial, the training and the forecasts."),
    workers: int = typer.Option(2, help="Processes (and torch threads for the diffusion model)."),
    minutes: Optional[float] = typer.Option(None, help="Train for this wall-clock budget (minutes) instead of --train-steps (results then depend on the machine's speed)."),
    config: Optional[str] = typer.Option(None, help="Train this diffusion model config (tiny_quality, tiny_centre, tiny_count, tiny or a JSON file; implies --train; default with --train: tiny_quality)."),
    sample_steps: int = typer.Option(6, help="DDIM steps per sample for the diffusion model."),
    train_steps: Optional[int] = typer.Option(None, help="With --train: training steps of the diffusion model (default 300, about 5 minutes on two cores; identical numbers need the same seed, --workers and CPU type)."),
) -> None:
    """Simulate a small six-arm trial, forecast every patient under every arm with the shipped
    image forecaster (its trajectories rendered into masks by the shipped decoder; both trained and tuned on
    other simulated trials), or the decoder's own count law (--forecaster diffusion; --train trains one from
    scratch on a separate trial first), or the oracle; count, evaluate, estimate effects and write the report;
    prints where the report is. Under 10 minutes on two CPU cores."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mseval.commands._checks import check_min, check_out_folder
    from mseval.commands._common import quiet_numerics
    from mseval.io.lock import output_lock
    from mseval.demo import run_demo

    check_min(minutes, "--minutes", 0, strict=True)
    check_min(workers, "--workers", 1)
    check_min(sample_steps, "--sample-steps", 1)
    check_min(train_steps, "--train-steps", 1)
    check_min(samples, "--samples", 1)
    check_min(patients_per_arm, "--patients-per-arm", 1)
    check_out_folder(out)
    train = train or train_steps is not None or minutes is not None or config is not None
    config = config or "tiny_quality"
    forecaster = forecaster or ("diffusion" if train else "image")
    if forecaster not in ("image", "diffusion", "oracle"):
        from mseval.errors import InputError

        raise InputError(None, f"--forecaster must be one of image, diffusion, oracle, got {forecaster!r}", field="forecaster")
    if forecaster != "diffusion" and train:
        from mseval.errors import InputError

        raise InputError(None, "--train / --train-steps / --minutes / --config train the diffusion model: they go with --forecaster diffusion",
                         field="forecaster")
    if forecaster == "image":
        from forecast.image_count_checkpoint import load_image_count
        from forecast.image_release import SHIPPED_IMAGE_CHECKPOINT

        load_image_count(checkpoint or SHIPPED_IMAGE_CHECKPOINT)
    if forecaster == "diffusion" and train:  # a config that does not exist fails here, before the output folder is made
        from forecast.config import ForecastConfig

        ForecastConfig.load(config)
    if forecaster == "diffusion" and not train:
        from forecast.checkpoint import load_checkpoint
        from forecast.release import SHIPPED_CHECKPOINT

        load_checkpoint(checkpoint or SHIPPED_CHECKPOINT)

    console = Console(stderr=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", highlight=False)

    prog = Progress(TextColumn("    [bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)

    def stage(description: str):  # noqa: ANN202
        task = prog.add_task(description, total=None)
        return lambda done, total: prog.update(task, completed=done, total=total)

    with output_lock(out, wait=False), quiet_numerics(say), prog:
        info = run_demo(out, forecaster, patients_per_arm=patients_per_arm, samples=samples, seed=seed, workers=workers, minutes=minutes,
                        config=config, sample_steps=sample_steps, train_steps=train_steps, train=train, checkpoint=checkpoint, say=say, stage=stage)
    say(f"done in {info['timings_s']['total_s']:.0f} s")
    typer.echo(f"Report: {info['report_html']}")
    typer.echo(f"Open it in a browser, e.g. file://{Path(info['report_html']).resolve()}")
