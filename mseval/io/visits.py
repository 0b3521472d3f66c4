"""The multi-visit tables of a cohort folder, each optional: visits.csv (what was scanned when), and
the simulator's truth_visits.csv, truth_lesions.csv and oracle_inputs.csv.

Each reader validates its table against its schema (data_schemas/) and against the manifest (and
arms); every failure is an `InputError` naming the file, the row as numbered in the file (data rows
from 1, header excluded) and the field. A cohort written before visits existed has none of these
files and still reads: `read_cohort` then leaves the tables as None.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import data_schemas
from mseval.errors import InputError
from mseval.io.schemas import read_table

_PATHS = data_schemas.load("visits")["x-paths"]
VISIT_IMAGE_FIELDS: tuple[str, ...] = tuple(_PATHS["images"])
VISIT_MASK_FIELDS: tuple[str, ...] = tuple(_PATHS["masks"])


def _unknown(table: pd.DataFrame, column: str, known: pd.Series, path: Path, where: str) -> None:
    """InputError at the first row whose `column` value is not among `known` (the table named `where`)."""
    bad = ~table[column].isin(set(known)).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        what = "patient" if column == "patient_id" else column
        raise InputError(path, f"{what} {table[column].iloc[row - 1]!r} is not in {where}", row=row, field=column)


def _check_patient_visits(values: np.ndarray, rows: np.ndarray, column: dict[str, int], path: Path) -> None:
    """One patient's rows (`rows`: 0-based rows in the file, in visit_index order) of the table whose
    `values` (the frame's object array, what iterrows reads) and `column` positions are given: a baseline
    at week 0, schedule and actual weeks increasing with visit_index, previous_visit naming the previous
    visit that took place."""
    pid_, vis_, idx_, sched_, weeks_, miss_ = (column[c] for c in ("patient_id", "visit", "visit_index", "scheduled_weeks", "weeks", "missing"))
    prev_ = column.get("previous_visit")
    first = values[rows[0]]
    if int(first[idx_]) != 0:
        raise InputError(path, f"patient {first[pid_]!r} has no baseline row (visit_index 0)", row=int(rows[0]) + 1, field="visit_index")
    if isinstance(first[miss_], str) or first[weeks_] != 0 or first[sched_] != 0:
        raise InputError(path, "the baseline (visit_index 0) takes place at week 0: weeks and scheduled_weeks 0, missing empty",
                         row=int(rows[0]) + 1, field="weeks")
    prev_sched, prev_weeks, prev_label = 0.0, 0.0, str(first[vis_])
    for idx in rows[1:]:
        row, r = int(idx) + 1, values[idx]
        if not r[sched_] > prev_sched:
            raise InputError(path, f"scheduled_weeks {r[sched_]:g} of visit {r[vis_]!r} is not after the previous visit's "
                                   f"({prev_sched:g}): visits must increase with visit_index", row=row, field="scheduled_weeks")
        prev_sched = float(r[sched_])
        if isinstance(r[miss_], str):
            continue
        if pd.isna(r[weeks_]):
            raise InputError(path, f"visit {r[vis_]!r} took place (missing is empty) but has no weeks", row=row, field="weeks")
        if not r[weeks_] > prev_weeks:
            raise InputError(path, f"weeks {r[weeks_]:g} of visit {r[vis_]!r} is not after the previous visit that took place "
                                   f"({prev_label!r}, week {prev_weeks:g}): visit weeks must increase within a patient", row=row, field="weeks")
        if prev_ is not None and r[prev_] != prev_label:
            raise InputError(path, f"previous_visit is {r[prev_]!r}, but the patient's previous visit that took place is {prev_label!r}",
                             row=row, field="previous_visit")
        prev_weeks, prev_label = float(r[weeks_]), str(r[vis_])


def read_visits(path: str | Path, manifest: pd.DataFrame, *, check_files: bool = True) -> pd.DataFrame:
    """visits.csv, validated against its schema and the manifest.

    Every row names a manifest patient and every manifest patient has a baseline row (visit_index 0,
    week 0); within a patient scheduled and actual weeks increase with visit_index; a missing visit
    (reason in `missing`) names no weeks and no files; with `check_files` every file a visit names
    exists (paths relative to the table's folder).
    """
    path = Path(path)
    visits = read_table(path, "visits").reset_index(drop=True)
    _unknown(visits, "patient_id", manifest["patient_id"], path, "manifest.csv")
    have_baseline = set(visits.loc[visits["visit_index"] == 0, "patient_id"])
    for k, pid in enumerate(manifest["patient_id"]):
        if pid not in have_baseline:
            raise InputError(path, f"patient {pid!r} of manifest.csv (row {k + 1}) has no baseline row (visit_index 0)", field="patient_id")
    missing = visits["missing"].notna().to_numpy()
    file_fields = [c for c in (*VISIT_IMAGE_FIELDS, *VISIT_MASK_FIELDS) if c in visits.columns]
    for col in ("weeks", "previous_visit", *file_fields):
        if col not in visits.columns:
            continue
        bad = missing & visits[col].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise InputError(path, f"visit {visits['visit'].iloc[row - 1]!r} is missing ({visits['missing'].iloc[row - 1]}) but names {col}: "
                                   "a visit that did not take place has no weeks and no files", row=row, field=col)
    values, column = visits.values, {str(c): k for k, c in enumerate(visits.columns)}  # one object array, not a Series per row
    order = visits["visit_index"].to_numpy()
    groups = visits.groupby("patient_id", sort=False).indices
    for pid in pd.unique(visits["patient_id"]):  # patients in order of first appearance, each by visit_index (unique per patient)
        rows = groups[pid]
        _check_patient_visits(values, rows[np.argsort(order[rows], kind="stable")], column, path)
    if check_files:
        root = path.parent
        for col in file_fields:
            for k, rel in enumerate(visits[col]):
                if isinstance(rel, str) and rel and not (root / rel).is_file():
                    raise InputError(path, f"file not found: {rel}", row=k + 1, field=col)
    return visits


def read_truth_visits(path: str | Path, manifest: pd.DataFrame, arms: pd.DataFrame, visits: pd.DataFrame | None = None) -> pd.DataFrame:
    """truth_visits.csv, validated: manifest patients and arms-table arms only, every patient under
    every arm, and (with `visits`) only follow-up visits that visits.csv schedules for the patient."""
    path = Path(path)
    truth = read_table(path, "truth_visits").reset_index(drop=True)
    _unknown(truth, "patient_id", manifest["patient_id"], path, "manifest.csv")
    _unknown(truth, "arm", arms["arm"], path, "arms.csv")
    have = set(zip(truth["patient_id"], truth["arm"]))
    for pid in manifest["patient_id"]:
        for arm in arms["arm"]:
            if (pid, arm) not in have:
                raise InputError(path, f"no row for patient {pid!r} under arm {arm!r}")
    if visits is not None:
        scheduled = set(zip(visits.loc[visits["visit_index"] > 0, "patient_id"], visits.loc[visits["visit_index"] > 0, "visit"]))
        bad = ~np.array([(p, v) in scheduled for p, v in zip(truth["patient_id"], truth["visit"])], dtype=bool)
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise InputError(path, f"visit {truth['visit'].iloc[row - 1]!r} of patient {truth['patient_id'].iloc[row - 1]!r} is not a follow-up "
                                   "visit of visits.csv", row=row, field="visit")
    return truth


def read_patient_table(path: str | Path, schema_name: str, manifest: pd.DataFrame, *, every_patient: bool) -> pd.DataFrame:
    """A per-patient truth table (oracle_inputs, truth_lesions), validated: manifest patients only;
    with `every_patient`, each manifest patient present."""
    path = Path(path)
    table = read_table(path, schema_name).reset_index(drop=True)
    _unknown(table, "patient_id", manifest["patient_id"], path, "manifest.csv")
    if every_patient:
        have = set(table["patient_id"])
        for pid in manifest["patient_id"]:
            if pid not in have:
                raise InputError(path, f"no row for patient {pid!r} of manifest.csv", field="patient_id")
    return table
