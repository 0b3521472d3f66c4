"""`mseval count STORE --out DIR`: lesion counts of every forecast sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.commands._common import Connectivity, MinVolume, Wait, check_conn, check_min, check_out_folder, progress


def count(
    forecasts: Annotated[Path, typer.Argument(help="Forecast store folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for counts.parquet and lesions.parquet.")],
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
    min_voxels: Annotated[Optional[int], typer.Option(help="Size filter in voxels instead of mm^3.")] = None,
    workers: Annotated[int, typer.Option(help="Local processes (results do not depend on it).")] = 1,
    dask_scheduler: Annotated[Optional[str], typer.Option(help="Address of a Dask scheduler, e.g. tcp://host:8786.")] = None,
    wait: Wait = False,
) -> None:
    """Count the lesions of every forecast sample: counts.parquet (patient, arm, sample, count,
    volume_mm3) and lesions.parquet (one row per lesion). Resumes an interrupted run."""
    from mseval.lesions.ensemble import CountSettings, count_store

    from mseval.io.lock import output_lock

    check_conn(connectivity)
    check_min(min_volume_mm3, "--min-volume-mm3", 0)
    check_min(min_voxels, "--min-voxels", 0)
    check_min(workers, "--workers", 1)
    check_out_folder(out)
    settings = CountSettings(connectivity=connectivity, min_volume_mm3=min_volume_mm3, min_voxels=min_voxels)
    prog, update = progress("counting blocks")
    with output_lock(out, wait=wait), prog:
        res = count_store(forecasts, out, settings, workers=workers, dask_scheduler=dask_scheduler, progress=update)
    typer.echo(res.summary())
    typer.echo(f"wrote {out / 'counts.parquet'} and {out / 'lesions.parquet'}")
