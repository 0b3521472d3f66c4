"""`mseval nbreg` and `mseval effects`: NB2 regression of any table, and the treatment-effect tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.errors import InputError
from mseval.commands._common import Connectivity, MinVolume, check_conn


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
) -> None:
    """Treatment effects: observed, forecast (Rubin's rules) and counterfactual rate ratios,
    responders, Qini, prognostic adjustment, power."""
    from mseval.effects import EffectsSettings, run_effects

    check_conn(connectivity)
    if bootstrap < 0 or power_sims < 0:
        raise InputError(None, "--bootstrap and --power-sims must not be negative", field="bootstrap")
    settings = EffectsSettings(formula=formula, connectivity=connectivity, min_volume_mm3=min_volume_mm3, power_sims=power_sims, bootstrap=bootstrap, seed=seed)
    summary = run_effects(cohort, forecasts, out, settings, counts_path=counts, workers=workers, overwrite=overwrite,
                          progress=lambda m: typer.echo(f"... {m}", err=True))
    for row in summary["primary_endpoint"]:
        typer.echo(f"{row['arm']:14s} RR observed {row['observed_rate_ratio']:.3f} ({row['observed_ci_low']:.3f}-{row['observed_ci_high']:.3f})"
                   f"  forecast {row['forecast_rate_ratio']:.3f}  counterfactual {row['counterfactual_rate_ratio']:.3f}"
                   + (f"  true {row['true_ratio_of_means']:.3f}" if row.get("true_ratio_of_means") is not None else ""))
    typer.echo(f"tables in {out}")
