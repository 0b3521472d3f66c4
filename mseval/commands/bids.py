"""`mseval export bids COHORT OUT` and `mseval import bids BIDS_ROOT --out COHORT`: a cohort to and from BIDS.

Export is its own command (not only `simulate --bids`) because any cohort can be exported, the
imported one too, which is how the round trip is checked; `simulate --bids OUT` runs it after simulating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.commands._checks import check_out_folder
from mseval.errors import InputError

export_app = typer.Typer(help="Write a cohort in another format (bids).", no_args_is_help=True)
import_app = typer.Typer(help="Read a dataset in another format (bids) into a cohort folder.", no_args_is_help=True)

_Desc = Annotated[Optional[str], typer.Option(help="desc- entities of the lesion masks, FIELD=DESC, comma-separated (defaults "
                                          "t2_lesion_mask=T2, gd_lesion_mask=gd, net2_mask=net2, net2_mask_cumulative=net2cumulative).",
                                          show_default=False)]


def _mask_entities(lesion_label: str, brain_label: str, desc: Optional[str]):  # noqa: ANN202
    from mseval.bids.entities import LABEL_RE, MaskEntities

    base = MaskEntities(lesion_label=lesion_label, brain_label=brain_label)
    mapping = dict(base.desc)
    for item in [x.strip() for x in (desc or "").split(",") if x.strip()]:
        key, _, value = item.partition("=")
        if key not in mapping or not LABEL_RE.match(value):
            raise InputError(None, f"--desc {item!r}: expected FIELD=DESC with FIELD one of {', '.join(mapping)} and DESC letters/digits",
                             field="desc")
        mapping[key] = value
    for opt, value in (("--lesion-label", lesion_label), ("--brain-label", brain_label)):
        if not LABEL_RE.match(value):
            raise InputError(None, f"{opt} {value!r}: letters and digits only", field=opt.lstrip("-"))
    return MaskEntities(lesion_label=lesion_label, brain_label=brain_label, desc=mapping)


@export_app.command("bids")
def export_bids_cmd(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder (multi-visit: visits.csv).")],
    out: Annotated[Path, typer.Argument(help="BIDS dataset folder to create.")],
    pipeline: Annotated[str, typer.Option(help="Name of the derivatives pipeline folder that holds the masks.")] = "mseval",
    net2: Annotated[bool, typer.Option("--net2/--no-net2", help="Also write the NET2 masks (--no-net2: only T2 and Gd lesion masks, "
                                       "so an importer computes NET2 itself).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Write a cohort as a BIDS dataset: sub-*/ses-*/anat images, participants.tsv (age, sex, site, arm),
    sessions.tsv, lesion masks as derivatives/PIPELINE (docs/bids.md). Truth-only files are not exported."""
    from mseval.bids.export import export_bids

    check_out_folder(out, "OUT")
    export_bids(cohort, out, pipeline=pipeline, include_net2=net2, overwrite=overwrite)
    typer.echo(f"wrote BIDS dataset {out} (masks in {out / 'derivatives' / pipeline})")


@import_app.command("bids")
def import_bids_cmd(
    bids_root: Annotated[Path, typer.Argument(help="BIDS dataset folder (dataset_description.json, participants.tsv, sub-*/).")],
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to create.")],
    derivatives: Annotated[str, typer.Option(help="Derivatives pipeline (folder under BIDS_ROOT/derivatives/) holding the lesion masks.")] = "mseval",
    arm_column: Annotated[str, typer.Option(help="participants.tsv column with the randomized arm.")] = "arm",
    arms: Annotated[Optional[Path], typer.Option(help="Arms table (arm, label, efficacy, reference; CSV or TSV). Default: BIDS_ROOT/arms.tsv.",
                                                 show_default=False)] = None,
    baseline_session: Annotated[str, typer.Option(help="Label of the baseline session (ses-LABEL).")] = "baseline",
    followup_sequences: Annotated[str, typer.Option(help="Images every follow-up session must have (t1, t2, flair, pd, t1gd), comma-separated.")] = "flair,t1,t1gd",
    lesion_label: Annotated[str, typer.Option(help="label- entity of the lesion masks.")] = "lesion",
    brain_label: Annotated[str, typer.Option(help="label- entity of the baseline brain mask.")] = "brain",
    desc: _Desc = None,
    coreg_tol_mm: Annotated[float, typer.Option(help="Largest field-of-view shift (mm) of a session against baseline still resampled; "
                                                "more is refused as not co-registered.")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Import a BIDS trial into a cohort folder with pybids: participants and arms, sessions and their
    weeks, images by entities, masks from a derivatives pipeline, NET2 computed where only T2 lesion
    masks exist, every file on the patient's baseline grid; import_report.csv says what was found,
    resampled, computed or missing per subject and session (docs/bids.md)."""
    from mseval.bids.entities import SEQUENCES
    from mseval.bids.importer import import_bids
    from mseval.bids.scan import ImportOptions

    check_out_folder(out)
    seqs = tuple(s.strip() for s in followup_sequences.split(",") if s.strip())
    bad = [s for s in seqs if s not in SEQUENCES]
    if bad:
        raise InputError(None, f"--followup-sequences {bad[0]!r}: choose from {', '.join(SEQUENCES)}", field="followup_sequences")
    if coreg_tol_mm < 0:
        raise InputError(None, f"--coreg-tol-mm must be at least 0, got {coreg_tol_mm:g}", field="coreg_tol_mm")
    opts = ImportOptions(derivatives=derivatives, arm_column=arm_column, arms=arms, baseline_session=baseline_session,
                         masks=_mask_entities(lesion_label, brain_label, desc), followup_sequences=seqs, coreg_tol_mm=coreg_tol_mm)
    res = import_bids(bids_root, out, opts, overwrite=overwrite)
    typer.echo(res.summary())
