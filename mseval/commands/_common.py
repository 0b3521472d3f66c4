"""Helpers shared by the command modules: progress bars and shared option types."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from mseval.errors import InputError


class LazyProgress:
    """A rich progress bar on stderr that appears at its first update, so an input error raised
    before any work prints one line, not an empty bar; stdout stays for results."""

    def __init__(self, description: str) -> None:
        self.description, self.prog, self.task = description, None, None

    def update(self, done: int, total: int) -> None:
        if self.prog is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.task = self.prog.add_task(self.description, total=total)
            self.prog.start()
        self.prog.update(self.task, completed=done, total=total)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prog is not None:
            self.prog.stop()


def progress(description: str) -> tuple[LazyProgress, Callable[[int, int], None]]:
    """(context manager, update(done, total)) of a lazy progress bar on stderr."""
    p = LazyProgress(description)
    return p, p.update


Connectivity = Annotated[int, typer.Option(help="Lesion connectivity: 6, 18 or 26.")]
MinVolume = Annotated[float, typer.Option(help="Drop components under this volume (mm^3, inclusive bound).")]

def check_conn(connectivity: int) -> None:
    if connectivity not in (6, 18, 26):
        raise InputError(None, f"--connectivity must be 6, 18 or 26, got {connectivity}", field="connectivity")



Wait = Annotated[bool, typer.Option("--wait", help="If another mseval run is writing the same output folder, wait for it instead of stopping.")]


def check_min(value: float | None, option: str, minimum: float, *, strict: bool = False) -> None:
    """InputError naming `option` unless value >= minimum (> minimum with `strict`); None passes."""
    if value is None:
        return
    bad = value <= minimum if strict else value < minimum
    if bad:
        word = "greater than" if strict else "at least"
        raise InputError(None, f"{option} must be {word} {minimum:g}, got {value:g}")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_parent(path: Path, option: str) -> None:
    anc = _nearest_existing(path.absolute().parent)
    if not anc.is_dir():
        raise InputError(path, f"{anc} is a file, so {option} cannot be created under it")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write in {anc} (permission denied)")


def check_out_folder(out: Path, option: str = "--out") -> None:
    """An output folder: not a file, not the current folder or one above it, creatable/writable."""
    a = out.absolute()
    if out.exists() and not out.is_dir():
        raise InputError(out, f"is a file; {option} must be a folder")
    cwd = Path.cwd().absolute()
    if a.resolve() == cwd.resolve() or a.resolve() in cwd.resolve().parents or a.resolve() == Path(a.anchor):
        raise InputError(out, f"{option} must be a new or mseval-made folder, not the current folder or one above it")
    _check_writable_parent(a, option)
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise InputError(out, "cannot write in this folder (permission denied)")


def check_out_file(out: Path, option: str = "--out") -> None:
    """An output file: not a folder, its folder creatable/writable."""
    if out.is_dir() or str(out) in (".", "..") or str(out).endswith(os.sep):
        raise InputError(out, f"is a folder; {option} must be a file path")
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(out, "cannot overwrite this file (permission denied)")
    _check_writable_parent(out, option)


def check_in_file(path: Path, option: str, *, kinds: Iterable[str] = ("parquet", "csv")) -> str:
    """An input table: exists, is a file, and is Parquet or CSV as its content says. Returns the kind."""
    kinds = tuple(kinds)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, f"is a folder; {option} must be a file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    kind = "parquet" if head == b"PAR1" else "csv"
    if path.suffix.lower() == ".parquet" and kind != "parquet":
        raise InputError(path, "named .parquet but is not a Parquet file")
    if kind not in kinds:
        raise InputError(path, f"is {'a CSV (text)' if kind == 'csv' else 'a Parquet'} file; {option} needs {' or '.join(k.capitalize() for k in kinds)}")
    return kind


def check_formula_syntax(formula: str, columns: Iterable[str] | None = None, file: str | Path | None = None) -> None:
    """The model formula parses (patsy) and, when `columns` is given, names only those columns."""
    import pandas as pd
    from patsy import ModelDesc, PatsyError

    if "~" not in formula:
        raise InputError(file, f"--formula {formula!r} has no '~' (expected e.g. 'net2 ~ arm + age')", field="formula")
    try:
        ModelDesc.from_formula(formula)
    except PatsyError as exc:
        raise InputError(file, f"--formula {formula!r} is not a valid formula ({' '.join(str(exc).split())})", field="formula") from None
    if columns is not None:
        from mseval.stats.count_model import check_formula

        check_formula(formula, pd.DataFrame(columns=list(columns)), None if file is None else str(file))


@contextlib.contextmanager
def store_run(out: Path, settings: dict, option_names: dict[str, str], *, overwrite: bool = False) -> Iterator[None]:
    """Create a forecast store recording `settings`, or resume one made with the same settings
    (InputError naming the first difference, unless `overwrite` replaces the store). A store
    created here is removed again when the run fails on bad input (a Ctrl-C keeps its whole blocks)."""
    import shutil

    from mseval.io.store import check_store_settings, record_store_settings

    if overwrite and (out / "store.json").is_file():
        shutil.rmtree(out)
    existed = check_store_settings(out, settings, option_names=option_names)
    if not existed:
        if out.exists() and any(out.iterdir()):
            raise InputError(out, "folder exists and is not a forecast store (no store.json); choose an empty or new folder")
        record_store_settings(out, settings)
    try:
        yield
    except InputError:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
