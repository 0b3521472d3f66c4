"""The `mseval` command line. Thin: parse, validate, call, print.

Bad input raises `InputError` anywhere below; `main` turns it into one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from mseval import __version__
from mseval.errors import InputError

app = typer.Typer(
    name="mseval",
    help="Forecast MS NET2 lesion masks and turn the forecasts into trial-grade statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mseval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """mseval: forecast NET2 lesion masks and analyse them like a trial."""


def _progress(description: str):  # noqa: ANN202 - returns a (context manager, callback) pair
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        transient=False,
    )
    task = prog.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Cohort folder to create.")],
    patients_per_arm: Annotated[int, typer.Option(help="Patients randomized to each arm.")] = 20,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape X Y Z (voxels), 16..182 each.")] = (64, 76, 64),
    spacing: Annotated[Optional[tuple[float, float, float]], typer.Option(help="Voxel size X Y Z in mm (default: the 182x218x182 mm MNI field of view).")] = None,
    followup_weeks: Annotated[float, typer.Option(help="Scheduled follow-up visit (weeks); visits vary by +/- 2 weeks.")] = 48.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives a byte-identical cohort.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Simulate a six-arm RRMS trial with known truth (images, lesion masks, truth.csv)."""
    from mseval.io.cohort import read_cohort
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.summary import trial_summary
    from mseval.simulate.trial import simulate_trial

    if patients_per_arm < 1:
        raise InputError(None, "--patients-per-arm must be at least 1", field="patients_per_arm")
    if not all(16 <= s <= 512 for s in shape):
        raise InputError(None, f"--shape {shape}: each axis must be between 16 and 512 voxels", field="shape")
    if spacing is not None and not all(s > 0 for s in spacing):
        raise InputError(None, f"--spacing {spacing}: must be positive", field="spacing")
    if followup_weeks <= 0:
        raise InputError(None, "--followup-weeks must be positive", field="followup_weeks")
    cfg = TrialConfig(patients_per_arm=patients_per_arm, shape=tuple(shape), spacing=spacing, seed=seed, followup_weeks=followup_weeks)
    prog, update = _progress("simulating patients")
    with prog:
        simulate_trial(out, cfg, workers=workers, overwrite=overwrite, progress=update)
    _print_summary(trial_summary(read_cohort(out)), f"Simulated trial in {out}")


def _print_summary(df, title: str) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption="NET2: new/enlarging T2 lesions at follow-up; RR: rate ratio vs the reference arm")
    names = {
        "label": "Arm", "patients": "N", "age_mean": "Age", "female_pct": "Female %", "gd_mean": "Gd+ lesions",
        "true_expected_mean": "True NET2", "observed_mean": "Observed NET2", "active_pct": "Active %",
        "true_rate_ratio": "True RR",
    }
    cols = [c for c in names if c in df.columns]
    for c in cols:
        table.add_column(names[c], justify="left" if c == "label" else "right")
    for rec in df.to_dict("records"):
        table.add_row(*[str(rec[c]) if isinstance(rec[c], (str, int)) else f"{rec[c]:.2f}" for c in cols])
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)


@app.command("simulate-forecasts")
def simulate_forecasts_cmd(
    cohort: Annotated[Path, typer.Argument(help="A cohort made by `mseval simulate`.")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder (created, or resumed).")],
    samples: Annotated[int, typer.Option(help="Ensemble members per patient and arm.")] = 20,
    kind: Annotated[str, typer.Option(help="oracle | overdispersed | biased")] = "oracle",
    arms: Annotated[str, typer.Option(help="'all' or a comma-separated list of arms.")] = "all",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
) -> None:
    """Write a forecast store drawn from the simulator's true (or a deliberately wrong) law."""
    from mseval.simulate.forecasters import ForecasterSpec, simulate_forecasts

    spec = ForecasterSpec(kind=kind, samples=samples, seed=seed)
    arm_list = None if arms == "all" else [a.strip() for a in arms.split(",") if a.strip()]
    prog, update = _progress(f"{kind} forecasts")
    with prog:
        store = simulate_forecasts(cohort, out, spec, arms=arm_list, workers=workers, progress=update)
    typer.echo(f"{len(store)} blocks ({len(store.patients)} patients x {len(store.arms)} arms, {samples} samples each) in {out}")


@app.command()
def validate(cohort: Annotated[Path, typer.Argument(help="Cohort folder (manifest.csv, arms.csv).")],
             images: Annotated[bool, typer.Option(help="Also load and check every image.")] = True) -> None:
    """Check a cohort: tables against their schemas, files present, and (default) every image."""
    from mseval.io.cohort import read_cohort

    c = read_cohort(cohort)
    if images:
        for pid in c.patient_ids:
            c.load_patient(pid)
    typer.echo(f"{cohort}: OK ({len(c.manifest)} patients, {len(c.arms)} arms, reference {c.reference_arm!r}"
               f"{', with truth' if c.truth is not None else ''})")


Connectivity = Annotated[int, typer.Option(help="Lesion connectivity: 6, 18 or 26.")]
MinVolume = Annotated[float, typer.Option(help="Drop components under this volume (mm^3, inclusive bound).")]


def _check_conn(connectivity: int) -> None:
    if connectivity not in (6, 18, 26):
        raise InputError(None, f"--connectivity must be 6, 18 or 26, got {connectivity}", field="connectivity")


@app.command()
def count(
    forecasts: Annotated[Path, typer.Argument(help="Forecast store folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for counts.parquet and lesions.parquet.")],
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
    min_voxels: Annotated[Optional[int], typer.Option(help="Size filter in voxels instead of mm^3.")] = None,
    workers: Annotated[int, typer.Option(help="Local processes (results do not depend on it).")] = 1,
    dask_scheduler: Annotated[Optional[str], typer.Option(help="Address of a Dask scheduler, e.g. tcp://host:8786.")] = None,
) -> None:
    """Count the lesions of every forecast sample: counts.parquet (patient, arm, sample, count,
    volume_mm3) and lesions.parquet (one row per lesion). Resumes an interrupted run."""
    from mseval.lesions.ensemble import CountSettings, count_store

    _check_conn(connectivity)
    settings = CountSettings(connectivity=connectivity, min_volume_mm3=min_volume_mm3, min_voxels=min_voxels)
    prog, update = _progress("counting blocks")
    with prog:
        res = count_store(forecasts, out, settings, workers=workers, dask_scheduler=dask_scheduler, progress=update)
    typer.echo(res.summary())
    typer.echo(f"wrote {out / 'counts.parquet'} and {out / 'lesions.parquet'}")


@app.command()
def lesions(
    masks: Annotated[list[Path], typer.Argument(help="Binary lesion masks (.nii/.nii.gz).")],
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per mask: path, count, volume_mm3, settings.")],
    lesions_out: Annotated[Optional[Path], typer.Option(help="CSV, one row per lesion.")] = None,
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
) -> None:
    """Count the lesions of your own mask files."""
    import pandas as pd

    from mseval.io.atomic import write_csv_atomic
    from mseval.io.nifti import load_volume
    from mseval.lesions.components import count_lesions

    _check_conn(connectivity)
    rows, tables = [], []
    for path in masks:  # load and check every file before writing anything
        vol = load_volume(path, mask=True)
        res = count_lesions(vol.data, vol.affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
        rows.append({"path": str(path), "count": res.count, "volume_mm3": res.volume_mm3, "connectivity": connectivity,
                     "min_volume_mm3": min_volume_mm3, "min_voxels": res.min_voxels, "orientation": vol.orientation})
        tables.append(res.lesions.assign(path=str(path)))
    if lesions_out is not None:
        table = pd.concat(tables, ignore_index=True)
        write_csv_atomic(table[["path", *[c for c in table.columns if c != "path"]]], lesions_out)
    write_csv_atomic(pd.DataFrame(rows), out)
    typer.echo(f"{len(rows)} masks, {sum(r['count'] for r in rows)} lesions -> {out}")


@app.command()
def net2(
    baseline: Annotated[Path, typer.Argument(help="Baseline T2 lesion mask.")],
    followup: Annotated[Path, typer.Argument(help="Follow-up T2 lesion mask (same grid).")],
    out: Annotated[Path, typer.Option("--out", help="NET2 mask to write (.nii.gz).")],
    lesions_out: Annotated[Optional[Path], typer.Option(help="CSV, one row per follow-up lesion with its class.")] = None,
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
    enlarge_rel: Annotated[float, typer.Option(help="Enlarging: relative growth at least this (0.5 = +50%).")] = 0.5,
    enlarge_abs_mm3: Annotated[float, typer.Option(help="Enlarging: growth at least this many mm^3.")] = 3.0,
) -> None:
    """Find new and enlarging T2 lesions between two visits; write the NET2 mask."""
    from mseval.io.atomic import write_csv_atomic
    from mseval.io.nifti import check_same_grid, load_volume, save_volume
    from mseval.lesions.net2 import Net2Rule, net2_from_visits

    _check_conn(connectivity)
    if enlarge_rel < 0 or enlarge_abs_mm3 < 0 or min_volume_mm3 < 0:
        raise InputError(None, "thresholds must not be negative", field="enlarge_rel")
    base = load_volume(baseline, mask=True, field="baseline")
    fu = load_volume(followup, mask=True, field="followup")
    check_same_grid([base, fu])
    rule = Net2Rule(connectivity=connectivity, min_volume_mm3=min_volume_mm3, enlarge_rel=enlarge_rel, enlarge_abs_mm3=enlarge_abs_mm3)
    res = net2_from_visits(base.data, fu.data, fu.affine, rule)
    if lesions_out is not None:
        write_csv_atomic(res.lesions.assign(**{k: v for k, v in vars(rule).items()}), lesions_out)
    save_volume(res.mask, fu.affine, out)
    typer.echo(res.summary())


@app.command()
def nbreg(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet table, one row per patient.")],
    out: Annotated[Path, typer.Option("--out", help="Folder: rate_ratios.csv, adjusted_means.csv, model.json.")],
    formula: Annotated[str, typer.Option(help="Model formula, e.g. 'net2 ~ arm + t2_volume_mm3'.")] = "net2 ~ arm",
    offset_years: Annotated[Optional[str], typer.Option(help="Column of follow-up years (offset log(years)); '' for none.")] = "followup_years",
    reference: Annotated[Optional[str], typer.Option(help="Reference arm (default: first in sort order).")] = None,
    cov: Annotated[str, typer.Option(help="Standard errors from the 'expected' (as R's glm.nb) or 'observed' information.")] = "expected",
    arm_column: Annotated[str, typer.Option(help="Column holding the arm.")] = "arm",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Negative binomial (NB2) regression of counts on any table: rate ratios with Wald 95% CIs."""
    from mseval.effects import run_nbreg

    fit = run_nbreg(table, out, formula=formula, offset_years=offset_years or None, reference=reference, cov=cov, arm_col=arm_column, overwrite=overwrite)
    typer.echo(fit.summary())


@app.command()
def effects(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder (with observed NET2 masks).")],
    forecasts: Annotated[Optional[Path], typer.Argument(help="Forecast store (every patient under every arm).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the effect tables (see README).")] = Path("effects"),
    formula: Annotated[str, typer.Option(help="NB2 model formula for observed and forecast analyses.")] = "net2 ~ arm",
    counts: Annotated[Optional[Path], typer.Option(help="Use this counts.parquet instead of counting the store.")] = None,
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
    power_sims: Annotated[int, typer.Option(help="Simulated trials per arm for the simulated power (0: analytic only).")] = 50,
    bootstrap: Annotated[int, typer.Option(help="Patient-level bootstrap replicates of the observed rate ratios (0: none).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the power simulations and the bootstrap.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes for counting and the bootstrap.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    heldout_patients: Annotated[Optional[Path], typer.Option(help="Text file, one patient_id a line: patients with observed outcomes the "
                                                              "forecaster never trained on; the counterfactual ratio then carries the forecaster's calibration error.")] = None,
    min_stratum_per_arm: Annotated[int, typer.Option(help="Smallest responder stratum estimated, in patients per arm (exploratory strata).")] = 10,
) -> None:
    """Treatment effects: observed, forecast (NB2 on fully synthetic outcomes) and counterfactual rate
    ratios, each with its estimand; heterogeneity test, responders, Qini, prognostic adjustment, power."""
    from mseval.effects import EffectsSettings, run_effects

    _check_conn(connectivity)
    if bootstrap < 0 or power_sims < 0:
        raise InputError(None, "--bootstrap and --power-sims must not be negative", field="bootstrap")
    if min_stratum_per_arm < 2:
        raise InputError(None, "--min-stratum-per-arm must be at least 2", field="min_stratum_per_arm")
    heldout: tuple[str, ...] = ()
    if heldout_patients is not None:
        if not heldout_patients.is_file():
            raise InputError(heldout_patients, "file not found")
        heldout = tuple(x.strip() for x in heldout_patients.read_text().splitlines() if x.strip() and x.strip() != "patient_id")
    settings = EffectsSettings(formula=formula, connectivity=connectivity, min_volume_mm3=min_volume_mm3, power_sims=power_sims, bootstrap=bootstrap, seed=seed,
                               heldout_patients=heldout, min_stratum_per_arm=min_stratum_per_arm)
    summary = run_effects(cohort, forecasts, out, settings, counts_path=counts, workers=workers, overwrite=overwrite,
                          progress=lambda m: typer.echo(f"... {m}", err=True))
    for row in summary["primary_endpoint"]:
        typer.echo(f"{row['arm']:14s} RR observed {row['observed_rate_ratio']:.3f} ({row['observed_ci_low']:.3f}-{row['observed_ci_high']:.3f})"
                   f"  forecast {row['forecast_rate_ratio']:.3f}  counterfactual {row['counterfactual_rate_ratio']:.3f}"
                   + (f"  true {row['true_ratio_of_means']:.3f}" if row.get("true_ratio_of_means") is not None else ""))
    typer.echo(f"tables in {out}")


from mseval.commands.match import match  # noqa: E402 - light module: heavy imports inside the command

app.command("match", help="Lesion-wise detection metrics of a predicted mask against a reference (presets or explicit rule).")(match)

from mseval.commands.evaluate import evaluate  # noqa: E402

app.command()(evaluate)

from mseval.commands.report import demo, report  # noqa: E402

app.command(help="Write a self-contained trial report (HTML, Markdown, figures, tables, summary.json).")(report)
app.command(help="Run the whole pipeline on a small synthetic six-arm trial and write its report.")(demo)

from forecast.cli import app as forecast_app  # noqa: E402 - torch is imported inside its commands only

app.add_typer(forecast_app, name="forecast", help="Train the treatment-conditioned diffusion model, sample forecast ensembles, evaluate checkpoints.")


def run_typer(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a Typer app with mseval's error handling: InputError -> one stderr line, exit code 2."""
    command = typer.main.get_command(typer_app)
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name=prog_name, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"mseval: error: {exc.message}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("Interrupted.", err=True)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mseval` console script."""
    return run_typer(app, argv, "mseval")


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
