"""`mseval match PRED REF --out METRICS.csv`: lesion-wise detection metrics of one prediction.

Only typer, pathlib and typing are imported here; numpy, nibabel and the matching engine are
imported when the command runs, so `mseval --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def match(
    pred: Annotated[Path, typer.Argument(help="Predicted binary mask (.nii/.nii.gz).")],
    ref: Annotated[Path, typer.Argument(help="Reference binary mask on the same grid.")],
    out: Annotated[Path, typer.Option("--out", help="CSV with one row: counts, precision, recall, F1, Dice, volumes, rule.")],
    lesions_out: Annotated[Optional[Path], typer.Option("--lesions-out", help="CSV with one row per lesion of either side.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Named rule: msseg2, shifts, brats2023, isles22, panoptica.")] = None,
    connectivity: Annotated[Optional[int], typer.Option("--connectivity", help="6, 18 or 26.")] = None,
    min_volume_mm3: Annotated[Optional[float], typer.Option("--min-volume-mm3", help="Minimum lesion volume (mm^3).")] = None,
    min_size_side: Annotated[Optional[str], typer.Option("--min-size-side", help="both | ref | pred: where the minimum applies.")] = None,
    criterion: Annotated[Optional[str], typer.Option("--criterion", help="overlap | iou | dsc | ref_coverage.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="A pair passes when its criterion >= this (0..1).")] = None,
    matching: Annotated[Optional[str], typer.Option("--matching", help="hungarian | greedy | many.")] = None,
) -> None:
    """Match the lesions of PRED and REF and write lesion-wise detection metrics.

    Without --preset the mseval default rule applies (26-connectivity, >= 3 mm^3 on both sides,
    any overlap, optimal one-to-one); explicit options change single fields of it or of the preset.
    """
    from mseval.commands._checks import check_out_file
    from mseval.errors import InputError
    from mseval.io.atomic import write_csv_atomic
    from mseval.io.nifti import check_same_grid, load_volume
    from mseval.lesions.matching import match_lesions
    from mseval.lesions.presets import rule_from_options

    options = {
        "connectivity": connectivity, "min_volume_mm3": min_volume_mm3, "min_size_side": min_size_side,
        "criterion": criterion, "threshold": threshold, "matching": matching,
    }
    try:
        rule = rule_from_options(preset, **options)
    except KeyError as exc:
        raise InputError(None, str(exc.args[0]), field="preset") from None
    except ValueError as exc:
        field = next((k for k, v in options.items() if v is not None and k in str(exc)), None)
        raise InputError(None, f"bad rule option: {exc}", field=field) from None

    check_out_file(out)
    if lesions_out is not None:
        check_out_file(lesions_out, "--lesions-out")
    p = load_volume(pred, mask=True, field="pred")
    r = load_volume(ref, mask=True, field="ref")
    check_same_grid([p, r])
    res = match_lesions(p.data, r.data, p.affine, rule)

    frame = res.to_frame()
    frame.insert(0, "ref_file", str(ref))
    frame.insert(0, "pred_file", str(pred))
    write_csv_atomic(frame, out)
    if lesions_out is not None:
        write_csv_atomic(res.lesion_frame(), lesions_out)
    typer.echo(res.summary())
    typer.echo(f"wrote {out}" + (f" and {lesions_out}" if lesions_out is not None else ""))
