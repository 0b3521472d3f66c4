"""`mseval forecast import FOLDER --out STORE` (any model's NIfTI forecasts into a forecast store) and
`mseval forecast export STORE --bids OUT` (a store as BIDS derivatives, which the import reads back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.commands._checks import check_out_folder
from mseval.errors import InputError


def forecast_import(
    folder: Annotated[Path, typer.Argument(help="Folder of forecast NIfTI files (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder to create.")],
    pattern: Annotated[Optional[str], typer.Option(help="File name relative to FOLDER, with {patient}, {arm} and optionally {sample}: with "
                                                   "{sample}, one 3D map per sample; without, one 4D (X, Y, Z, samples) file per patient and "
                                                   "arm. Default {patient}_{arm}_{sample}.nii.gz.", show_default=False)] = None,
    index: Annotated[Optional[Path], typer.Option(help="CSV index instead of --pattern: columns file (relative to FOLDER), patient, arm, "
                                                  "optionally sample (then one 3D map per row).", show_default=False)] = None,
    bids: Annotated[bool, typer.Option("--bids", help="FOLDER is a BIDS derivatives folder written by `mseval forecast export --bids`.")] = False,
    probability: Annotated[bool, typer.Option("--probability", help="The files are probability maps (floats in [0, 1]); the store keeps "
                                              "them and their masks p > --threshold.")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="With --probability: a voxel is in the mask when its probability exceeds this "
                                                       "(default 0.5).", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="The forecaster's name, recorded as the store's checkpoint (default: imported, or the "
                                                "name the BIDS export recorded).", show_default=False)] = None,
    trained_on: Annotated[Optional[str], typer.Option(help="CSV of the patients the forecaster trained on (patient_id, optionally cohort "
                                                      "folder), or 'none'; results are then labelled in-sample/held-out. Not given: unknown.",
                                                      show_default=False)] = None,
    cohort: Annotated[Optional[Path], typer.Option(help="Check patients, arms and grids against this cohort (and identify --trained-on "
                                                   "patients in it).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Import forecasts made by any model (binary masks or probability maps, NIfTI) into a forecast store, so that
    count, evaluate, effects and report run on them unchanged (docs/bids.md)."""
    from mseval.io.forecast_import import DEFAULT_PATTERN, import_forecasts

    check_out_folder(out)
    if sum(x is not None and x is not False for x in (pattern, index, bids or None)) > 1:
        raise InputError(None, "give one of --pattern, --index and --bids", field="pattern")
    if threshold is not None and not probability:
        raise InputError(None, "--threshold applies to probability maps: add --probability (binary masks are imported as they are)",
                         field="threshold")
    res = import_forecasts(folder, out, pattern=pattern or DEFAULT_PATTERN, index=index, bids=bids, name=name, cohort=cohort,
                           probability=probability, threshold=0.5 if threshold is None else threshold, trained_on=trained_on, overwrite=overwrite)
    typer.echo(res.summary())


def forecast_export(
    store: Annotated[Path, typer.Argument(help="Forecast store folder.")],
    bids: Annotated[Path, typer.Option("--bids", help="BIDS dataset folder (new, or the trial's own) to write derivatives/PIPELINE in.")],
    pipeline: Annotated[Optional[str], typer.Option(help="Derivatives folder name (letters and digits). Default: the forecaster's name.",
                                                    show_default=False)] = None,
    session: Annotated[str, typer.Option(help="ses- label of the forecasts (the store does not record the visit forecast).")] = "forecast",
    overwrite: Annotated[bool, typer.Option(help="Replace derivatives/PIPELINE if it exists.")] = False,
) -> None:
    """Write a forecast store as BIDS derivatives: one NIfTI per patient, arm and sample
    (sub-*/ses-SESSION/anat/*_label-NET2_desc-<arm>sample<k>_mask.nii.gz, and _probseg for probability maps),
    dataset_description.json with GeneratedBy, forecasts.json (seeds, settings, provenance); `mseval forecast
    import FOLDER --bids` reads it back into the same store (docs/bids.md)."""
    from mseval.io.forecast_bids import export_forecasts_bids

    check_out_folder(bids, "--bids")
    target = export_forecasts_bids(store, bids, pipeline=pipeline, session=session, overwrite=overwrite)
    typer.echo(f"wrote forecast derivatives {target}")
