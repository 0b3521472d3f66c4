"""Held-out patients for the calibrated counterfactual (`mseval effects --heldout-patients`).

A held-out patient's observed outcome measures the forecaster's error only when the forecaster
never learned from it. The forecast store's provenance (`mseval.provenance`) records, per
checkpoint, the fingerprint of every patient it trained on and of every patient of its validation
split (used to choose epochs), and a checkpoint tuned on validation data records the ids of the
patients its sampler settings were chosen on (`tuned_on`). `check_heldout` refuses any held-out
patient found there, naming it:

- training or validation split: the patient's id AND its manifest fingerprint match (ids repeat
  between simulated trials, so an id alone would refuse patients of a new trial);
- tuning: the id is listed and the tuning record names this cohort (its folder, or the cohort
  fingerprint); a tuning record that names another trial (e.g. "simulated trial seed 2029") does
  not match patients of this one.

`prognostic_independence` applies the same reading to the prognostic score (PROCOVA): a score from
a forecaster that learned from this trial's patients is fitted to their outcomes, not a baseline
covariate, so the saving it shows is optimistic; the result says how many patients it saw, or that
the provenance is unknown.

`heldout_kind` says what the calibrated ratio then is. The held-out patients are always this
trial's own randomized patients (others are refused), so the "calibration" uses the trial's own
observed outcomes: the result is an observed-data ratio estimator with the forecast as covariate,
R_cal = (sum_i E_ia / sum_i E_ir) x (ybar_a / Ebar_a) / (ybar_r / Ebar_r), consistent for the true
marginal ratio by randomization whatever the forecaster's quality. With every randomized patient
held out it is an adjusted analysis of the observed trial, not a forecast, and is labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mseval.errors import InputError
from mseval.provenance import PROVENANCE_FILE, cohort_fingerprint, patient_fingerprints

ALL_PATIENTS = "every randomized patient of this trial"


def _recorded(forecasts_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{checkpoint id: provenance} of the store's provenance.json ({} when absent or unreadable)."""
    path = Path(forecasts_dir) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the forecast provenance ({type(exc).__name__})") from None
    ck = doc.get("checkpoints", {}) if isinstance(doc, dict) else {}
    return {str(k): v for k, v in ck.items() if isinstance(v, dict)}


def _names_cohort(record: dict[str, Any], cohort: Any) -> bool:
    """True when a tuning record names this cohort (its folder or its fingerprint)."""
    fp = cohort_fingerprint(cohort.manifest)
    for key in ("cohort", "cohort_path", "cohort_fingerprint"):
        v = record.get(key)
        if not isinstance(v, str):
            continue
        if v == fp:
            return True
        try:
            if Path(v).resolve() == Path(str(cohort.root)).resolve():
                return True
        except (OSError, ValueError):
            continue
    return False


def seen_by_forecaster(cohort: Any, forecasts_dir: str | Path) -> dict[str, str]:
    """{patient_id: where the forecaster saw it} for this cohort's patients found in the store's
    provenance (training set, validation split or sampler tuning of a checkpoint)."""
    fp = patient_fingerprints(cohort.manifest)
    seen: dict[str, str] = {}
    for ck, prov in sorted(_recorded(forecasts_dir).items()):
        for split, what in (("train", "training set"), ("validation", "validation split")):
            rec = prov.get(split) or {}
            for pid, f in rec.items() if isinstance(rec, dict) else ():
                if fp.get(str(pid)) == f:
                    seen.setdefault(str(pid), f"the {what} of checkpoint {ck}")
        tuned = prov.get("tuned_on")
        if isinstance(tuned, dict) and _names_cohort(tuned, cohort):
            for pid in tuned.get("patients") or []:
                if str(pid) in fp:
                    seen.setdefault(str(pid), f"the patients checkpoint {ck}'s sampler settings were tuned on")
    return seen


def check_heldout(cohort: Any, forecasts_dir: str | Path | None, heldout: tuple[str, ...] | list[str]) -> None:
    """Raise InputError (one line, naming the first such patient) when a held-out patient is not in
    the cohort or was seen by the forecaster (see the module docstring)."""
    ids = set(cohort.patient_ids)
    unknown = [p for p in heldout if p not in ids]
    if unknown:
        raise InputError(None, f"held-out patient {unknown[0]!r} is not in the cohort", field="heldout_patients")
    if forecasts_dir is None:
        return
    seen = seen_by_forecaster(cohort, forecasts_dir)
    for p in heldout:
        if p in seen:
            raise InputError(None, f"held-out patient {p!r} is in {seen[p]} (forecast provenance): its outcome cannot measure the "
                             "forecaster's error; list only patients the forecaster never learned from", field="heldout_patients")


def heldout_kind(cohort: Any, heldout: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """What the calibrated ratio is, given the held-out patients (all of them this trial's randomized
    patients): {"estimator", "label", "all_patients", "n_heldout", "n_randomized", "sentence"}."""
    n, k = len(cohort.patient_ids), len(set(heldout))
    everyone = k == n
    label = "observed-data ratio estimator (forecast as covariate)"
    who = ALL_PATIENTS if everyone else f"{k} of this trial's {n} randomized patients"
    sentence = (f"Held-out patients: {who}. The 'calibrated' ratio re-weights the forecast ratio of means by the observed / forecast "
                "ratio of these patients' own outcomes per arm: an observed-data ratio estimator of the trial's rate ratio with the "
                "forecast as covariate (valid by randomization whatever the forecaster's quality), not a forecast"
                + ("; with every patient held out it is an adjusted analysis of the observed trial." if everyone else "."))
    return {"estimator": "ratio estimator on the trial's own observed outcomes, forecast as covariate", "label": label,
            "all_patients": everyone, "n_heldout": k, "n_randomized": n, "sentence": sentence}


def prognostic_independence(cohort: Any, forecasts_dir: str | Path | None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Is the prognostic forecaster independent of this trial's patients? `provenance`: the store's
    `mseval.provenance.forecast_provenance` (its checkpoint statuses tell "unknown" from "not trained").

    Returns {"status": "independent" | "not trained" | "trained on this trial" | "unknown", "n_seen": patients of this
    trial the forecaster trained, validated or was tuned on (None when unknown), "n_patients", "estimable": False when
    it saw any, "note": the sentence for the prognostic table ("" when independent)}."""
    n = len(cohort.patient_ids)
    base = {"n_patients": n}
    if forecasts_dir is None:
        return {**base, "status": "unknown", "n_seen": None, "estimable": True,
                "note": "the prognostic forecaster's provenance is unknown (counts given without their forecast store): "
                        "if it trained on this trial's patients the saving is optimistic"}
    seen = seen_by_forecaster(cohort, forecasts_dir)
    if seen:
        kinds: dict[str, int] = {}
        for where in seen.values():
            key = "tuning" if "tuned" in where else "validation split" if "validation" in where else "training set"
            kinds[key] = kinds.get(key, 0) + 1
        parts = ", ".join(f"{k} {v}" for k, v in kinds.items())
        return {**base, "status": "trained on this trial", "n_seen": len(seen), "estimable": False,
                "note": f"the prognostic forecaster trained on {len(seen)} of this trial's {n} patients ({parts}; forecast provenance): "
                        "the saving is optimistic (the score is fitted to their outcomes, not a baseline covariate)"}
    statuses = {str(c.get("status")) for c in (provenance or {}).get("checkpoints", [])}
    if provenance is None or not statuses or "unknown" in statuses:
        return {**base, "status": "unknown", "n_seen": None, "estimable": True,
                "note": "the prognostic forecaster's provenance is unknown (the store records no training patients): "
                        "if it trained on this trial's patients the saving is optimistic"}
    status = "not trained" if statuses == {"not trained"} else "independent"
    return {**base, "status": status, "n_seen": 0, "estimable": True, "note": ""}
