"""Find what a BIDS dataset holds, with pybids, and check it before anything is written.

`scan_bids` reads participants.tsv (age, sex, site, the arm column named by an option, and edss,
t2_volume_mm3, gd_count where present), each subject's sessions (weeks from sessions.tsv's `weeks`
column, else from its `acq_time` against the baseline session's, else from a `ses-w<N>` label), the
anatomical images by entities (`SEQUENCES`) and the masks of one derivatives pipeline (`MaskEntities`).
Every problem is an `InputError` naming the subject/session (or file), the field and what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.bids.entities import SEQUENCES, MaskEntities
from mseval.errors import InputError
from mseval.lesions.net2 import Net2Rule

WEEK_LABEL = re.compile(r"^w(?:eek)?(\d+(?:\.\d+)?)$", re.IGNORECASE)
"""A session label that names its scheduled week: `w24`, `W48`, `week96`."""
BASELINE_REQUIRED = ("t1", "t2", "flair", "pd", "t1gd", "brain_mask", "t2_lesion_mask", "gd_lesion_mask")
_SEX = {"f": "F", "female": "F", "m": "M", "male": "M"}
_NA = ["n/a", ""]


@dataclass(frozen=True)
class ImportOptions:
    """How to read a BIDS dataset. derivatives: the pipeline folder under `derivatives/` holding the
    masks; arm_column: the participants.tsv column with the randomized arm; arms: the arms table
    (arm, label, efficacy, reference; default BIDS_ROOT/arms.tsv); baseline_session: the label of the
    baseline session; followup_sequences: the cohort image fields every follow-up session must have;
    coreg_tol_mm: co-registration tolerance (mseval.bids.grids)."""

    derivatives: str = "mseval"
    arm_column: str = "arm"
    arms: Path | None = None
    baseline_session: str = "baseline"
    masks: MaskEntities = field(default_factory=MaskEntities)
    followup_sequences: tuple[str, ...] = ("flair", "t1", "t1gd")
    coreg_tol_mm: float = 1.0
    net2_rule: Net2Rule = field(default_factory=Net2Rule)


@dataclass
class Session:
    """One session of one subject: its label, weeks after baseline, scheduled week, and the files
    found, by cohort field (`t1`, ..., `t2_lesion_mask`, ...) -> absolute path."""

    subject: str
    label: str
    weeks: float
    scheduled_weeks: float
    files: dict[str, Path]

    @property
    def where(self) -> str:
        return f"sub-{self.subject}/ses-{self.label}"


@dataclass
class BidsPlan:
    """What `scan_bids` found: participants (one row per subject, manifest columns), arms (arms.csv
    columns), sessions per subject in time order, and the schedule (label -> scheduled week)."""

    root: Path
    participants: pd.DataFrame
    arms: pd.DataFrame
    sessions: dict[str, list[Session]]
    schedule: dict[str, float]


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=_NA, keep_default_na=False, dtype=str)


def _participants(root: Path, opts: ImportOptions, subjects: list[str]) -> pd.DataFrame:
    path = root / "participants.tsv"
    if not path.is_file():
        raise InputError(path, "not found: participants.tsv is needed (participant_id, age, sex, site and the arm)")
    tab = _read_tsv(path)
    for col in ("participant_id", opts.arm_column, "age", "sex", "site", "edss"):
        if col not in tab.columns:
            raise InputError(path, f"no column {col!r} (columns: {', '.join(tab.columns)})", field=col)
    rows = []
    for k, r in tab.iterrows():
        row, pid = int(k) + 1, str(r["participant_id"]).removeprefix("sub-")
        for col in ("participant_id", opts.arm_column, "age", "sex", "site", "edss"):
            if pd.isna(r[col]):
                what = "no arm" if col == opts.arm_column else f"no {col}"
                raise InputError(path, f"participant sub-{pid} has {what}", row=row, field=col)
        sex = _SEX.get(str(r["sex"]).strip().lower())
        if sex is None:
            raise InputError(path, f"participant sub-{pid}: sex {r['sex']!r} is not F/M/female/male", row=row, field="sex")
        rec = {"patient_id": pid, "arm": str(r[opts.arm_column]), "site": str(r["site"]), "age": _num(r["age"], path, row, "age", pid),
               "sex": sex, "edss": _num(r["edss"], path, row, "edss", pid)}
        for col in ("t2_volume_mm3", "gd_count"):
            rec[col] = _num(r[col], path, row, col, pid) if col in tab.columns and not pd.isna(r[col]) else None
        rows.append(rec)
    out = pd.DataFrame(rows)
    for pid in subjects:
        if pid not in set(out["patient_id"]):
            raise InputError(path, f"subject sub-{pid} has a folder but no row", field="participant_id")
    extra = [p for p in out["patient_id"] if p not in set(subjects)]
    if extra:
        raise InputError(root / f"sub-{extra[0]}", f"participant sub-{extra[0]} of participants.tsv has no folder with images", field="participant_id")
    return out


def _num(value: str, path: Path, row: int, col: str, pid: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(path, f"participant sub-{pid}: {col} {value!r} is not a number", row=row, field=col) from None


def _arms(root: Path, opts: ImportOptions, participants: pd.DataFrame) -> pd.DataFrame:
    path = Path(opts.arms) if opts.arms is not None else root / "arms.tsv"
    if not path.is_file():
        raise InputError(path, "no arms table: give --arms FILE (arm, label, efficacy, reference; CSV or TSV)", field="arms")
    from mseval.io.cohort import read_arms

    if path.suffix == ".tsv":  # read_arms checks a CSV; a TSV is converted in memory through a temporary CSV
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "arms.csv"
            _read_tsv(path).to_csv(csv, index=False)
            try:
                arms = read_arms(csv)
            except InputError as exc:
                raise InputError(path, exc.problem, row=exc.row, field=exc.field) from None
    else:
        arms = read_arms(path)
    unknown = participants.loc[~participants["arm"].isin(set(arms["arm"])), ["patient_id", "arm"]]
    if len(unknown):
        pid, arm = unknown.iloc[0]
        raise InputError(root / "participants.tsv", f"participant sub-{pid}: arm {arm!r} is not in {path.name} ({', '.join(arms['arm'])})",
                         row=int(unknown.index[0]) + 1, field=opts.arm_column)
    return arms


def _one(found: list[str], where: str, fld: str) -> Path | None:
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(Path(f).name for f in found)
        raise InputError(where, f"{len(found)} files match ({names}); keep one (or tell them apart by run/acq and remove the others)", field=fld)
    return Path(found[0])


def _session_weeks(layout, root: Path, subject: str, labels: list[str], opts: ImportOptions) -> dict[str, tuple[float, float]]:  # noqa: ANN001
    """label -> (weeks, scheduled_weeks) for one subject's sessions."""
    files = layout.get(subject=subject, suffix="sessions", extension=".tsv", return_type="filename")
    tab = _read_tsv(Path(files[0])).set_index("session_id") if files else pd.DataFrame()
    where_tab = Path(files[0]) if files else root / f"sub-{subject}"
    base_time = None
    if "acq_time" in tab.columns and f"ses-{opts.baseline_session}" in tab.index:
        base_time = pd.to_datetime(tab.at[f"ses-{opts.baseline_session}", "acq_time"], errors="coerce")
    out = {}
    for label in labels:
        where = f"sub-{subject}/ses-{label}"
        rec = tab.loc[f"ses-{label}"] if f"ses-{label}" in tab.index else pd.Series(dtype=str)
        m = WEEK_LABEL.match(label)
        sched = float(m.group(1)) if m else None
        if rec.get("scheduled_weeks") is not None and not pd.isna(rec.get("scheduled_weeks")):
            sched = float(rec["scheduled_weeks"])
        weeks = None
        if rec.get("weeks") is not None and not pd.isna(rec.get("weeks")):
            weeks = float(rec["weeks"])
        elif base_time is not None and rec.get("acq_time") is not None and not pd.isna(rec.get("acq_time")):
            weeks = float((pd.to_datetime(rec["acq_time"]) - base_time) / pd.Timedelta(weeks=1))
        if label == opts.baseline_session:
            weeks, sched = 0.0, 0.0
        if weeks is None:
            weeks = sched
        if weeks is None or sched is None:
            raise InputError(where_tab, f"{where}: cannot tell the week of the session: name it ses-w<N> or give weeks "
                                        "(and scheduled_weeks) in sessions.tsv", field="weeks")
        out[label] = (weeks, sched)
    return out


def _select(found: list, query: dict) -> list[str]:
    """Paths of the pybids files `found` whose entities match `query` as `layout.get` matches them (a
    value: equal; `Query.NONE`: the entity absent), in `layout.get`'s order (natural sort)."""
    from bids.layout import Query
    from bids.utils import natural_sort

    hits = []
    for f in found:
        ents = f.get_entities()
        if all((k not in ents) if v is Query.NONE else (k in ents and str(ents[k]) == str(v)) for k, v in query.items()):
            hits.append(f.path)
    return natural_sort(hits)


def _files(layout, deriv, subject: str, label: str, opts: ImportOptions) -> dict[str, Path]:  # noqa: ANN001
    from bids.layout import Query

    where, ext = f"sub-{subject}/ses-{label}", [".nii.gz", ".nii"]
    # one index query per layout and session (one per file field took most of an import's time), then matched here
    anat = layout.get(subject=subject, session=label, datatype="anat", extension=ext)
    derived = deriv.get(subject=subject, session=label, extension=ext)
    files: dict[str, Path] = {}
    for fld, ents in SEQUENCES.items():
        hit = _one(_select(anat, {"ceagent": Query.NONE, **ents}), where, fld)
        if hit is not None:
            files[fld] = hit
    for fld in ("brain_mask", "t2_lesion_mask", "gd_lesion_mask", "net2_mask", "net2_mask_cumulative"):
        hit = _one(_select(derived, {"desc": Query.NONE, **opts.masks.entities(fld)}), where, fld)
        if hit is not None:
            files[fld] = hit
    return files


def _describe(fld: str, opts: ImportOptions) -> str:
    if fld in SEQUENCES:
        e = SEQUENCES[fld]
        return ("ce-" + e["ceagent"] + "_" if "ceagent" in e else "") + e["suffix"] + " image"
    e = opts.masks.entities(fld)
    return f"mask {'_'.join(f'{k}-{v}' for k, v in e.items() if k != 'suffix')}_mask in derivatives/{opts.derivatives}"


def scan_bids(root: str | Path, opts: ImportOptions = ImportOptions()) -> BidsPlan:
    """Index the dataset at `root` with pybids and check it (see the module docstring). Writes nothing."""
    from bids import BIDSLayout

    root = Path(root)
    if not (root / "dataset_description.json").is_file():
        raise InputError(root, "not a BIDS dataset (no dataset_description.json)")
    deriv_root = root / "derivatives" / opts.derivatives
    if not (deriv_root / "dataset_description.json").is_file():
        raise InputError(deriv_root, "derivatives pipeline not found (no dataset_description.json): name it with --derivatives", field="derivatives")
    layout = BIDSLayout(root, validate=False)
    deriv = BIDSLayout(deriv_root, validate=False, is_derivative=True)
    subjects = layout.get_subjects()
    participants = _participants(root, opts, subjects)
    arms = _arms(root, opts, participants)
    sessions: dict[str, list[Session]] = {}
    schedule: dict[str, float] = {}
    for pid in participants["patient_id"]:
        labels = layout.get_sessions(subject=pid)
        if opts.baseline_session not in labels:
            raise InputError(root / f"sub-{pid}", f"sub-{pid} has no baseline session ses-{opts.baseline_session} (sessions: "
                                                  f"{', '.join(labels) or 'none'}; name it with --baseline-session)", field="session")
        weeks = _session_weeks(layout, root, pid, labels, opts)
        rows = []
        for label in sorted(labels, key=lambda s: weeks[s][0]):
            files = _files(layout, deriv, pid, label, opts)
            rows.append(Session(pid, label, weeks[label][0], weeks[label][1], files))
            schedule.setdefault(label, weeks[label][1])
        for s in rows:
            needed = BASELINE_REQUIRED if s.label == opts.baseline_session else (*opts.followup_sequences, "t2_lesion_mask")
            for fld in needed:
                if fld not in s.files:
                    raise InputError(s.where, f"no {_describe(fld, opts)} found", field=fld)
        w = np.array([s.weeks for s in rows])
        if len(w) > 1 and not (np.diff(w) > 0).all():
            raise InputError(rows[int(np.argmin(np.diff(w))) + 1].where, "two sessions at the same week", field="weeks")
        sessions[pid] = rows
    return BidsPlan(root, participants, arms, sessions, dict(sorted(schedule.items(), key=lambda kv: kv[1])))
