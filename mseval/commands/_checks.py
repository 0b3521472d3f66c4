"""Checks every command runs before any work or output: option ranges, output paths, input file
kinds, formulas and columns. Each raises `InputError` naming the option or file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mseval.errors import InputError


# Columns `mseval.lesions.observed.analysis_table` adds to the manifest's (what an effects formula may name).
OBSERVED_COLUMNS = ("net2", "net2_volume_mm3", "followup_years")


def check_conn(connectivity: int) -> None:
    if connectivity not in (6, 18, 26):
        raise InputError(None, f"--connectivity must be 6, 18 or 26, got {connectivity}", field="connectivity")


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


def table_columns(path: Path, kind: str) -> list[str]:
    """The column names of a CSV or Parquet table (header only)."""
    import pandas as pd

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        raise InputError(path, f"cannot read the table header ({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def check_counts_file(path: Path, cohort: object) -> None:
    """A counts.parquet covers every patient of `cohort` under every arm, same S everywhere."""
    import pandas as pd

    from mseval.stats.ensemble_counts import check_counts

    try:
        counts = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read Parquet ({type(exc).__name__})") from None
    check_counts(counts, cohort.patient_ids, list(cohort.arms["arm"]), path)  # type: ignore[attr-defined]


def check_store_file(path: Path, cohort: object) -> None:
    """A forecast store that opens and holds every patient of `cohort` under every arm."""
    from mseval.io.store import ForecastStore

    store = ForecastStore.open(path)
    arms = list(cohort.arms["arm"])  # type: ignore[attr-defined]
    for pid in cohort.patient_ids:  # type: ignore[attr-defined]
        for arm in arms:
            if (pid, arm) not in store:
                raise InputError(path, f"has no forecasts of patient {pid} under arm {arm!r}; every patient is needed under every arm")
