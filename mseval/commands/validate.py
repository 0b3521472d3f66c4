"""`mseval validate COHORT`: check a cohort against its schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer



def validate(cohort: Annotated[Path, typer.Argument(help="Cohort folder (manifest.csv, arms.csv).")],
             images: Annotated[bool, typer.Option(help="Also load and check every image.")] = True) -> None:
    """Check a cohort: tables against their schemas, files present, and (default) every image."""
    from mseval.io.cohort import read_cohort

    c = read_cohort(cohort)
    if images:
        for pid in c.patient_ids:
            c.load_patient(pid)
    typer.echo(f"{cohort}: OK ({len(c.manifest)} patients, {len(c.arms)} arms, reference {c.reference_arm!r}"
               f"{', with truth' if c.truth is not None else ''})")
