"""Write a cohort folder (docs/cohort_format.md) as a BIDS dataset, with its masks as derivatives.

Layout written (docs/bids.md)::

    OUT/dataset_description.json  README  participants.tsv  participants.json  arms.tsv  .bidsignore
    OUT/sub-<pid>/sub-<pid>_sessions.tsv   (session_id, acq_time, scheduled_weeks, weeks) and its .json
    OUT/sub-<pid>/ses-<visit>/anat/sub-<pid>_ses-<visit>_{T1w,T2w,FLAIR,PDw,ce-gadolinium_T1w}.nii.gz
    OUT/derivatives/<pipeline>/dataset_description.json
    OUT/derivatives/<pipeline>/sub-<pid>/ses-<visit>/anat/..._label-lesion_desc-{T2,gd,net2,net2cumulative}_mask.nii.gz

Images are copied byte for byte (no resampling), so a cohort -> BIDS -> cohort round trip is exact.
Only visits that took place have a session; truth-only files (truth*.csv, simulation.json,
tissues, ...) are not exported: a BIDS dataset is what a real trial has. `arms.tsv` (the cohort's
arms table; listed in `.bidsignore`, as BIDS has no place for it) carries labels, efficacy and the
reference arm.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd

from mseval import __version__
from mseval.bids.entities import BIDS_VERSION, LABEL_RE, SEQUENCES, VISIT_MASKS, MaskEntities, bids_path
from mseval.errors import InputError
from mseval.io.atomic import atomic_dir
from mseval.io.cohort import Cohort, read_cohort

ACQ_EPOCH = dt.datetime(2000, 1, 3)
"""acq_time of week 0 in sessions.tsv: dates are shifted to this epoch (BIDS allows shifted dates);
only the differences carry information."""

_NOT_PARTICIPANT = {"patient_id", "followup_weeks", "t1", "t2", "flair", "pd", "t1gd", "mtr", "brain_mask", "t2_lesion_mask",
                    "gd_lesion_mask", "t2_lesion_mask_followup", "net2_mask"}
_COLUMN_DOCS = {
    "age": {"Description": "age at baseline", "Units": "year"},
    "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
    "site": {"Description": "recruiting site (scanner)"},
    "edss": {"Description": "Expanded Disability Status Scale at baseline"},
    "t2_volume_mm3": {"Description": "baseline T2 lesion volume", "Units": "mm^3"},
    "gd_count": {"Description": "baseline gadolinium-enhancing lesion count"},
}

_SESSION_DOCS = {
    "session_id": {"Description": "session label; ses-w<N>: scheduled at week N"},
    "acq_time": {"Description": f"acquisition date, shifted so that week 0 is {ACQ_EPOCH.date()}"},
    "scheduled_weeks": {"Description": "planned week of the visit after baseline", "Units": "week"},
    "weeks": {"Description": "week of the scan after the baseline scan", "Units": "week"},
}
"""Data dictionary of every `sub-<id>_sessions.tsv`, written beside each one (`sub-<id>_sessions.json`):
the BIDS validator 1.15.0 refuses a top-level `sessions.json`."""


def _label(value: str, what: str, file: Path, row: int) -> str:
    if not LABEL_RE.match(value):
        raise InputError(file, f"{what} {value!r} is not a BIDS label (letters and digits only)", row=row,
                         field="patient_id" if what == "patient" else "visit")
    return value


def _visit_rows(cohort: Cohort) -> pd.DataFrame:
    if cohort.visits is None:
        raise InputError(cohort.root, "no visits.csv: BIDS export needs a multi-visit cohort (one session per visit)", field="visits")
    return cohort.visits[cohort.visits["missing"].isna()].sort_values(["patient_id", "visit_index"], kind="stable")


def _participants(cohort: Cohort) -> tuple[pd.DataFrame, dict]:
    m = cohort.manifest
    cols = [c for c in m.columns if c not in _NOT_PARTICIPANT]
    table = pd.concat([("sub-" + m["patient_id"]).rename("participant_id"), m[cols]], axis=1)
    levels = {str(r["arm"]): str(r["label"]) for _, r in cohort.arms.iterrows()}
    docs = {c: _COLUMN_DOCS.get(c, {"Description": c}) for c in cols if c != "arm"}
    docs["arm"] = {"Description": "randomized arm (arms.tsv: label, efficacy, reference arm)", "Levels": levels}
    return table, docs


def export_bids(cohort_dir: str | Path, out: str | Path, *, pipeline: str = "mseval", masks: MaskEntities = MaskEntities(),
                include_net2: bool = True, overwrite: bool = False) -> Path:
    """Write the cohort at `cohort_dir` as a BIDS dataset at `out` (atomically: all or nothing).

    pipeline: the derivatives folder name for the masks; include_net2: also write the NET2 masks (False:
    only T2/Gd lesion masks, so an importer must compute NET2 itself). Returns `out`.
    """
    cohort = read_cohort(cohort_dir)
    out = Path(out)
    if not LABEL_RE.match(pipeline):
        raise InputError(None, f"--pipeline {pipeline!r}: letters and digits only", field="pipeline")
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    visits = _visit_rows(cohort)
    for k, pid in enumerate(cohort.manifest["patient_id"]):
        _label(str(pid), "patient", cohort.root / "manifest.csv", k + 1)
    for k, v in zip(visits.index, visits["visit"]):
        _label(str(v), "visit", cohort.root / "visits.csv", int(k) + 1)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        deriv = tmp / "derivatives" / pipeline
        for pid, rows in visits.groupby("patient_id", sort=False):
            for _, r in rows.iterrows():
                ses = str(r["visit"])
                for f, ents in SEQUENCES.items():
                    if isinstance(r.get(f), str) and r[f]:
                        _copy(cohort.root / r[f], tmp / bids_path(pid, ses, ents))
                wanted = VISIT_MASKS if include_net2 else VISIT_MASKS[:2]
                for f in wanted:
                    if isinstance(r.get(f), str) and r[f]:
                        _copy(cohort.root / r[f], deriv / bids_path(pid, ses, masks.entities(f), derivative=True))
                if int(r["visit_index"]) == 0:
                    _copy(cohort.root / cohort.manifest.set_index("patient_id").at[pid, "brain_mask"],
                          deriv / bids_path(pid, ses, masks.entities("brain_mask"), derivative=True))
            sessions = pd.DataFrame({
                "session_id": "ses-" + rows["visit"].astype(str),
                "acq_time": [(ACQ_EPOCH + dt.timedelta(weeks=float(w))).isoformat(timespec="seconds") for w in rows["weeks"]],
                "scheduled_weeks": rows["scheduled_weeks"].to_numpy(), "weeks": rows["weeks"].to_numpy()})
            _tsv(sessions, tmp / f"sub-{pid}" / f"sub-{pid}_sessions.tsv")
            _json(_SESSION_DOCS, tmp / f"sub-{pid}" / f"sub-{pid}_sessions.json")
        table, docs = _participants(cohort)
        _tsv(table, tmp / "participants.tsv")
        _json(docs, tmp / "participants.json")
        _tsv(cohort.arms, tmp / "arms.tsv")
        (tmp / ".bidsignore").write_text("arms.tsv\n")
        (tmp / "README").write_text(f"mseval cohort {cohort.root.name}, written by `mseval export bids` (mseval {__version__}).\n"
                                    "Lesion masks: derivatives/" + pipeline + "/. Randomized arms: participants.tsv column `arm`, "
                                    "arms.tsv (labels, efficacy, reference arm).\n")
        generated = [{"Name": "mseval", "Version": __version__}]
        _json({"Name": f"mseval cohort {cohort.root.name}", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "GeneratedBy": generated},
              tmp / "dataset_description.json")
        _json({"Name": f"{pipeline} lesion masks", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative", "GeneratedBy": generated,
               "SourceDatasets": [{"URL": "../../"}]}, deriv / "dataset_description.json")
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _tsv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def _json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
