"""`mseval forecast import FOLDER --pattern ... --out STORE`: any model's NIfTI forecasts into a forecast store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.commands._checks import check_out_folder


def forecast_import(
    folder: Annotated[Path, typer.Argument(help="Folder of forecast NIfTI files (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder to create.")],
    pattern: Annotated[str, typer.Option(help="File name relative to FOLDER, with {patient}, {arm} and optionally {sample}: with {sample}, "
                                         "one 3D mask per sample; without, one 4D (X, Y, Z, samples) file per patient and arm.")]
    = "{patient}_{arm}_{sample}.nii.gz",
    name: Annotated[str, typer.Option(help="The forecaster's name, recorded as the store's checkpoint.")] = "imported",
    cohort: Annotated[Optional[Path], typer.Option(help="Check patients, arms and grids against this cohort.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Import forecasts made by any model (binary NIfTI masks) into a forecast store, so that count,
    evaluate, effects and report run on them unchanged (docs/bids.md)."""
    from mseval.io.forecast_import import import_forecasts

    check_out_folder(out)
    res = import_forecasts(folder, out, pattern=pattern, name=name, cohort=cohort, overwrite=overwrite)
    typer.echo(res.summary())
