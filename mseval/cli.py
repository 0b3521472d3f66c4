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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mseval` console script."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name="mseval", standalone_mode=False)
    except InputError as exc:
        typer.echo(f"mseval: error: {exc.message}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        typer.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
