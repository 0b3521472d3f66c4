"""Read a multi-visit cohort into `forecast.image_count.PatientArrays` (baseline inputs, observed NET2 per visit).

Inputs are the baseline channels the config names (images z-scored inside the brain mask, masks 0/1),
the tabular features read from the baseline masks (`mseval.lesions.baseline_features`, outcome not
read) and the age. Targets are observed data only: per follow-up visit, the lesion count of the
cumulative NET2 mask (new/enlarging since baseline; 26-connectivity, >= 3 mm^3, the rule forecasts are
counted with) and its horizon in years (visits.csv `weeks`; the scheduled week for a missing visit); the centres of the last observed
cumulative mask's lesions. Nothing here reads the simulator's truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.centres import lesion_centres
from forecast.preprocess import preprocess_images
from forecast.image_count import FEATURES, PatientArrays
from mseval.errors import InputError
from mseval.io.cohort import Cohort
from mseval.io.nifti import load_volume, read_spacing
from mseval.lesions.baseline_features import baseline_features
from mseval.lesions.components import count_lesions
from mseval.units import WEEKS_PER_YEAR

IMAGE_CHANNELS = ("t1", "t2", "flair", "pd", "t1gd")
MASK_CHANNELS = ("t2_lesion_mask", "gd_lesion_mask")
OPTIONAL_IMAGE_CHANNELS = ("mtr",)
"""Images a cohort may hold beside the five sequences (the simulator's `--mtr` map: magnetization transfer ratio,
lower at future lesion sites); z-scored inside the brain like the others when named in `inputs`."""


def visit_horizons(cohort: Cohort) -> tuple[str, ...]:
    """The follow-up visit names of a multi-visit cohort, in schedule order. InputError without visits.csv."""
    if cohort.visits is None:
        raise InputError(cohort.root / "visits.csv", "the image count model needs a multi-visit cohort (visits.csv is absent)", field="visit")
    v = cohort.visits[cohort.visits["visit_index"] > 0].drop_duplicates("visit_index").sort_values("visit_index")
    return tuple(str(x) for x in v["visit"])


def visit_schedule(cohort: Cohort) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(follow-up visit names, their scheduled weeks) in schedule order; InputError without visits.csv."""
    names = visit_horizons(cohort)
    v = cohort.visits[cohort.visits["visit_index"] > 0].drop_duplicates("visit").set_index("visit")["scheduled_weeks"]
    return names, tuple(float(v[n]) for n in names)


def cohort_spacing(cohort: Cohort, pid: str) -> tuple[float, float, float]:
    """(x, y, z) voxel size in mm of the patient's baseline brain mask (the grid a model reads it on), from its header."""
    path = cohort.path(pid, "brain_mask")
    if path is None:
        raise InputError(cohort.root / "manifest.csv", f"patient {pid!r} has no brain_mask", row=cohort.patient_ids.index(pid) + 1, field="brain_mask")
    return read_spacing(path, field="brain_mask")


def check_spacing(cohort: Cohort, pid: str, spacing: Sequence[float], expected: Sequence[float], what: str) -> None:
    """InputError naming the patient's manifest row unless `spacing` (its voxel size, mm) is `expected` to 0.1%; `what`
    ends the message (whose voxel size was expected)."""
    if not np.allclose(spacing, expected, rtol=1e-3, atol=0.0):
        mm = lambda sp: " x ".join(f"{v:.3g}" for v in sp)  # noqa: E731
        raise InputError(cohort.root / "manifest.csv", f"patient {pid!r} has voxels of {mm(spacing)} mm, {what} {mm(expected)} mm",
                         row=cohort.patient_ids.index(pid) + 1, field="brain_mask")


def baseline_volumes(cohort: Cohort, pid: str, fields: Sequence[str]) -> dict:
    """The patient's baseline files: manifest.csv's, and an optional image (e.g. `mtr`) from the baseline row of
    visits.csv. InputError naming the channel when the cohort does not hold one the inputs need."""
    vols = cohort.load_patient(pid, tuple(fields))
    missing = [f for f in fields if f not in vols]
    if missing and cohort.visits is not None:
        rows = cohort.visit_rows(pid)
        base = rows[rows["visit_index"] == 0]
        if len(base):
            extra = cohort.load_visit(pid, str(base["visit"].iloc[0]))
            vols.update({f: extra[f] for f in missing if f in extra})
    missing = [f for f in fields if f not in vols]
    if missing:
        raise InputError(cohort.root / "manifest.csv", f"patient {pid!r} has no baseline {', '.join(missing)} image; the model's inputs need "
                         f"{', '.join(fields[1:])}", field=missing[0])
    return vols


def load_arrays(cohort: Cohort, patient_ids: Sequence[str], arms: Sequence[str], *, inputs: Sequence[str] = IMAGE_CHANNELS + MASK_CHANNELS,
                with_targets: bool = True, progress: Callable[[int, int], None] | None = None,
                normalization: str = "brain_z", workers: int = 1, cache: str | Path | None = None) -> list[PatientArrays]:
    """One `PatientArrays` per patient (cond channels in `inputs` order; images by `normalization`,
    `forecast.preprocess`). Without targets, counts are NaN and centres empty, and no follow-up file is
    read (what sampling may see). workers > 1: patients are read in that many processes, in chunks of `READ_CHUNK`
    (N4 bias correction costs about 2 s a patient at 32^3); the arrays and their order are the same. cache: a folder
    (`forecast.image_count_cache`) where each patient is read once and from which cond and brain come back
    memory-mapped (host memory holds `workers x READ_CHUNK` patients while reading, then none); the same arrays."""
    ids = list(patient_ids)
    if cache is not None:
        return _cached(cohort, ids, arms, inputs, with_targets, normalization, workers, progress, Path(cache))
    if workers <= 1 or len(ids) <= READ_CHUNK:
        feats = baseline_features(cohort, ids, outcome=False).set_index("patient_id")
        visits = visit_horizons(cohort) if with_targets else ()
        out = []
        for n, pid in enumerate(ids):
            out.append(_patient_arrays(cohort, feats, visits, pid, arms, inputs, with_targets, normalization))
            if progress:
                progress(n + 1, len(ids))
        return out
    from mseval.parallel import run_jobs

    chunks = [ids[k: k + READ_CHUNK] for k in range(0, len(ids), READ_CHUNK)]
    jobs = [(str(cohort.root), c, tuple(arms), tuple(inputs), with_targets, normalization) for c in chunks]
    done = run_jobs(_read_chunk, jobs, workers, (lambda d, _n: progress(min(d * READ_CHUNK, len(ids)), len(ids))) if progress else None)
    return [p for part in done for p in part]


READ_CHUNK = 8
"""Patients per job when `load_arrays` reads in several processes."""


def _cached(cohort: Cohort, ids: list[str], arms: Sequence[str], inputs: Sequence[str], with_targets: bool, normalization: str, workers: int,
            progress: Callable[[int, int], None] | None, cache: Path) -> list[PatientArrays]:
    from forecast.image_count_cache import has_entry, open_entry, patient_key, write_entry

    visits = visit_horizons(cohort) if with_targets else ()
    keys = [patient_key(cohort, p, arms=arms, inputs=inputs, with_targets=with_targets, normalization=normalization, visits=visits) for p in ids]
    todo = [(p, k) for p, k in zip(ids, keys) if not has_entry(cache, k)]
    block = max(1, workers) * READ_CHUNK
    done = len(ids) - len(todo)
    for lo in range(0, len(todo), block):
        part = todo[lo: lo + block]
        for (_, k), arr in zip(part, load_arrays(cohort, [p for p, _ in part], arms, inputs=inputs, with_targets=with_targets,
                                                 normalization=normalization, workers=workers)):
            write_entry(cache, k, arr)
        done += len(part)
        if progress:
            progress(done, len(ids))
    if progress and not todo:
        progress(len(ids), len(ids))
    return [open_entry(cache, k) for k in keys]


def _read_chunk(job: tuple) -> list[PatientArrays]:
    from mseval.io.cohort import read_cohort

    root, ids, arms, inputs, with_targets, normalization = job
    return load_arrays(read_cohort(root), ids, arms, inputs=inputs, with_targets=with_targets, normalization=normalization)


def _patient_arrays(cohort: Cohort, feats: pd.DataFrame, visits: Sequence[str], pid: str, arms: Sequence[str], inputs: Sequence[str],
                    with_targets: bool, normalization: str) -> PatientArrays:
    vols = baseline_volumes(cohort, pid, ("brain_mask", *inputs))
    brain = vols["brain_mask"].data > 0
    images = preprocess_images({c: vols[c].data for c in inputs if c in IMAGE_CHANNELS + OPTIONAL_IMAGE_CHANNELS}, brain, normalization,
                               vols["brain_mask"].spacing)
    cond = np.stack([images[c] if c in images else (vols[c].data > 0).astype(np.float32) for c in inputs]).astype(np.float32)
    row = feats.loc[pid]
    tab = np.array([row[f] for f in FEATURES], dtype=np.float64)
    years, counts, last = [], [], None
    if with_targets:
        rows = cohort.visit_rows(pid).set_index("visit")
        for v in visits:
            rec = rows.loc[v]
            wk = rec.get("weeks")
            path = rec.get("net2_mask_cumulative")
            if isinstance(path, str) and path and wk == wk:  # only the cumulative NET2 mask of the visit is read
                last = load_volume(cohort.root / path, mask=True, field="net2_mask_cumulative")
                years.append(float(wk) / WEEKS_PER_YEAR)
                counts.append(float(count_lesions(last.data, last.affine, connectivity=26, min_volume_mm3=3.0).count))
            else:  # a missing visit keeps its scheduled week; its count is unknown
                years.append(float(rec["scheduled_weeks"]) / WEEKS_PER_YEAR)
                counts.append(float("nan"))
    centres = lesion_centres(last.data) if last is not None else np.zeros((0, 3), np.int64)
    arm = list(arms).index(str(cohort.row(pid)["arm"]))
    return PatientArrays(cond, brain, tab, arm, np.asarray(years, np.float32), np.asarray(counts, np.float32), centres)


__all__ = ["IMAGE_CHANNELS", "MASK_CHANNELS", "OPTIONAL_IMAGE_CHANNELS", "baseline_volumes", "check_spacing", "cohort_spacing", "load_arrays", "visit_horizons", "visit_schedule"]
