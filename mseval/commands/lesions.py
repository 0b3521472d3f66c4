"""`mseval lesions` and `mseval net2`: lesion counts and NET2 masks of your own mask files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.errors import InputError
from mseval.commands._common import Connectivity, MinVolume, check_conn


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

    check_conn(connectivity)
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

    check_conn(connectivity)
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
