"""A disk cache of the image count model's per-patient arrays (`forecast.image_count_data.load_arrays(..., cache=DIR)`).

Why: reading a patient (N4 bias correction, WhiteStripe) costs seconds at 32^3 and minutes at 1 mm, and the training
loop visits every patient every epoch. With a cache, each patient is read once, written as
`DIR/<key>.cond.npy` (C, X, Y, Z) float32, `<key>.brain.npy` (X, Y, Z) bool and `<key>.npz` (tabular features, arm,
visit horizons, counts, centres; written last, so a half-written entry is never taken), and handed back with its two
volumes memory-mapped: host memory then holds the batch being collated, not the training set, and a stopped job
resumes without reading again what it had read.

The key is the SHA-256 of everything the arrays depend on: the patient's manifest and visits.csv rows (values, and for
every file they name its path, size and modification time), the inputs and their order, the normalisation, whether
targets were read, the arms, the visit schedule and this format's version. A changed file gives a new key (the old
entry stays, unused); nothing else is ever read from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from forecast.image_count import PatientArrays
from mseval.io.cohort import Cohort

FORMAT = 1


def _values(row: pd.Series, root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for c, v in row.items():
        if isinstance(v, float) and v != v:
            out[str(c)] = None
            continue
        out[str(c)] = v if isinstance(v, (int, float, str, bool)) else str(v)
        if isinstance(v, str) and v and (root / v).is_file():
            st = (root / v).stat()
            out[f"{c}@file"] = [st.st_size, st.st_mtime_ns]
    return out


def patient_key(cohort: Cohort, pid: str, *, arms: Sequence[str], inputs: Sequence[str], with_targets: bool, normalization: str,
                visits: Sequence[str]) -> str:
    """The cache key of one patient's arrays (module docstring): 64 hex digits."""
    root = Path(cohort.root)
    rows = cohort.visit_rows(pid) if cohort.visits is not None else None
    doc = {"format": FORMAT, "patient": str(pid), "manifest": _values(cohort.row(pid), root),
           "visits": [_values(r, root) for _, r in rows.iterrows()] if rows is not None else [],
           "arms": list(arms), "inputs": list(inputs), "with_targets": bool(with_targets), "normalization": normalization,
           "schedule": list(visits)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def has_entry(cache: Path, key: str) -> bool:
    return (cache / f"{key}.npz").is_file()


def write_entry(cache: Path, key: str, p: PatientArrays) -> None:
    """Write one patient's arrays (the small file last, each by an atomic rename)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, arr in (("cond", p.cond), ("brain", p.brain)):
        tmp = cache / f".{key}.{name}.{os.getpid()}.npy"
        np.save(tmp, np.asarray(arr))  # the memory layout kept (nibabel gives Fortran order): the same sums, bit for bit
        os.replace(tmp, cache / f"{key}.{name}.npy")
    tmp = cache / f".{key}.{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, tab=p.tab, arm=np.int64(p.arm), years=p.years, counts=p.counts, centres=p.centres)
    os.replace(tmp, cache / f"{key}.npz")


def open_entry(cache: Path, key: str) -> PatientArrays:
    """One patient's arrays, cond and brain memory-mapped read-only."""
    with np.load(cache / f"{key}.npz") as z:
        small = {k: z[k] for k in z.files}
    return PatientArrays(np.load(cache / f"{key}.cond.npy", mmap_mode="r"), np.load(cache / f"{key}.brain.npy", mmap_mode="r"),
                         small["tab"], int(small["arm"]), small["years"], small["counts"], small["centres"])


__all__ = ["FORMAT", "has_entry", "open_entry", "patient_key", "write_entry"]
