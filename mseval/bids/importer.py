"""Write a cohort folder (docs/cohort_format.md) from a BIDS dataset: `import_bids`.

Steps: `scan_bids` finds and checks every file (mseval.bids.scan); each file's grid is checked
against the patient's baseline grid and kept or resampled (mseval.bids.grids); NET2 masks a pipeline
does not provide are computed from the per-session T2 lesion masks with the project's rule
(`mseval.lesions.net2`: against the previous session that took place for `net2_mask`, against
baseline for `net2_mask_cumulative`). The whole cohort is written atomically, with
`import_report.csv`: one row per subject, session and field, `found` / `resampled` / `computed` /
`missing`. A session absent for one subject but held by others is a missing visit: `dropout` when no
later session of the subject took place, `missed` otherwise.

Lesions are also counted on each mask's native grid (the file as the pipeline wrote it, before any
resampling): `native_lesions.csv`, one row per subject, session and lesion mask, with the columns and
numbers `mseval lesions` gives for that file (26-connected, components >= 3 mm^3). The baseline
`t2_volume_mm3` and `gd_count` of manifest.csv, when participants.tsv does not give them, come from the
native baseline masks too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.bids.entities import SEQUENCES, VISIT_MASKS
from mseval.bids.grids import Grid, check_coregistered, resample_to
from mseval.bids.scan import BidsPlan, ImportOptions, Session, scan_bids
from mseval.errors import InputError
from mseval.io.atomic import atomic_dir, write_csv_atomic
from mseval.io.nifti import load_volume, save_volume
from mseval.lesions.components import count_lesions
from mseval.lesions.net2 import net2_from_visits

VISIT_COLUMNS = ["patient_id", "visit", "visit_index", "scheduled_weeks", "weeks", "missing", "previous_visit", "t1", "t2", "flair", "pd",
                 "t1gd", "mtr", *VISIT_MASKS]
NATIVE_COLUMNS = ["subject", "session", "field", "source", "count", "volume_mm3", "connectivity", "min_volume_mm3", "min_voxels",
                  "orientation", "shape", "voxel_volume_mm3"]
"""native_lesions.csv: lesion count and volume (mm^3) of each lesion mask on its own grid, as `mseval lesions` counts them."""
MANIFEST_COLUMNS = ["patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss", "t2_volume_mm3", "gd_count", "t1", "t2", "flair",
                    "pd", "t1gd", "brain_mask", "t2_lesion_mask", "gd_lesion_mask", "t2_lesion_mask_followup", "net2_mask"]


@dataclass(frozen=True)
class ImportResult:
    """What `import_bids` wrote: the cohort folder and the report (subject, session, field, status, source)."""

    out: Path
    report: pd.DataFrame

    def summary(self) -> str:
        counts = self.report["status"].value_counts()
        subjects = self.report["subject"].nunique()
        parts = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("found", "resampled", "computed", "missing"))
        return f"{subjects} subjects imported into {self.out}: {parts} (see import_report.csv)"


def _grids(plan: BidsPlan, opts: ImportOptions) -> dict[tuple[str, str, str], bool]:
    """(subject, session, field) -> True when the file is on the baseline grid, False to resample; raises when not co-registered."""
    same = {}
    for pid, sessions in plan.sessions.items():
        base = next(s for s in sessions if s.label == opts.baseline_session)
        ref = Grid.of_file(next(base.files[f] for f in SEQUENCES if f in base.files))
        for s in sessions:
            for fld, path in s.files.items():
                same[(pid, s.label, fld)] = check_coregistered(Grid.of_file(path), ref, where=s.where, field=fld, tol_mm=opts.coreg_tol_mm)
    return same


def _place(src: Path, dst: Path, ref: Grid, *, same: bool, mask: bool, field: str) -> None:
    """Copy `src` to `dst` byte for byte (same grid, .nii.gz), else write it on `ref` (resampled or re-encoded)."""
    load_volume(src, mask=mask, field=field)  # decodes, 3D, finite, binary masks: checked before it is written
    dst.parent.mkdir(parents=True, exist_ok=True)
    if same and src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    elif same:
        vol = load_volume(src, mask=mask, field=field)
        save_volume(vol.data, vol.affine, dst)
    else:
        save_volume(resample_to(src, ref, mask=mask), ref.affine, dst)


def native_count(src: Path, field: str) -> dict:
    """The lesions of one mask file on its own grid: {count, volume_mm3 (of the counted lesions), settings,
    orientation, shape, voxel_volume_mm3, voxels (all foreground voxels)}, with `mseval lesions`' defaults."""
    vol = load_volume(src, mask=True, field=field)
    res = count_lesions(vol.data, vol.affine)
    return {"count": res.count, "volume_mm3": res.volume_mm3, "connectivity": 26, "min_volume_mm3": 3.0, "min_voxels": res.min_voxels,
            "orientation": vol.orientation, "shape": "x".join(str(n) for n in vol.shape), "voxel_volume_mm3": vol.voxel_volume_mm3,
            "voxels": int(vol.data.sum())}


def _patient(tmp: Path, pid: str, sessions: list[Session], plan: BidsPlan, opts: ImportOptions, same: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Write one patient's files; returns its visits.csv rows, report rows and native_lesions.csv rows."""
    base = next(s for s in sessions if s.label == opts.baseline_session)
    ref = Grid.of_file(next(base.files[f] for f in SEQUENCES if f in base.files))
    have = {s.label: s for s in sessions}
    rows, report, native, t2 = [], [], [], {}
    took_place = [lab for lab in plan.schedule if lab in have]
    prev = None
    for index, label in enumerate(plan.schedule):
        rec = {c: None for c in VISIT_COLUMNS}
        rec.update(patient_id=pid, visit=label, visit_index=index, scheduled_weeks=plan.schedule[label])
        if label not in have:
            later = took_place and plan.schedule[took_place[-1]] > plan.schedule[label]
            rec["missing"] = "missed" if later else "dropout"
            report.append({"subject": pid, "session": label, "field": "session", "status": "missing", "source": ""})
            rows.append(rec)
            continue
        s = have[label]
        rec.update(scheduled_weeks=s.scheduled_weeks, weeks=s.weeks, previous_visit=prev)
        folder = Path("images") / pid if label == opts.baseline_session else Path("images") / pid / f"ses-{label}"
        for fld, src in s.files.items():
            dst = folder / f"{fld}.nii.gz"
            mask = fld not in SEQUENCES
            _place(src, tmp / dst, ref, same=same[(pid, label, fld)], mask=mask, field=fld)
            if fld != "brain_mask":
                rec[fld] = dst.as_posix()
            report.append({"subject": pid, "session": label, "field": fld, "status": "found" if same[(pid, label, fld)] else "resampled",
                           "source": src.relative_to(plan.root).as_posix()})
            if fld in VISIT_MASKS:
                native.append({"subject": pid, "session": label, "field": fld, "source": src.relative_to(plan.root).as_posix(),
                               **native_count(src, fld)})
        t2[label] = load_volume(tmp / folder / "t2_lesion_mask.nii.gz", mask=True).data
        if label != opts.baseline_session:
            for fld, against in (("net2_mask", prev), ("net2_mask_cumulative", opts.baseline_session)):
                if fld in s.files:
                    continue
                res = net2_from_visits(t2[against], t2[label], ref.affine, opts.net2_rule)
                save_volume(res.mask, ref.affine, tmp / folder / f"{fld}.nii.gz")
                rec[fld] = (folder / f"{fld}.nii.gz").as_posix()
                report.append({"subject": pid, "session": label, "field": fld, "status": "computed", "source": f"net2 rule vs ses-{against}"})
        for fld in (*SEQUENCES, *VISIT_MASKS):
            if rec[fld] is None and not (label == opts.baseline_session and fld.startswith("net2")):
                report.append({"subject": pid, "session": label, "field": fld, "status": "missing", "source": ""})
        rows.append(rec)
        prev = label
    return rows, report, native


def _manifest_row(pid: str, part: pd.Series, visits: pd.DataFrame, native: pd.DataFrame) -> dict:
    v = visits[visits["patient_id"] == pid]
    base = v.iloc[0]
    rec = {c: None for c in MANIFEST_COLUMNS}
    rec.update({k: part[k] for k in ("patient_id", "arm", "site", "age", "sex", "edss", "t2_volume_mm3", "gd_count")})
    for f in ("t1", "t2", "flair", "pd", "t1gd", "t2_lesion_mask", "gd_lesion_mask"):
        rec[f] = base[f]
    rec["brain_mask"] = f"images/{pid}/brain_mask.nii.gz"
    done = v[(v["visit_index"] > 0) & v["missing"].isna()]
    if len(done):
        last = done.iloc[-1]
        rec.update(followup_weeks=last["weeks"], t2_lesion_mask_followup=last["t2_lesion_mask"], net2_mask=last["net2_mask_cumulative"])
    else:
        rec["followup_weeks"] = v.iloc[1]["scheduled_weeks"] if len(v) > 1 else None
    at_base = native[(native["subject"] == pid) & (native["session"] == base["visit"])].set_index("field")
    if rec["t2_volume_mm3"] is None or pd.isna(rec["t2_volume_mm3"]):
        t2 = at_base.loc["t2_lesion_mask"]
        rec["t2_volume_mm3"] = round(float(t2["voxels"]) * float(t2["voxel_volume_mm3"]), 3)
    if rec["gd_count"] is None or pd.isna(rec["gd_count"]):
        rec["gd_count"] = at_base.at["gd_lesion_mask", "count"]
    rec["gd_count"] = int(rec["gd_count"])
    return rec


def import_bids(root: str | Path, out: str | Path, opts: ImportOptions = ImportOptions(), *, overwrite: bool = False) -> ImportResult:
    """Read the BIDS dataset at `root` into a new cohort folder `out` (atomically: all or nothing)."""
    from mseval.io.cohort import read_cohort

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    plan = scan_bids(root, opts)
    same = _grids(plan, opts)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        visit_rows, report, native_rows = [], [], []
        for pid, sessions in plan.sessions.items():
            rows, rep, nat = _patient(tmp, pid, sessions, plan, opts, same)
            visit_rows += rows
            report += rep
            native_rows += nat
        native = pd.DataFrame(native_rows, columns=[*NATIVE_COLUMNS, "voxels"])
        visits = pd.DataFrame(visit_rows, columns=VISIT_COLUMNS)
        if visits["mtr"].isna().all():
            visits = visits.drop(columns="mtr")
        manifest = pd.DataFrame([_manifest_row(pid, part, visits, native) for _, part in plan.participants.set_index("patient_id", drop=False).iterrows()
                                 for pid in [part["patient_id"]]], columns=MANIFEST_COLUMNS)
        write_csv_atomic(manifest, tmp / "manifest.csv")
        write_csv_atomic(visits, tmp / "visits.csv")
        write_csv_atomic(plan.arms, tmp / "arms.csv")
        table = pd.DataFrame(report, columns=["subject", "session", "field", "status", "source"])
        write_csv_atomic(table, tmp / "import_report.csv")
        write_csv_atomic(native[NATIVE_COLUMNS], tmp / "native_lesions.csv")
        try:
            read_cohort(tmp)
        except InputError as exc:  # a bug here, not the user's input; still one line
            raise InputError(exc.file, f"the imported cohort does not validate: {exc.problem}", row=exc.row, field=exc.field) from None
    return ImportResult(out, table)
