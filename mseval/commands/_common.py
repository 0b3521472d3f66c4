"""Helpers shared by the command modules: progress bars and shared option types."""

from __future__ import annotations

from typing import Annotated

import typer

from mseval.errors import InputError

def progress(description: str):  # noqa: ANN202 - returns a (context manager, callback) pair
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        transient=False,
    )
    task = prog.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update

Connectivity = Annotated[int, typer.Option(help="Lesion connectivity: 6, 18 or 26.")]
MinVolume = Annotated[float, typer.Option(help="Drop components under this volume (mm^3, inclusive bound).")]

def check_conn(connectivity: int) -> None:
    if connectivity not in (6, 18, 26):
        raise InputError(None, f"--connectivity must be 6, 18 or 26, got {connectivity}", field="connectivity")

