"""`mseval evaluate COHORT FORECASTS --out DIR`: activity, calibration and detection vs observed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate(
    cohort: Path = typer.Argument(..., help="Cohort folder (manifest.csv, arms.csv, net2_mask files; truth.csv if simulated)."),
    forecasts: Path = typer.Argument(..., help="Forecast store folder."),
    out: Path = typer.Option(..., "--out", help="Folder to create: tables (CSV/Parquet) and summary.json."),
    counts: Optional[Path] = typer.Option(None, help="Use this counts.parquet (from `mseval count`) instead of counting the store."),
    k: int = typer.Option(1, help="Active = at least k lesions (P(active) = share of samples with >= k)."),
    operating_point: str = typer.Option("youden", help="'youden' or a threshold in [0, 1] (0.5 is always reported)."),
    connectivity: int = typer.Option(26, help="Lesion connectivity: 6, 18 or 26 (forecasts and observed masks)."),
    min_volume_mm3: float = typer.Option(3.0, help="Drop components under this volume (mm^3, inclusive bound)."),
    min_voxels: Optional[int] = typer.Option(None, help="Size filter in voxels instead of mm^3."),
    n_bins: int = typer.Option(10, help="Reliability bins for P(active)."),
    bin_strategy: str = typer.Option("quantile", help="quantile | uniform bins for P(active)."),
    pit_bins: int = typer.Option(10, help="PIT histogram bins."),
    pit_kind: str = typer.Option("augmented", help="augmented (exactly uniform when calibrated, any ensemble size) | ensemble."),
    levels: str = typer.Option("0.5,0.8,0.95", help="Central prediction-interval levels, comma-separated."),
    n_boot: int = typer.Option(1000, help="Patient bootstrap replicates for the ECE CI (0 = none)."),
    seed: int = typer.Option(0, help="Seed of the randomized PIT and the bootstrap."),
    by_arm: bool = typer.Option(True, help="Also report every metric per allocated arm."),
    voxel: bool = typer.Option(True, help="Voxel reliability inside the brain mask (streams the store)."),
    detection: bool = typer.Option(True, help="Lesion-wise detection of every sample vs the observed NET2 mask."),
    detection_preset: Optional[str] = typer.Option(None, help="Detection rule preset (msseg2, shifts, brats2023, isles22, panoptica)."),
    workers: int = typer.Option(1, help="Processes for counting the store."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    wait: bool = typer.Option(False, "--wait", help="If another mseval run is writing OUT, wait for it instead of stopping."),
) -> None:
    """Score the forecasts under each patient's allocated arm against the observed NET2 outcome:
    activity (AUC, sensitivity/specificity), count error, P(active), count and voxel calibration,
    detection. Writes DIR/*.csv, patients.parquet and summary.json (every setting recorded)."""
    from mseval.commands._checks import check_in_file, check_min, check_out_folder
    from mseval.commands._common import quiet_numerics
    from mseval.errors import InputError
    from mseval.evaluation import EvaluationSettings
    from mseval.io.lock import output_lock
    from mseval.evaluation import evaluate as run_evaluation

    try:
        op: str | float = operating_point if operating_point == "youden" else float(operating_point)
    except ValueError:
        raise InputError(None, f"--operating-point must be 'youden' or a number, got {operating_point!r}", field="operating_point") from None
    try:
        lv = tuple(float(v) for v in levels.split(",") if v.strip())
    except ValueError:
        raise InputError(None, f"--levels must be numbers separated by commas, got {levels!r}", field="levels") from None
    check_min(k, "--k", 1)
    check_min(min_volume_mm3, "--min-volume-mm3", 0)
    check_min(min_voxels, "--min-voxels", 0)
    check_min(n_bins, "--n-bins", 1)
    check_min(pit_bins, "--pit-bins", 1)
    check_min(n_boot, "--n-boot", 0)
    check_min(workers, "--workers", 1)
    check_out_folder(out)
    if out.exists() and not overwrite:
        raise InputError(out, "exists already; remove it, choose another --out, or pass --overwrite")
    if counts is not None:
        check_in_file(counts, "--counts", kinds=("parquet",))
    settings = EvaluationSettings(
        k=k, operating_point=op, connectivity=connectivity, min_volume_mm3=min_volume_mm3, min_voxels=min_voxels, n_bins=n_bins,
        bin_strategy=bin_strategy, pit_bins=pit_bins, pit_kind=pit_kind, levels=lv, n_boot=n_boot, seed=seed, by_arm=by_arm,
        voxel=voxel, detection=detection, detection_preset=detection_preset, workers=workers,
    )
    with output_lock(out, wait=wait), quiet_numerics(lambda m: typer.echo(f"... {m}", err=True)):
        result = run_evaluation(cohort, forecasts, out, settings, counts=counts, overwrite=overwrite)
    typer.echo(result.summary())
    typer.echo(f"wrote {out}")
