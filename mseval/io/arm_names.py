"""Arm names in a table, checked before a model makes an arm of a typo.

`mseval nbreg` fits any table; a misspelt arm ('dfm' beside 'dmf') or a case variant ('Placebo'
beside 'placebo') would otherwise become an arm of its own. The arms come from an arms table:
`--arms` as a comma list or an arms.csv, or the arms.csv beside the table (a cohort's
manifest.csv). Rules (`check_arm_values`):

- with arms known: every value must be one of them, exactly;
- always: two values that differ only in case (or surrounding spaces) are refused;
- without arms known: a value of at least 3 characters one edit (a letter changed, added, dropped
  or two swapped) from another value that holds at least `RARE_FACTOR` times its rows is refused as
  a likely typo (codes such as 1 and 2 are never compared); if both are arms, `--arms` names them.

The message names the value, its row (data rows counted from 1, header excluded, as every mseval
message counts them; for a CSV file also its line) and the closest arm (`difflib`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.errors import InputError, row_hint

RARE_FACTOR = 5
"""Without an arms table, a one-edit variant is refused when the other spelling holds at least this many times its rows."""


@dataclass(frozen=True)
class KnownArms:
    """The arms a table may hold: `arms` (names), `reference` (the arms table's reference arm, None
    for a comma list) and `source` (where they came from, for messages)."""

    arms: tuple[str, ...]
    reference: str | None
    source: str


def closest(value: str, choices: Sequence[str]) -> str | None:
    """The choice most like `value` (difflib ratio, case ignored), None if none is close (ratio < 0.5)."""
    folded: dict[str, str] = {}
    for c in choices:
        folded.setdefault(str(c).casefold().strip(), str(c))
    best = difflib.get_close_matches(value.casefold().strip(), list(folded), n=1, cutoff=0.5)
    return folded[best[0]] if best else None


def resolve_arms(option: str | None, table: Path) -> KnownArms | None:
    """The arms `--arms` names: an arms.csv file (validated, with its reference) or a comma list; without
    the option, the arms.csv beside `table` when there is one; None when no arms are known."""
    from mseval.io.cohort import read_arms

    if option is not None and option.strip() == "":
        return None
    if option is not None:
        path = Path(option)
        if path.suffix.lower() == ".csv" or path.is_file():
            if not path.is_file():
                raise InputError(path, "file not found", field="arms")
            t = read_arms(path)
            return KnownArms(tuple(str(a) for a in t["arm"]), str(t.loc[t["reference"].astype(bool), "arm"].iloc[0]), str(path))
        names = [a.strip() for a in option.split(",")]
        if any(not a for a in names):
            raise InputError(None, f"--arms {option!r} has an empty name (give a comma list such as 'placebo,dmf' or an arms.csv)", field="arms")
        dup = next((a for i, a in enumerate(names) if a.casefold() in {b.casefold() for b in names[:i]}), None)
        if dup is not None:
            raise InputError(None, f"--arms names {dup!r} twice (case ignored)", field="arms")
        return KnownArms(tuple(names), None, "--arms")
    beside = table.parent / "arms.csv"
    if beside.is_file() and beside.resolve() != table.resolve():
        t = read_arms(beside)
        return KnownArms(tuple(str(a) for a in t["arm"]), str(t.loc[t["reference"].astype(bool), "arm"].iloc[0]), str(beside))
    return None


def _one_edit(a: str, b: str) -> bool:
    """True when a and b (case ignored) differ by one letter changed, added or dropped, or two neighbours swapped."""
    a, b = a.casefold(), b.casefold()
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def check_arm_values(values: pd.Series, known: KnownArms | None, *, file: str | Path | None, field: str) -> None:
    """Refuse a value of the arm column `values` (one per data row, in file order; missing values
    are skipped) that is not an arm (module docstring); InputError names value, row and closest arm."""
    present = values.notna().to_numpy()
    text = values.astype(str)
    first_row = {}
    for i in np.flatnonzero(present):
        first_row.setdefault(text.iloc[i], int(i) + 1)
    counts = text[present].value_counts()

    def refuse(value: str, problem: str) -> None:
        row = first_row[value]
        raise InputError(file, f"{problem}{row_hint(file, row)}", row=row, field=field)

    if known is not None:
        arms = set(known.arms)
        for value in first_row:  # file order: the first bad row is named
            if value not in arms:
                near = closest(value, known.arms)
                hint = f"did you mean {near!r}?" if near else f"the arms are {', '.join(known.arms)}"
                refuse(value, f"{value!r} is not an arm; {hint} (arms from {known.source})")
        return
    by_fold: dict[str, list[str]] = {}
    for value in first_row:
        by_fold.setdefault(value.casefold().strip(), []).append(value)
    for group in by_fold.values():
        if len(group) > 1:  # the rarer spelling (later in the file on a tie) is the suspect
            main, odd = sorted(group, key=lambda v: (-counts[v], first_row[v]))[:2]
            refuse(odd, f"{odd!r} is not an arm; did you mean {main!r}? (they differ only in case or spaces: one arm spelt two ways)")
    for value in first_row:
        for other in first_row:
            if other != value and min(len(value), len(other)) >= 3 and _one_edit(value, other) and counts[other] >= RARE_FACTOR * counts[value]:
                refuse(value, f"{value!r} is not an arm; did you mean {other!r}? ({value!r} holds {counts[value]} row(s), {other!r} "
                              f"{counts[other]}; if both are arms, name the arms with --arms)")
