"""`mseval visit-counts COHORT --out visit_counts.csv`: the per-visit NET2 and Gd+ counts of a multi-visit cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mseval.commands._checks import check_conn, check_min, check_out_file
from mseval.commands._common import Connectivity, MinVolume


def visit_counts(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder with visits.csv.")],
    out: Annotated[Path, typer.Option("--out", help="CSV, one row per patient and follow-up visit (schema visit_counts).")],
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
) -> None:
    """Count each visit's new/enlarging T2 lesions (vs the previous scan that took place) and Gd+
    lesions: patient_id, visit, visit_index, start_weeks, end_weeks, net2, gd_count, missing."""
    from mseval.io.atomic import write_csv_atomic
    from mseval.io.cohort import read_cohort
    from mseval.io.schemas import validate_frame
    from mseval.lesions.visit_counts import per_visit_counts

    check_conn(connectivity)
    check_min(min_volume_mm3, "--min-volume-mm3", 0)
    check_out_file(out)
    table = per_visit_counts(read_cohort(cohort), connectivity=connectivity, min_volume_mm3=min_volume_mm3)
    table = table.assign(connectivity=connectivity, min_volume_mm3=float(min_volume_mm3))
    validate_frame(table.assign(missing=table["missing"].replace("", None)), "visit_counts", out)
    write_csv_atomic(table, out)
    n_obs = int((table["missing"] == "").sum())
    typer.echo(f"{table['patient_id'].nunique()} patients, {n_obs} of {len(table)} follow-up visits observed, "
               f"{int(table['net2'].sum())} NET2 and {int(table['gd_count'].sum())} Gd+ lesions -> {out}")
