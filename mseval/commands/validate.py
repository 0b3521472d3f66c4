"""`mseval validate COHORT`: check a cohort against its schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer



def validate(cohort: Annotated[Path, typer.Argument(help="Cohort folder (manifest.csv, arms.csv).")],
             images: Annotated[bool, typer.Option(help="Also load and check every image.")] = True) -> None:
    """Check a cohort: tables against their schemas (manifest, arms, and visits, truth, truth_visits,
    truth_lesions, oracle_inputs where present), files present, and (default) every image of every
    visit on the patient's baseline grid."""
    from mseval.io.cohort import read_cohort
    from mseval.io.nifti import check_same_grid

    c = read_cohort(cohort)
    if images:
        for pid in c.patient_ids:
            base = c.load_patient(pid)
            for visit in c.visit_rows(pid)["visit"] if c.visits is not None else []:
                vols = c.load_visit(pid, visit)
                check_same_grid([*base.values(), *vols.values()])
    if c.visits is None:
        visits = "no visits.csv: one follow-up per patient, as the manifest says"
    else:
        follow = c.visits[c.visits["visit_index"] > 0].sort_values("visit_index")
        visits = f"follow-up visits {', '.join(dict.fromkeys(follow['visit']))}; {int(follow['missing'].notna().sum())} of {len(follow)} missing"
    typer.echo(f"{cohort}: OK ({len(c.manifest)} patients, {len(c.arms)} arms, reference {c.reference_arm!r}"
               f"{', with truth' if c.truth is not None else ''}; {visits})")
