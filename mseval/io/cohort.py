"""Read a cohort folder: manifest.csv + arms.csv, the optional visits.csv, and for simulated trials
truth.csv, truth_visits.csv, truth_lesions.csv and oracle_inputs.csv, with every check (layout:
docs/cohort_format.md; the visit tables: `mseval.io.visits`).

A patient's files are checked together on load: each decodes, is 3D and finite, masks are
binary, and all share one grid (shape and affine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import data_schemas
from mseval.errors import InputError
from mseval.io.nifti import Volume, check_same_grid, load_volume
from mseval.io.schemas import read_table
from mseval.io.visits import VISIT_MASK_FIELDS, read_patient_table, read_truth_visits, read_visits

_PATHS = data_schemas.load("manifest")["x-paths"]
IMAGE_FIELDS: tuple[str, ...] = tuple(_PATHS["images"])
MASK_FIELDS: tuple[str, ...] = tuple(_PATHS["masks"])
FOLLOWUP_FIELDS: tuple[str, ...] = ("t2_lesion_mask_followup", "net2_mask")
_VISIT_FILES = frozenset(data_schemas.load("visits")["x-paths"]["images"] + data_schemas.load("visits")["x-paths"]["masks"])


def read_arms(path: str | Path) -> pd.DataFrame:
    """arms.csv, validated: unique arms, exactly one reference."""
    path = Path(path)
    arms = read_table(path, "arms")
    n_ref = int(arms["reference"].sum())
    if n_ref != 1:
        which = ", ".join(arms.loc[arms["reference"].astype(bool), "arm"]) or "none"
        raise InputError(path, f"exactly one arm must have reference=true, found {n_ref} ({which})", field="reference")
    return arms.reset_index(drop=True)


def read_manifest(path: str | Path, arms: pd.DataFrame | None = None, *, check_files: bool = True) -> pd.DataFrame:
    """manifest.csv, validated; with `arms`, every allocated arm must be in it; with `check_files`,
    every named file must exist (paths are relative to the manifest's folder)."""
    path = Path(path)
    manifest = read_table(path, "manifest")
    if arms is not None:
        known = set(arms["arm"])
        bad = ~manifest["arm"].isin(known).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0]) + 1
            raise InputError(path, f"arm {manifest['arm'].iloc[row - 1]!r} is not in the arms table ({', '.join(sorted(known))})", row=row, field="arm")
    if check_files:
        root = path.parent
        for col in IMAGE_FIELDS + MASK_FIELDS:
            if col not in manifest.columns:
                continue
            for k, rel in enumerate(manifest[col]):
                if rel is None or (isinstance(rel, float) and np.isnan(rel)):
                    continue
                if not (root / rel).is_file():
                    raise InputError(path, f"file not found: {rel}", row=k + 1, field=col)
    return manifest.reset_index(drop=True)


def read_truth(path: str | Path, manifest: pd.DataFrame | None = None, arms: pd.DataFrame | None = None) -> pd.DataFrame:
    """truth.csv, validated; with manifest and arms, it must hold every patient x every arm."""
    path = Path(path)
    truth = read_table(path, "truth")
    if manifest is not None and arms is not None:
        have = set(zip(truth["patient_id"], truth["arm"]))
        for pid in manifest["patient_id"]:
            for arm in arms["arm"]:
                if (pid, arm) not in have:
                    raise InputError(path, f"no row for patient {pid!r} under arm {arm!r}")
    return truth


@dataclass(frozen=True)
class Cohort:
    """A validated cohort folder. manifest: one row per patient; arms: one row per arm; truth:
    the simulator's truth table when the cohort is simulated, else None; visits: one row per patient
    and visit (None for a single-visit cohort written before visits.csv existed); truth_visits and
    oracle_inputs: the simulator's per-visit truth and observable-oracle inputs (None when absent)."""

    root: Path
    manifest: pd.DataFrame
    arms: pd.DataFrame
    truth: pd.DataFrame | None
    visits: pd.DataFrame | None = None
    truth_visits: pd.DataFrame | None = None
    oracle_inputs: pd.DataFrame | None = None

    @property
    def reference_arm(self) -> str:
        return str(self.arms.loc[self.arms["reference"].astype(bool), "arm"].iloc[0])

    @property
    def patient_ids(self) -> list[str]:
        return list(self.manifest["patient_id"])

    def row(self, patient_id: str) -> pd.Series:
        hit = self.manifest.index[self.manifest["patient_id"] == patient_id]
        if len(hit) == 0:
            raise InputError(self.root / "manifest.csv", f"unknown patient {patient_id!r}", field="patient_id")
        return self.manifest.loc[hit[0]]

    def path(self, patient_id: str, field: str) -> Path | None:
        """Absolute path of a patient's file (None for a missing optional follow-up file)."""
        rel = self.row(patient_id).get(field)
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            return None
        return self.root / str(rel)

    def load_patient(self, patient_id: str, fields: tuple[str, ...] | None = None) -> dict[str, Volume]:
        """Load a patient's files (default: all present), checked and on one grid."""
        fields = fields or IMAGE_FIELDS + MASK_FIELDS
        vols: dict[str, Volume] = {}
        for f in fields:
            p = self.path(patient_id, f)
            if p is None:
                continue
            vols[f] = load_volume(p, mask=f in MASK_FIELDS, field=f)
        check_same_grid(list(vols.values()))
        return vols

    def visit_rows(self, patient_id: str) -> pd.DataFrame:
        """The patient's rows of visits.csv by visit_index (empty without visits.csv)."""
        if self.visits is None:
            return pd.DataFrame()
        return self.visits[self.visits["patient_id"] == patient_id].sort_values("visit_index")

    def load_visit(self, patient_id: str, visit: str) -> dict[str, Volume]:
        """Load the files one visit names in visits.csv, checked and on one grid (none for a missing visit)."""
        rows = self.visit_rows(patient_id)
        hit = rows[rows["visit"] == visit]
        if len(hit) == 0:
            raise InputError(self.root / "visits.csv", f"patient {patient_id!r} has no visit {visit!r}", field="visit")
        rec = hit.iloc[0]
        vols: dict[str, Volume] = {}
        for f in rows.columns:
            if f in _VISIT_FILES and isinstance(rec[f], str) and rec[f]:
                vols[f] = load_volume(self.root / rec[f], mask=f in VISIT_MASK_FIELDS, field=f)
        check_same_grid(list(vols.values()))
        return vols


def read_cohort(root: str | Path, *, check_files: bool = True) -> Cohort:
    """Open a cohort folder and validate its tables: manifest.csv and arms.csv, and each of visits.csv,
    truth.csv, truth_visits.csv, truth_lesions.csv, oracle_inputs.csv that is present (a single-visit
    cohort of earlier versions has only the first three)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "cohort folder not found")
    arms = read_arms(root / "arms.csv")
    manifest = read_manifest(root / "manifest.csv", arms, check_files=check_files)
    visits = read_visits(root / "visits.csv", manifest, check_files=check_files) if (root / "visits.csv").exists() else None
    truth = read_truth(root / "truth.csv", manifest, arms) if (root / "truth.csv").exists() else None
    truth_visits = read_truth_visits(root / "truth_visits.csv", manifest, arms, visits) if (root / "truth_visits.csv").exists() else None
    if (root / "truth_lesions.csv").exists():
        read_patient_table(root / "truth_lesions.csv", "truth_lesions", manifest, every_patient=False)
    oracle = read_patient_table(root / "oracle_inputs.csv", "oracle_inputs", manifest, every_patient=True) if (root / "oracle_inputs.csv").exists() else None
    return Cohort(root, manifest, arms, truth, visits, truth_visits, oracle)
