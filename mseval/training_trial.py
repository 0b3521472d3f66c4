"""The observed effects of the trial a forecaster learned from, found through its provenance.

A forecaster trained on one trial cannot know a treatment effect more precisely than that trial's
observed outcomes told it; a forecast-derived interval narrower than the training trial's observed
interval for the same arm is precision conditional on the forecaster, not evidence. The report's
"model-based projections" section shows the two side by side (issue 22).

Where the training trial is found. The store's provenance (`mseval.provenance`) records, for the
checkpoint that wrote the forecasts, its training cohort's folder name (`cohort_name`), the cohort
fingerprint and the fingerprints of its training patients. A folder of that name beside the
evaluated cohort or beside the forecast store (as `mseval demo --train` lays them out:
out/train_cohort, out/cohort, out/forecasts), or the evaluated cohort itself, is the training
trial when its cohort fingerprint matches. Its observed NET2 counts under the training patients'
allocated arms are then fitted with the same NB2 formula. Otherwise the result says why it is
unavailable (simulated forecaster, several checkpoints, no record, folder not found).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mseval.errors import InputError
from mseval.provenance import PROVENANCE_FILE, cohort_fingerprint, patient_fingerprints


@dataclass(frozen=True)
class TrainingTrialEffects:
    """available: whether the training trial was found and fitted; sentence: what was fitted, or
    why not; table: the observed NB2 rate ratios on its training patients (term, rate_ratio, ci_low,
    ci_high, p_value, estimable, note; empty when unavailable); cohort: the folder's name;
    n_patients: training patients analysed."""

    available: bool
    sentence: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    cohort: str | None = None
    n_patients: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "sentence": self.sentence, "cohort": self.cohort, "n_patients": self.n_patients}


def _unavailable(why: str) -> TrainingTrialEffects:
    return TrainingTrialEffects(False, f"The training trial's observed intervals are unavailable: {why}.")


def _checkpoint_record(forecasts_dir: Path) -> tuple[str | None, dict[str, Any] | None, str]:
    """(checkpoint id, its provenance record, reason when there is not exactly one recorded checkpoint)."""
    from mseval.io.store import ForecastStore

    ids = sorted(set(ForecastStore.open(forecasts_dir).index()["checkpoint"].astype(str)))
    if len(ids) != 1:
        return None, None, f"the forecast store holds {len(ids)} checkpoints (one training trial per forecaster is not implemented)"
    ck = ids[0]
    path = forecasts_dir / PROVENANCE_FILE
    try:
        recorded = json.loads(path.read_text()).get("checkpoints", {}) if path.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    rec = recorded.get(ck)
    if not isinstance(rec, dict) or not rec.get("train"):
        simulated = ck.startswith("simulated-")
        return ck, None, ("the forecasts come from a simulated forecaster, which learned from no trial" if simulated
                          else f"the store records no training patients for checkpoint {ck}")
    return ck, rec, ""


def find_training_cohort(cohort_dir: str | Path, forecasts_dir: str | Path, record: dict[str, Any]) -> tuple[Path | None, str]:
    """(folder of the training cohort, "") or (None, why not) for one checkpoint's provenance `record`."""
    from mseval.io.cohort import read_cohort

    name, fp = record.get("cohort_name"), record.get("cohort_fingerprint")
    if not fp:
        return None, "the checkpoint's provenance records no cohort fingerprint"
    candidates = [Path(cohort_dir)]
    if name:
        candidates = [Path(cohort_dir).parent / str(name), Path(forecasts_dir).parent / str(name), *candidates]
    for c in dict.fromkeys(p.resolve() for p in candidates):
        if not (c / "manifest.csv").is_file():
            continue
        try:
            if cohort_fingerprint(read_cohort(c, check_files=False).manifest) == fp:
                return c, ""
        except InputError:
            continue
    where = f"a folder named {name!r}" if name else "a folder"
    return None, (f"the training cohort (fingerprint {fp}) is not {where} beside this cohort or the forecast store, "
                  "and this cohort is not it")


def training_trial_effects(cohort_dir: str | Path, forecasts_dir: str | Path | None, formula: str, *, reference: str,
                           connectivity: int = 26, min_volume_mm3: float = 3.0, observed_ci: str = "auto", seed: int = 0,
                           n_bootstrap: int | None = None) -> TrainingTrialEffects:
    """The observed NB2 rate ratios of the forecaster's training patients in its training trial
    (same `formula`, counts by the same lesion definition; the arms' CIs and p-values by `observed_ci`, as the
    trial's own primary endpoint: `mseval.stats.observed_ci`; n_bootstrap None: its default), or why they are unavailable."""
    from mseval.io.cohort import read_cohort
    from mseval.lesions.observed import analysis_table
    from mseval.stats.count_model import fit_count_model
    from mseval.stats.observed_ci import BOOTSTRAP_REPLICATES, observed_intervals, with_intervals

    if forecasts_dir is None:
        return _unavailable("no forecast store was given (only counts), so no provenance")
    forecasts_dir = Path(forecasts_dir)
    ck, rec, why = _checkpoint_record(forecasts_dir)
    if rec is None:
        return _unavailable(why)
    folder, why = find_training_cohort(cohort_dir, forecasts_dir, rec)
    if folder is None:
        return _unavailable(why)
    try:
        tc = read_cohort(folder)
        fp = patient_fingerprints(tc.manifest)
        train = {p for p, f in rec["train"].items() if fp.get(p) == f}
        table = analysis_table(tc, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
        table = table[table["patient_id"].astype(str).isin(train)].reset_index(drop=True)
        fit = fit_count_model(table, formula, reference=reference, file=str(folder / "manifest.csv"), adjusted_means=False)
        fitted = with_intervals(fit, observed_intervals(table, fit, method=observed_ci, seed=seed, n_bootstrap=n_bootstrap or BOOTSTRAP_REPLICATES,
                                                        file=str(folder / "manifest.csv")))
    except InputError as exc:
        return _unavailable(f"the training cohort {folder.name!r} was found but could not be analysed ({exc.message})")
    cols = [c for c in ("term", "rate_ratio", "ci_low", "ci_high", "p_value", "ci_method", "estimable", "note") if c in fitted.columns]
    return TrainingTrialEffects(True, f"Training trial: observed NB2 ({formula}) on the {len(table)} training patients of checkpoint {ck} "
                                      f"in cohort {folder.name!r} (found by its provenance fingerprint).",
                                fitted[cols].reset_index(drop=True), folder.name, int(len(table)))
