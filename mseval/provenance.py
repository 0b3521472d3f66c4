"""Provenance of forecasts: were the patients being evaluated seen by the model in training?

A checkpoint records, per patient it trained or validated on, a fingerprint of the patient's
manifest row (`training_provenance`); `forecast_cohort` copies that record into the forecast store
(`provenance.json`, keyed by checkpoint id). `forecast_provenance(cohort, store)` compares it with
the cohort being evaluated and says, for every forecast-based result, whether it is

    in-sample    every evaluated patient was in the model's training set,
    validation   every evaluated patient was in its validation split (seen for model selection only),
    held-out     no evaluated patient was seen (a new trial, or patients kept apart),
    mixed        some of each (the counts say how many),
    not trained  the forecasts come from a simulated forecaster (oracle, null...) that learned nothing,
    unknown      the store records no provenance (forecasts written before it was recorded).

A patient "was seen" when both its id and its fingerprint match: patient ids repeat between
simulated trials (P001, P002, ...), so an id alone would call a new trial in-sample.
The fingerprint is the SHA-256 of the patient's manifest row without its file paths (id, arm,
site, age, sex, EDSS, baseline lesion volume, follow-up, ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from mseval.io.atomic import write_json_atomic

PROVENANCE_FILE = "provenance.json"
STATUSES = ("in-sample", "validation", "held-out", "mixed", "not trained", "unknown")


def _path_columns(manifest: pd.DataFrame) -> set[str]:
    from mseval.io.cohort import IMAGE_FIELDS, MASK_FIELDS

    return set(IMAGE_FIELDS) | set(MASK_FIELDS)


def patient_fingerprints(manifest: pd.DataFrame) -> dict[str, str]:
    """{patient_id: first 16 hex of SHA-256 over the row's non-path values (column=value, sorted)}."""
    skip = _path_columns(manifest)
    cols = sorted(c for c in manifest.columns if c not in skip)
    out = {}
    for _, row in manifest.iterrows():
        text = "|".join(f"{c}={_canon(row[c])}" for c in cols)
        out[str(row["patient_id"])] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def _canon(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def cohort_fingerprint(manifest: pd.DataFrame) -> str:
    """First 16 hex of SHA-256 over the sorted patient fingerprints: the cohort as a whole."""
    fp = patient_fingerprints(manifest)
    return hashlib.sha256("\n".join(f"{k}:{v}" for k, v in sorted(fp.items())).encode()).hexdigest()[:16]


def training_provenance(cohort: Any, train_ids: list[str], val_ids: list[str]) -> dict[str, Any]:
    """The record a checkpoint keeps: cohort fingerprint and {patient: fingerprint} of its
    training and validation patients (`cohort`: an `mseval.io.cohort.Cohort`)."""
    fp = patient_fingerprints(cohort.manifest)
    return {"cohort_fingerprint": cohort_fingerprint(cohort.manifest), "cohort_name": Path(str(cohort.root)).name,
            "train": {p: fp[p] for p in train_ids}, "validation": {p: fp[p] for p in val_ids}}


def write_store_provenance(store_root: str | Path, checkpoint_id: str, provenance: dict[str, Any]) -> None:
    """Add (or replace) the provenance of `checkpoint_id` in the store's provenance.json."""
    path = Path(store_root) / PROVENANCE_FILE
    doc = json.loads(path.read_text()) if path.is_file() else {"format": "mseval-forecast-provenance", "checkpoints": {}}
    doc["checkpoints"][str(checkpoint_id)] = dict(provenance)
    write_json_atomic(doc, path)


def classify(cohort_manifest: pd.DataFrame, provenance: dict[str, Any] | None) -> dict[str, Any]:
    """Compare one checkpoint's provenance with a cohort: status and patient counts per category."""
    fp = patient_fingerprints(cohort_manifest)
    if not provenance or ("train" not in provenance and "validation" not in provenance):
        return {"status": "unknown", "n_patients": len(fp), "n_in_sample": None, "n_validation": None, "n_held_out": None}
    train, val = provenance.get("train", {}), provenance.get("validation", {})
    n_in = sum(1 for p, f in fp.items() if train.get(p) == f)
    n_val = sum(1 for p, f in fp.items() if val.get(p) == f)
    n_out = len(fp) - n_in - n_val
    counts = {"in-sample": n_in, "validation": n_val, "held-out": n_out}
    nonzero = [k for k, v in counts.items() if v]
    status = nonzero[0] if len(nonzero) == 1 else "mixed"
    return {"status": status, "n_patients": len(fp), "n_in_sample": n_in, "n_validation": n_val, "n_held_out": n_out,
            "trained_on_cohort": provenance.get("cohort_fingerprint"), "evaluated_cohort": cohort_fingerprint(cohort_manifest),
            "n_trained_on": len(train), "n_validated_on": len(val),
            **{k: provenance[k] for k in ("device", "world_size", "torch_threads") if k in provenance}}


def forecast_provenance(cohort_dir: str | Path, forecasts_dir: str | Path) -> dict[str, Any]:
    """Where the forecasts in `forecasts_dir` were trained, relative to the cohort evaluated.

    Returns {"status", "sentence", "checkpoints": [{"checkpoint", "status", counts...}], "n_patients"}
    (status one of `STATUSES`); `sentence` is the line a report prints.
    """
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore

    cohort = read_cohort(cohort_dir)
    store = ForecastStore.open(forecasts_dir)
    idx = store.index()
    path = Path(forecasts_dir) / PROVENANCE_FILE
    recorded = json.loads(path.read_text()).get("checkpoints", {}) if path.is_file() else {}
    per = []
    # every model behind the blocks: the checkpoints the index names, and those the store records beside them (rendered
    # trajectories: the image forecaster that drew them, next to the decoder that rendered them)
    for ck in sorted(set(idx["checkpoint"].astype(str)) | set(recorded)):
        if ck in recorded:
            per.append({"checkpoint": ck, **classify(cohort.manifest, recorded[ck])})
        elif _simulated(idx[idx["checkpoint"].astype(str) == ck]):
            per.append({"checkpoint": ck, "status": "not trained", "n_patients": len(cohort.manifest)})
        else:
            per.append({"checkpoint": ck, **classify(cohort.manifest, None)})
    statuses = sorted({p["status"] for p in per})
    status = statuses[0] if len(statuses) == 1 else "mixed"
    return {"status": status, "sentence": _sentence(status, per), "checkpoints": per, "n_patients": int(len(cohort.manifest))}


def _simulated(rows: pd.DataFrame) -> bool:
    """A block written by `mseval.simulate.forecasters` (no trained model behind it): neither the project's
    sampler (`model` "forecast") nor `mseval forecast import` (`model` "imported", an unknown model) wrote it."""
    if str(rows["checkpoint"].iloc[0]).startswith("simulated-"):
        return True
    models = ('"model": "forecast"', '"model":"forecast"', '"model": "imported"', '"model":"imported"')
    return bool(len(rows)) and all(not any(m in str(s) for m in models) for s in rows["sampler"])


def _sentence(status: str, per: list[dict[str, Any]]) -> str:
    if status == "not trained":
        return ("Forecasts come from a simulated forecaster (no model was trained), so there is no training set: "
                "forecast-based results are neither in-sample nor held-out.")
    if status == "unknown":
        return ("UNKNOWN provenance: the forecast store records no training patients, so forecast-based results may be in-sample "
                "(fitted to these same patients) and must not be read as held-out performance.")
    parts = []
    for p in per:
        if p["status"] in ("not trained", "unknown"):
            parts.append(f"{p['checkpoint']}: {p['status']}")
            continue
        parts.append(f"checkpoint {p['checkpoint']} trained on {p['n_trained_on']} patients (validation {p['n_validated_on']}) of cohort "
                     f"{p['trained_on_cohort']}; of the {p['n_patients']} patients evaluated here (cohort {p['evaluated_cohort']}) "
                     f"{p['n_in_sample']} were in its training set, {p['n_validation']} in its validation set, {p['n_held_out']} never seen")
    head = {"in-sample": "IN-SAMPLE: the model was trained on the patients it is evaluated on, so forecast-based results are optimistic",
            "validation": "VALIDATION: the evaluated patients were the model's validation split (not trained on, but used to follow training)",
            "held-out": "HELD-OUT: the model never saw the evaluated patients",
            "mixed": "MIXED: some evaluated patients were seen in training; forecast-based results are partly in-sample"}[status]
    return head + " (" + "; ".join(parts) + ")."
