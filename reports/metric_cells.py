"""One cell of the activity, calibration and detection tables: each metric printed by its kind
(p-value, proportion, bounded coefficient, plain number) through `reports.numbers`, and
withheld where the ensemble or the arm is too small for it to mean anything.

Monte Carlo minimums (documented here, applied in tables and in the figures' captions):
- `MIN_PATIENTS_PER_ARM` patients before a per-arm calibration metric is shown;
- `MIN_SAMPLES` samples per patient before any metric that reads the ensemble's spread
  (PIT, interval coverage, calibration slope and intercept, ECE) is shown: with S samples a
  randomized PIT has only S + 1 levels, so coverage and PIT tests mostly measure the draw.
"""

from __future__ import annotations

from typing import Any

from reports import numbers as N

MIN_PATIENTS_PER_ARM = 20
MIN_SAMPLES = 10

P_VALUES = {"pit_chi2_p", "pit_ks_p"}
PROPORTIONS = {"prevalence", "auc", "brier", "ece", "voxel_brier", "voxel_ece", "voxel_auc", "voxel_prevalence", "lesion_recall_pooled",
               "lesion_precision_pooled", "lesion_f1_mean", "dice_mean", "coverage_randomized_50", "coverage_randomized_80", "coverage_randomized_95"}
PROPORTION_PREFIXES = ("sensitivity@", "specificity@", "ppv@", "npv@")
RANGED = {"calibration_slope": (-5.0, 5.0, "a calibration slope (1 when calibrated; beyond 5 in size it reflects separation or too few events)")}
ENSEMBLE_SPREAD = {"pit_chi2_p", "pit_ks_p", "coverage_randomized_50", "coverage_randomized_80", "coverage_randomized_95",
                   "calibration_slope", "calibration_intercept", "ece"}
"""Metrics whose value moves with the number of samples per patient more than with the forecaster."""
PER_ARM_MINIMUM = ENSEMBLE_SPREAD | {"brier", "crps_fair"}
"""Calibration metrics withheld in an arm column with fewer than MIN_PATIENTS_PER_ARM patients."""


def withheld(metric: str, *, n_patients: int | None, samples: int | None, per_arm: bool) -> str:
    """'' when the metric may be shown, else 'withheld (reason)'."""
    why = []
    if metric in ENSEMBLE_SPREAD and samples is not None and samples < MIN_SAMPLES:
        why.append(f"{samples} samples per patient < {MIN_SAMPLES}")
    if per_arm and metric in PER_ARM_MINIMUM and n_patients is not None and n_patients < MIN_PATIENTS_PER_ARM:
        why.append(f"n = {n_patients} < {MIN_PATIENTS_PER_ARM}")
    return f"withheld ({'; '.join(why)})" if why else ""


def drop_withheld_columns(tab: dict[str, Any], first: int = 2, *, samples: int | None = None) -> dict[str, Any]:
    """The table without the columns (from `first` on) in which every cell is withheld, and a
    'withheld' note naming them and, below MIN_SAMPLES, the withheld PIT and coverage figures;
    `tab`: {"columns", "rows"} of strings."""
    cols = tab["columns"]
    gone = [j for j in range(first, len(cols)) if tab["rows"] and all(r[j].startswith("withheld") for r in tab["rows"])]
    keep = [j for j in range(len(cols)) if j not in gone]
    notes = []
    if gone:
        notes.append(f"Not shown per arm ({', '.join(cols[j] for j in gone)}): calibration in an arm needs at least {MIN_PATIENTS_PER_ARM} patients.")
    if samples is not None and samples < MIN_SAMPLES:
        notes.append(f"PIT histogram and interval-coverage figures withheld: {samples} samples per patient, fewer than {MIN_SAMPLES} "
                     "(a randomized PIT from S samples has S + 1 levels, so these would show the draw, not the forecaster).")
    if notes:
        notes.append("Monte Carlo minimums: reports/metric_cells.py.")
    return {"columns": [cols[j] for j in keep], "rows": [[r[j] for j in keep] for r in tab["rows"]], "withheld": " ".join(notes)}


def metric_cell(metric: str, value: Any, lo: Any = None, hi: Any = None, *, digits: int = 2, n_patients: int | None = None,
                samples: int | None = None, per_arm: bool = False) -> str:
    """The printed cell of one metric: '0.81 (0.62 to 0.93)', '< 0.001', 'withheld (...)' or 'not estimable (...)'."""
    w = withheld(metric, n_patients=n_patients, samples=samples, per_arm=per_arm)
    if w:
        return w
    if not N.is_number(value):
        return N.NOT_ESTIMABLE
    if metric in P_VALUES:
        return N.p_text(value)
    if metric in RANGED:
        low, high, what = RANGED[metric]
        return N.ranged_text(value, lo, hi, low=low, high=high, what=what, digits=digits)
    if metric in PROPORTIONS or metric.startswith(PROPORTION_PREFIXES):
        if not N.additive_ok(value, lo if N.is_number(lo) else None, hi if N.is_number(hi) else None)[0]:
            return N.ne_text(N.additive_ok(value, lo, hi)[1])
        return N.proportion_text(value, lo, hi, digits=digits)
    return N.additive_text(value, lo, hi, digits=digits)


QINI_RANGE = (-1.0, 1.0)
"""Radcliffe's normalisation: perfect ranking 1, random 0; a coefficient beyond [-1, 1] is a small-sample artefact."""


def qini_cell(value: Any, *, digits: int = 2) -> str:
    """A Qini coefficient, flagged (not printed bare) outside [-1, 1]."""
    return N.ranged_text(value, low=QINI_RANGE[0], high=QINI_RANGE[1], what="a normalised Qini coefficient (perfect 1, random 0)", digits=digits)
