"""Checks and summaries of an ensemble counts table (patient_id, arm, sample, count)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.schemas import validate_frame


def check_counts(counts: pd.DataFrame, patients: list[str], arms: list[str], file: str | Path = "counts.parquet", *, all_arms: bool = True) -> int:
    """Validate a counts table against the cohort: schema, every patient x arm present (only the
    allocated arm is needed when `all_arms` is False -- pass the arms to require instead), the same
    number of samples S in every block, sample numbers 0..S-1. Returns S."""
    counts = validate_frame(counts, "counts", file)
    unknown = sorted(set(counts["arm"]) - set(arms))
    if unknown:
        raise InputError(file, f"arm {unknown[0]!r} is not in the arms table ({', '.join(arms)})", field="arm")
    sizes = counts.groupby(["patient_id", "arm"]).size()
    want = pd.MultiIndex.from_product([patients, arms], names=["patient_id", "arm"]) if all_arms else None
    if want is not None:
        missing = want.difference(sizes.index)
        if len(missing):
            p, a = missing[0]
            raise InputError(file, f"no samples for patient {p!r} under arm {a!r} ({len(missing)} blocks missing)", field="sample")
    S = int(sizes.max())
    short = sizes[sizes != S]
    if len(short):
        (p, a), n = short.index[0], int(short.iloc[0])
        raise InputError(file, f"patient {p!r} under arm {a!r} has {n} samples, others have {S}", field="sample")
    bad = counts["sample"] >= S
    if bad.any():
        raise InputError(file, f"sample numbers must run 0..{S - 1}", row=int(np.flatnonzero(bad.to_numpy())[0]) + 1, field="sample")
    return S


def forecast_means(counts: pd.DataFrame) -> pd.DataFrame:
    """Per patient x arm: `expected` (ensemble mean count), `p_active` (share of samples with >= 1
    lesion), `samples`. Wide helpers are built from this long table."""
    g = counts.groupby(["patient_id", "arm"], sort=True)["count"]
    out = pd.DataFrame({"expected": g.mean(), "p_active": g.apply(lambda c: float((c > 0).mean())), "samples": g.size()})
    return out.reset_index()
