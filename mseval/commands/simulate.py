"""`mseval simulate` and `mseval simulate-forecasts`: a synthetic trial with known truth, and forecasts drawn from its law."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.errors import InputError
from mseval.commands._common import Wait, check_min, check_out_folder, progress, store_run


def simulate(
    out: Annotated[Path, typer.Argument(help="Cohort folder to create.")],
    patients_per_arm: Annotated[int, typer.Option(help="Patients randomized to each arm.")] = 20,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape X Y Z (voxels), 16..182 each.")] = (64, 76, 64),
    spacing: Annotated[Optional[tuple[float, float, float]], typer.Option(help="Voxel size X Y Z in mm (default: the 182x218x182 mm MNI field of view).")] = None,
    followup_weeks: Annotated[float, typer.Option(help="Scheduled follow-up visit (weeks); visits vary by +/- 2 weeks.")] = 48.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives a byte-identical cohort.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    wait: Wait = False,
) -> None:
    """Simulate a six-arm RRMS trial with known truth (images, lesion masks, truth.csv)."""
    from mseval.io.cohort import read_cohort
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.summary import trial_summary
    from mseval.simulate.trial import simulate_trial

    check_min(workers, "--workers", 1)
    check_out_folder(out)
    if patients_per_arm < 1:
        raise InputError(None, "--patients-per-arm must be at least 1", field="patients_per_arm")
    if not all(16 <= s <= 512 for s in shape):
        raise InputError(None, f"--shape {shape}: each axis must be between 16 and 512 voxels", field="shape")
    if spacing is not None and not all(s > 0 for s in spacing):
        raise InputError(None, f"--spacing {spacing}: must be positive", field="spacing")
    if followup_weeks <= 0:
        raise InputError(None, "--followup-weeks must be positive", field="followup_weeks")
    cfg = TrialConfig(patients_per_arm=patients_per_arm, shape=tuple(shape), spacing=spacing, seed=seed, followup_weeks=followup_weeks)
    prog, update = progress("simulating patients")
    with output_lock(out, wait=wait), prog:
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


def simulate_forecasts_cmd(
    cohort: Annotated[Path, typer.Argument(help="A cohort made by `mseval simulate`.")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder (created, or resumed).")],
    samples: Annotated[int, typer.Option(help="Ensemble members per patient and arm.")] = 20,
    kind: Annotated[str, typer.Option(help="oracle | overdispersed | biased")] = "oracle",
    arms: Annotated[str, typer.Option(help="'all' or a comma-separated list of arms.")] = "all",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store at OUT (instead of resuming it with the same settings).")] = False,
    wait: Wait = False,
) -> None:
    """Write a forecast store drawn from the simulator's true (or a deliberately wrong) law."""
    from mseval.io.lock import output_lock
    from mseval.simulate.forecasters import KINDS, ForecasterSpec, simulate_forecasts

    check_min(samples, "--samples", 1)
    check_min(workers, "--workers", 1)
    if kind not in KINDS:
        raise InputError(None, f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    check_out_folder(out)
    spec = ForecasterSpec(kind=kind, samples=samples, seed=seed)
    arm_list = None if arms == "all" else [a.strip() for a in arms.split(",") if a.strip()]
    prog, update = progress(f"{kind} forecasts")
    settings = {"checkpoint": f"simulated-{kind}", "samples": samples, "seed": seed}
    names = {"checkpoint": "--kind", "samples": "--samples", "seed": "--seed"}
    with output_lock(out, wait=wait), store_run(out, settings, names, overwrite=overwrite), prog:
        store = simulate_forecasts(cohort, out, spec, arms=arm_list, workers=workers, progress=update)
    typer.echo(f"{len(store)} blocks ({len(store.patients)} patients x {len(store.arms)} arms, {samples} samples each) in {out}")
