"""Which forecast file holds which patient, arm and sample: a filename pattern, a CSV index, or BIDS derivatives.

Every source gives the same answer, a `Sources`: per (patient, arm) block the files and their sample
numbers (None: one 4D file (X, Y, Z, S) holding every sample of the block). Nothing is read but names
and tables here; `mseval.io.forecast_import` loads and checks the images.

- `from_pattern(folder, pattern)`: names relative to the folder matched by a pattern with `{patient}`,
  `{arm}` and optionally `{sample}` (docs/bids.md).
- `from_index(folder, csv)`: a CSV with columns `file` (relative to the folder, or absolute),
  `patient`, `arm` and optionally `sample` (then every row needs a non-negative integer; without the
  column every file is 4D). Rows are counted as everywhere in mseval: data rows from 1, header excluded.
- `from_bids(folder)`: a derivatives folder written by `mseval forecast export --bids` (`mseval.io.forecast_bids`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mseval.errors import InputError, row_hint

DEFAULT_PATTERN = "{patient}_{arm}_{sample}.nii.gz"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""A patient or arm ID usable as a store folder / file name."""
_FIELDS = {"patient": r"(?P<patient>[A-Za-z0-9][A-Za-z0-9._-]*?)", "arm": r"(?P<arm>[A-Za-z0-9][A-Za-z0-9._-]*?)", "sample": r"(?P<sample>\d+)"}
INDEX_COLUMNS = ("file", "patient", "arm")
"""Required columns of a `--index` CSV; `sample` is optional."""


@dataclass(frozen=True)
class Sources:
    """blocks: (patient, arm) -> [(sample number or None for a 4D file, path, where)], `where` being what an
    error names besides the path (e.g. "row 3" of the index); described: how they were found, for the
    store's settings. What a BIDS export recorded per (patient, arm): seeds, sampler settings, the
    forecaster of each sample, and probability files beside binary masks (prob, as blocks)."""

    blocks: dict[tuple[str, str], list[tuple[int | None, Path, str]]]
    described: dict[str, str]
    seeds: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    sampler: dict[tuple[str, str], dict] = field(default_factory=dict)
    forecaster: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    prob: dict[tuple[str, str], list[tuple[int | None, Path, str]]] = field(default_factory=dict)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a filename pattern (InputError when a placeholder is missing or unknown)."""
    names = re.findall(r"\{([^{}]*)\}", pattern)
    unknown = [n for n in names if n not in _FIELDS]
    if unknown or "patient" not in names or "arm" not in names or len(names) != len(set(names)):
        raise InputError(None, f"--pattern {pattern!r}: use {{patient}} and {{arm}} once each, and optionally {{sample}} (no other placeholders)",
                         field="pattern")
    parts = re.split(r"(\{[^{}]*\})", pattern)
    return re.compile("^" + "".join(_FIELDS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts) + "$")


def from_pattern(folder: Path, pattern: str) -> Sources:
    """Every file under `folder` (recursively) whose relative name matches `pattern`."""
    regex = pattern_regex(pattern)
    per_sample = "{sample}" in pattern
    found: dict[tuple[str, str], list[tuple[int | None, Path, str]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        m = regex.match(path.relative_to(folder).as_posix())
        if m:
            found[(m["patient"], m["arm"])].append((int(m["sample"]) if per_sample else None, path, ""))
    if not found:
        raise InputError(folder, f"no file matches --pattern {pattern!r}", field="pattern")
    return Sources(dict(found), {"pattern": pattern})


def _index_error(csv: Path, row: int, field: str, problem: str) -> InputError:
    return InputError(csv, f"{problem}{row_hint(csv, row)}", row=row, field=field)


def read_text_table(csv: Path, option: str, required: tuple[str, ...], columns_hint: str) -> pd.DataFrame:
    """A small CSV an option names, every value as stripped-header text ('' for empty): InputError naming the file
    (and the missing column) when absent, empty, unparsable or without a `required` column."""
    if not csv.is_file():
        raise InputError(csv, f"file not found (--{option.replace('_', '-')})", field=option)
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(csv, "file is empty", field=option) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise InputError(csv, f"cannot read table ({type(exc).__name__}: {exc})", field=option) from None
    table.columns = [str(c).strip() for c in table.columns]
    for col in required:
        if col not in table.columns:
            raise InputError(csv, f"missing required column '{col}' ({columns_hint})", field=col)
    return table


def from_index(folder: Path, csv: Path) -> Sources:
    """The files a CSV index lists (module docstring); every row is checked before any file is read."""
    table = read_text_table(csv, "index", INDEX_COLUMNS, "columns: file, patient, arm, optionally sample")
    if table.empty:
        raise InputError(csv, "index has no rows", field="index")
    per_sample = "sample" in table.columns
    found: dict[tuple[str, str], list[tuple[int | None, Path, str]]] = defaultdict(list)
    seen: dict[tuple[str, str, int | None], int] = {}
    for i, rec in enumerate(table.to_dict("records"), start=1):
        for col in ("patient", "arm"):
            if not ID_RE.match(rec[col].strip()):
                raise _index_error(csv, i, col, f"{col} {rec[col]!r} is not an ID (letters, digits, '.', '_', '-'; not empty)")
        file = rec["file"].strip()
        if not file:
            raise _index_error(csv, i, "file", "file is empty")
        path = Path(file) if Path(file).is_absolute() else folder / file
        if not path.is_file():
            raise _index_error(csv, i, "file", f"file {file!r} not found in {folder}")
        sample = None
        if per_sample:
            text = rec["sample"].strip()
            if not text.isdigit():
                raise _index_error(csv, i, "sample", f"sample {text!r} is not a non-negative integer")
            sample = int(text)
        key = (rec["patient"].strip(), rec["arm"].strip())
        if (*key, sample) in seen:
            what = f"sample {sample}" if per_sample else "a file (without a sample column, one 4D file per patient and arm)"
            raise _index_error(csv, i, "sample" if per_sample else "patient",
                               f"patient {key[0]}, arm {key[1]}: {what} already listed in row {seen[(*key, sample)]}")
        seen[(*key, sample)] = i
        found[key].append((sample, path, f"row {i}"))
    return Sources(dict(found), {"index": str(csv)})
