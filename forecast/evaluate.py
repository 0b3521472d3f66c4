"""Checkpoint evaluation: sample a split of patients, score the forecasts against the observed NET2
masks, beside three references; and the leak-free choice of sampler settings on validation data.

Lesions are 26-connected components of at least 3 mm^3 (`mseval.lesions.components`).

Scores (allocated arm, observed NET2 count y):
- count CRPS: the FAIR ensemble estimator (`mseval.metrics.calibration.crps_ensemble_fair`, the
  one `mseval evaluate` uses), unbiased for the CRPS of the law the S members are drawn from, so an
  ensemble of any size is on the scale of the references' exact CRPS;
- P(active) AUC: P(active) = share of members with a lesion, against y > 0 (patient-bootstrap CI);
- randomized PIT (ensemble augmented with y) and its chi-square uniformity p-value; logistic
  calibration slope of P(active).
References on the same patients, each scored with the exact CRPS of its law (`crps_pmf`) and the
AUC of 1 - P(0):
- `true_law`: Poisson(true expected count) from truth.csv (knows the latent activity; not attainable);
- `observable_oracle`: the Bayes predictive law given what the inputs show
  (`mseval.simulate.observable_oracle`; needs the simulator's parameters from simulation.json);
- `nb2_baseline`: NB2 regression on arm + baseline features, fitted on a TRAINING trial
  (`mseval.stats.baseline_nb2`), the simple forecaster a model must beat.
Per arm (all arms sampled): mean forecast count vs the true mean and the ratio vs the reference arm
(patient bootstrap); the share of forecast lesion voxels inside white matter (simulated cohorts).

Leak-free protocol (`select_settings`): candidate sampler settings are scored on a VALIDATION set of
patients with observed outcomes only (fair CRPS, AUC, PIT; the cohort's truth files are not used, and
need not exist), the lowest mean fair CRPS is chosen, and the test split is reported once with it.
The mask threshold (`select_threshold`) is chosen the same way, with the sampler fixed, by the fair
CRPS of the forecast NET2 lesion volume against the observed NET2 mask volume.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.atomic import write_csv_atomic, write_json_atomic
from mseval.io.cohort import Cohort, read_cohort
from mseval.io.nifti import load_volume
from mseval.io.store import ForecastStore
from mseval.lesions.components import count_lesions, voxel_volume
from mseval.metrics.calibration import crps_ensemble_fair, crps_pmf, pit_uniformity, randomized_pit, randomized_pit_pmf

WM_LABEL = 3
CONNECTIVITY = 26
MIN_VOLUME_MM3 = 3.0
SELECTION_CRITERION = ("lowest mean fair count CRPS on the validation patients (allocated arm, observed NET2 counts only); "
                       "ties go to the first candidate in grid order")
ESTIMANDS = {
    "crps_count": "mean over this split's patients of the fair ensemble CRPS of the NET2 count under the allocated arm "
                  "(unbiased for the CRPS of the forecaster's law; conditional on these patients)",
    "auc_p_active": "AUC of ensemble P(active) for observed NET2 > 0 on these patients (95% CI: patient bootstrap)",
    "pit_chi2_p": "chi-square test of uniformity of the randomized count PIT (10 bins)",
    "calibration_slope": "logistic recalibration slope of P(active) (1 = calibrated; Wald 95% CI)",
    "references": "the same scores of three forecasters' exact laws on the same patients: true law (not attainable), "
                  "observable oracle (Bayes law given the inputs), NB2 baseline (fitted on a training trial)",
}


def split_ids(cohort: Cohort, train_ids: Sequence[str], val_ids: Sequence[str], split: str) -> list[str]:
    """validation: the checkpoint's held-out patients found in this cohort; test: cohort patients the
    checkpoint never saw; all: every patient."""
    ids = cohort.patient_ids
    if split == "validation":
        out = [p for p in ids if p in set(val_ids)]
    elif split == "test":
        seen = set(train_ids) | set(val_ids)
        out = [p for p in ids if p not in seen]
    elif split == "all":
        out = list(ids)
    else:
        raise InputError(None, f"--split {split!r}: choose validation, test or all", field="split")
    if not out:
        raise InputError(cohort.root / "manifest.csv", f"no patients of the {split!r} split in this cohort", field="patient_id")
    return out


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of `score` for 0/1 `label` (NaN without both classes or with a non-finite score)."""
    if len(np.unique(label)) < 2 or not np.isfinite(score).all():
        return float("nan")
    return _roc_auc(np.asarray(score, dtype=float), np.asarray(label))


def _roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """scikit-learn's `roc_auc_score(label, score)` for 0/1 labels holding both classes, to the bit: the
    same ROC points (one per distinct score, collinear ones dropped, (0, 0) prepended) and the same
    trapezoid sum, without its input validation, which cost ~100 times the AUC itself in the bootstrap."""
    from scipy.integrate import trapezoid

    _, group = np.unique(score, return_inverse=True)  # ascending distinct scores
    counts = np.bincount(group)[::-1].astype(float)  # descending thresholds, as the ROC curve takes them
    tps = np.cumsum(np.bincount(group, weights=(label == 1).astype(float), minlength=len(counts))[::-1])
    fps = np.cumsum(counts) - tps
    if fps.shape[0] > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return float(trapezoid(tps / tps[-1], fps / fps[-1]))


def _auc_ci(score: np.ndarray, label: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """Patient-bootstrap 95% percentile interval of the AUC (resamples without both classes are skipped)."""
    idx = rng.integers(0, len(label), size=(n_boot, len(label)))
    vals = [_auc(score[i], label[i]) for i in idx]
    vals = np.asarray([v for v in vals if np.isfinite(v)])
    if len(vals) < n_boot // 2:
        return float("nan"), float("nan")
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float("nan") if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def score_ensemble(ensemble: np.ndarray, y: np.ndarray, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Observed-outcome scores of count ensembles (n, S >= 2) against observed counts y (n,):
    fair CRPS (mean, SE), P(active) AUC (+ patient-bootstrap CI), PIT uniformity, calibration slope."""
    from mseval.metrics.calibration import logistic_recalibration

    x = np.asarray(ensemble)
    yy = np.asarray(y, dtype=np.int64)
    crps = crps_ensemble_fair(x, yy)
    p_active = (x > 0).mean(axis=1)
    active = (yy > 0).astype(int)
    u = randomized_pit(x, yy, seed=seed)
    pit = pit_uniformity(u)
    rec = logistic_recalibration(p_active, active.astype(bool), samples=x.shape[1])
    m, se = _mean_se(crps)
    return {"patients": int(len(yy)), "samples": int(x.shape[1]), "crps_count": m, "crps_count_se": se,
            "auc_p_active": _auc(p_active, active), "auc_p_active_ci": list(_auc_ci(p_active, active, np.random.default_rng(seed), n_boot)),
            "pit_chi2_p": pit.chi2_p, "pit_tail_share": pit.tail_share, "calibration_slope": rec.slope,
            "calibration_slope_ci": list(rec.slope_ci), "observed_active_share": float(active.mean()), "forecast_mean": float(x.mean()),
            "observed_mean": float(yy.mean())}


def score_law(pmf: np.ndarray, y: np.ndarray, *, seed: int = 0, n_boot: int = 1000) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of a forecaster given by its exact laws, pmf rows (n, K), at observed counts y (n,):
    exact CRPS, AUC of 1 - P(0), randomized PIT. Returns (summary, per-patient CRPS)."""
    yy = np.asarray(y, dtype=np.int64)
    crps = crps_pmf(pmf, yy)
    p_active = 1.0 - pmf[:, 0]
    active = (yy > 0).astype(int)
    pit = pit_uniformity(randomized_pit_pmf(pmf, yy, seed=seed))
    m, se = _mean_se(crps)
    mean = (pmf * np.arange(pmf.shape[1])).sum(1)
    return ({"crps_count": m, "crps_count_se": se, "auc_p_active": _auc(p_active, active),
             "auc_p_active_ci": list(_auc_ci(p_active, active, np.random.default_rng(seed), n_boot)), "pit_chi2_p": pit.chi2_p,
             "forecast_mean": float(mean.mean())}, crps)


def reference_laws(cohort: Cohort, features: pd.DataFrame, *, baseline: Any = None) -> dict[str, np.ndarray]:
    """pmf (n, K) of each available reference forecaster for the rows of `features` (allocated arm).
    A reference whose law is not finite for every row (e.g. an NB2 fit on too few patients) is
    left out; `unusable_references` says why."""
    from mseval.simulate.observable_oracle import cohort_observable_pmf, true_law_pmf

    laws: dict[str, np.ndarray] = {}
    if cohort.truth is not None:
        t = cohort.truth.set_index(["patient_id", "arm"])["expected_count"]
        laws["true_law"] = true_law_pmf(np.array([float(t[(p, a)]) for p, a in zip(features["patient_id"], features["arm"])]))
    oracle = cohort_observable_pmf(cohort.root, features)  # simulated cohorts only (simulation.json, oracle_inputs.csv)
    if oracle is not None:
        laws["observable_oracle"] = oracle
    if baseline is not None:
        with np.errstate(all="ignore"):
            laws["nb2_baseline"] = baseline.pmf(features)
    return laws


def unusable_references(laws: dict[str, np.ndarray]) -> dict[str, str]:
    """name -> reason, for laws that are not finite probability rows."""
    bad = {}
    for name, pmf in laws.items():
        if not np.isfinite(pmf).all() or not np.allclose(pmf.sum(axis=1), 1.0, atol=1e-6):
            bad[name] = "not estimable: its predictive law is not finite for every patient (fit on too few patients, or not converged)"
    return bad


def fit_baseline_on(cohort: Cohort, patient_ids: Sequence[str] | None, label: str) -> Any:
    """The NB2 baseline fitted on `patient_ids` of a training cohort (observed outcomes only)."""
    from mseval.lesions.baseline_features import baseline_features
    from mseval.stats.baseline_nb2 import fit_nb2_baseline

    feats = baseline_features(cohort, patient_ids, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3)
    if "net2" not in feats:
        raise InputError(cohort.root / "manifest.csv", "the NB2 baseline's training cohort needs net2_mask for every patient", field="net2_mask")
    return fit_nb2_baseline(feats, reference=cohort.reference_arm, trained_on=label)


def count_masks(masks: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Lesions in each of masks (S, X, Y, Z) binary: the rule every forecast is scored with
    (CONNECTIVITY-connected components of at least MIN_VOLUME_MM3; affine (4, 4) in mm). Returns (S,) int."""
    return np.array([count_lesions(m, affine, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3).count for m in masks], dtype=np.int64)


def count_fidelity(pairs: np.ndarray) -> dict[str, Any]:
    """How faithfully a count-conditioned network draws the number of lesions it is asked for.
    pairs: (N, 2) int (requested count, lesions in the sampled mask) over all samples of all blocks."""
    req, got = pairs[:, 0], pairs[:, 1]
    by = {}
    for lo, hi in ((0, 0), (1, 2), (3, 5), (6, 10), (11, None)):
        m = (req >= lo) & ((req <= hi) if hi is not None else True)
        if m.any():
            by[f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"] = {
                "samples": int(m.sum()), "exact_share": float((got[m] == req[m]).mean()), "mean_drawn_minus_requested": float((got[m] - req[m]).mean())}
    return {"samples": int(len(req)), "exact_share": float((got == req).mean()), "within_one_share": float((np.abs(got - req) <= 1).mean()),
            "mean_requested": float(req.mean()), "mean_drawn": float(got.mean()), "mean_abs_difference": float(np.abs(got - req).mean()),
            "by_requested": by,
            "estimand": "share of samples whose mask holds exactly the number of lesions the network was conditioned on "
                        "(26-connected components of at least 3 mm^3)"}


def score_store(cohort: Cohort, store: ForecastStore, *, n_boot: int = 2000, seed: int = 0,
                baseline: Any = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(per patient x arm table, per arm table, summary dict) for the arms of the cohort found in the store.

    baseline: a fitted `NB2Baseline` (scored beside the forecasts when given)."""
    truth = cohort.truth.set_index(["patient_id", "arm"]) if cohort.truth is not None else None
    sim_path = cohort.root / "simulation.json"
    tissues_tpl = json.loads(sim_path.read_text()).get("truth_files", {}).get("tissues") if sim_path.is_file() else None
    arms = [a for a in cohort.arms["arm"] if a in store.arms]
    rows = []
    alloc_counts: dict[str, np.ndarray] = {}
    wm_in = wm_all = 0
    fidelity: list[np.ndarray] = []  # (requested, drawn) lesion counts of count-conditioned samples
    for pid in store.patients:
        row = cohort.row(pid)
        obs = None
        if cohort.path(pid, "net2_mask") is not None:
            obs = load_volume(cohort.path(pid, "net2_mask"), mask=True, field="net2_mask")  # type: ignore[arg-type]
        wm = None
        if tissues_tpl:
            wm = load_volume(cohort.root / tissues_tpl.format(patient_id=pid), field="tissues").data.astype(int) == WM_LABEL
        for arm in arms:
            if (pid, arm) not in store:
                continue
            block = store.block(pid, arm)
            masks, affine = block.masks()
            counts = count_masks(masks, affine)
            req = block.sampler.get("requested_counts")
            if req is not None and len(req) == len(counts):
                fidelity.append(np.c_[np.asarray(req, dtype=np.int64), counts])
            rec: dict[str, Any] = {
                "patient_id": pid, "arm": arm, "allocated": arm == row["arm"], "samples": len(masks),
                "forecast_mean": counts.mean(), "forecast_p_active": float((counts > 0).mean()),
                "forecast_q05": float(np.quantile(counts, 0.05)), "forecast_q95": float(np.quantile(counts, 0.95)),
                "forecast_voxels": float(masks.reshape(len(masks), -1).sum(1).mean()),
            }
            if wm is not None:
                fg = masks.astype(bool)
                wm_in += int((fg & wm[None]).sum())
                wm_all += int(fg.sum())
            if truth is not None:
                rec["true_expected"] = float(truth.loc[(pid, arm), "expected_count"])
                rec["true_p_active"] = float(truth.loc[(pid, arm), "p_active"])
            if arm == row["arm"] and obs is not None:
                y = count_lesions(obs.data, obs.affine, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3).count
                rec["observed_count"] = y
                rec["crps"] = float(crps_ensemble_fair(counts[None, :], np.array([y]))[0]) if len(counts) >= 2 else float("nan")
                alloc_counts[pid] = counts
                rec["dice_mean"] = float(np.nanmean([_dice(m.astype(bool), obs.data.astype(bool)) for m in masks])) if (masks.any() or obs.data.any()) else float("nan")
                rec["dice_prob"] = _dice(masks.mean(0) > 0.5, obs.data.astype(bool))
            rows.append(rec)
    per = pd.DataFrame(rows)
    ref = cohort.reference_arm
    wide = per.pivot(index="patient_id", columns="arm", values="forecast_mean")
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(wide), size=(n_boot, len(wide)))
    arm_rows = []
    for arm in arms:
        sub = per[per["arm"] == arm]
        r: dict[str, Any] = {"arm": arm, "patients": len(sub), "forecast_mean": sub["forecast_mean"].mean(),
                             "forecast_p_active": sub["forecast_p_active"].mean()}
        if "true_expected" in sub:
            r["true_mean"] = sub["true_expected"].mean()
        if ref in wide and arm in wide:
            a, b = wide[arm].to_numpy(), wide[ref].to_numpy()
            r["ratio_vs_ref"] = a.mean() / b.mean() if b.mean() > 0 else float("nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                bs = a[boots].mean(1) / b[boots].mean(1)
            ok = np.isfinite(bs)  # NaN where a store holds only the allocated arm (no within-patient contrast)
            r["ratio_ci_low"], r["ratio_ci_high"] = ((float(np.quantile(bs[ok], 0.025)), float(np.quantile(bs[ok], 0.975))) if ok.any()
                                                     else (float("nan"), float("nan")))
            if "true_expected" in per:
                tw = per.pivot(index="patient_id", columns="arm", values="true_expected")
                r["true_ratio_vs_ref"] = tw[arm].mean() / tw[ref].mean()
        arm_rows.append(r)
    per_arm = pd.DataFrame(arm_rows)
    summary: dict[str, Any] = {"patients": int(per["patient_id"].nunique()), "arms": arms, "reference_arm": ref,
                               "connectivity": CONNECTIVITY, "min_volume_mm3": MIN_VOLUME_MM3,
                               "samples": int(per["samples"].max()) if len(per) else 0}
    alloc = per[per["allocated"] & per["observed_count"].notna()] if "observed_count" in per else per.iloc[0:0]
    if len(alloc):
        ids = list(alloc["patient_id"])
        y = alloc["observed_count"].to_numpy(dtype=np.int64)
        S = min(len(alloc_counts[p]) for p in ids)
        ens = np.stack([alloc_counts[p][:S] for p in ids])
        if S >= 2:
            summary.update(score_ensemble(ens, y, seed=seed, n_boot=min(n_boot, 1000)))
        else:
            summary["note"] = "one sample per patient: the fair CRPS, PIT and calibration need at least 2"
        summary["dice_mean"] = float(np.nanmean(alloc["dice_mean"])) if alloc["dice_mean"].notna().any() else float("nan")
        summary["observed_active_share"] = float((y > 0).mean())
        from mseval.lesions.baseline_features import baseline_features

        feats = baseline_features(cohort, ids, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3)
        refs: dict[str, Any] = {}
        laws = reference_laws(cohort, feats, baseline=baseline)
        bad = unusable_references(laws)
        for name, pmf in laws.items():
            if name in bad:
                refs[name] = {"estimable": False, "note": bad[name]}
                continue
            refs[name], crps_ref = score_law(pmf, y, seed=seed, n_boot=min(n_boot, 1000))
            refs[name]["estimable"] = True
            if S >= 2:  # paired difference model - reference on the same patients
                d = crps_ensemble_fair(ens, y) - crps_ref
                refs[name]["crps_difference_model_minus_ref"], refs[name]["crps_difference_se"] = _mean_se(d)
        if baseline is not None:
            refs["nb2_baseline"]["fit"] = baseline.to_dict()
        summary["references"] = refs
        if "true_law" in refs:  # the names earlier reports used
            summary["oracle_auc_p_active"] = refs["true_law"]["auc_p_active"]
            summary["oracle_auc_p_active_ci"] = refs["true_law"]["auc_p_active_ci"]
            summary["oracle_crps_count"] = refs["true_law"]["crps_count"]
        summary["estimands"] = ESTIMANDS
    if wm_all:
        summary["white_matter_share"] = wm_in / wm_all
    if fidelity:
        summary["count_fidelity"] = count_fidelity(np.concatenate(fidelity))
    summary["forecast_voxels_per_sample"] = float(per["forecast_voxels"].mean()) if len(per) else 0.0
    summary["per_arm"] = per_arm.to_dict("records")
    return per, per_arm, summary


# -- leak-free choice of sampler settings -----------------------------------------------------
@dataclass(frozen=True)
class Tuning:
    """The sampler settings chosen on validation data, the candidates' scores and what they were scored on."""

    chosen: dict[str, Any]
    table: pd.DataFrame
    criterion: str
    validation: dict[str, Any]
    checkpoint: str
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def settings(self) -> Any:
        """The chosen candidate as `forecast.sampler.SamplerSettings` (threshold: the checkpoint's, unless chosen after)."""
        from forecast.sampler import SamplerSettings

        c = self.chosen
        return SamplerSettings(str(c["sampler"]), int(c["steps"]), float(c["guidance"]), bool(c["clip_x0"]), int(c["count_tries"]))

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "criterion": self.criterion, "validation": self.validation, "checkpoint": self.checkpoint,
                "candidates": self.table.to_dict("records"), "notes": list(self.notes),
                "truth_read": False}

    def summary(self) -> str:
        lines = [f"sampler chosen on {self.validation['patients']} validation patients ({self.validation['cohort']}): {self.chosen}",
                 f"criterion: {self.criterion}"]
        for r in self.table.to_dict("records"):
            tries = f" count tries {r['count_tries']}" if r.get("count_tries", 1) > 1 else ""
            lines.append(f"  {r['sampler']:5s} steps {r['steps']:3d} guidance {r['guidance']:4.2f}{tries}: fair CRPS {r['crps_count']:.3f} "
                         f"(SE {r['crps_count_se']:.3f}), AUC {r['auc_p_active']:.3f}, PIT chi2 p {r['pit_chi2_p']:.3g}")
        return "\n".join(lines)


def parse_grid(text: str | None, cast: type, default: Any) -> list[Any]:
    """'1,2,3' -> [1, 2, 3] (cast); None or '' -> [default]."""
    if not text:
        return [default]
    try:
        return [cast(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(None, f"cannot read the list {text!r}", field="grid") from None


def observed_net2(cohort: Cohort, pid: str) -> Any:
    """A validation patient's observed NET2 mask (`mseval.io.nifti` volume); InputError naming the manifest when it has none."""
    path = cohort.path(pid, "net2_mask")
    if path is None:
        raise InputError(cohort.root / "manifest.csv", f"patient {pid} has no net2_mask: validation needs observed outcomes", field="net2_mask")
    return load_volume(path, mask=True, field="net2_mask")


def observed_allocated_counts(cohort: Cohort, ids: Sequence[str]) -> np.ndarray:
    """Observed NET2 lesion counts (n,) of `ids` from their net2_mask (nothing else is read)."""
    out = []
    for pid in ids:
        v = observed_net2(cohort, pid)
        out.append(count_lesions(v.data, v.affine, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3).count)
    return np.asarray(out, dtype=np.int64)


def allocated_ensemble(cohort: Cohort, store: ForecastStore, ids: Sequence[str]) -> np.ndarray:
    """Lesion counts (n, S) of each patient's allocated-arm forecasts in `store`."""
    rows = []
    for pid in ids:
        masks, affine = store.block(pid, str(cohort.row(pid)["arm"])).masks()
        rows.append(count_masks(masks, affine))
    return np.asarray(rows, dtype=np.int64)


def sample_allocated(cohort_dir: str | Path, ckpt: Any, out: Path, ids: Sequence[str], *, samples: int, settings: Any,
                     batch_size: int, seed: int, device: str | None, save_prob: bool = False) -> ForecastStore:
    """Sample each of `ids` under its allocated arm only into the store `out` (`save_prob`: keep each member's soft probability)."""
    from forecast.ensemble import forecast_cohort

    cohort = read_cohort(cohort_dir)
    store = None
    for arm in cohort.arms["arm"]:
        ids_arm = [p for p in ids if cohort.row(p)["arm"] == arm]
        if ids_arm:
            store = forecast_cohort(cohort.root, ckpt, out, samples=samples, arms=[arm], settings=settings, batch_size=batch_size,
                                    seed=seed, patients=ids_arm, device=device, save_prob=save_prob)
    assert store is not None
    return store


def select_settings(
    ckpt: Any,
    cohort_dir: str | Path,
    out: str | Path,
    *,
    patients: Sequence[str] | None = None,
    guidance: Sequence[float] = (1.0,),
    steps: Sequence[int] = (50,),
    samplers: Sequence[str] = ("ddim",),
    count_tries: Sequence[int] = (1,),
    samples: int = 12,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
) -> Tuning:
    """Score every (sampler, steps, guidance) on the validation patients' observed NET2 counts
    (allocated arm; the same seeds for every candidate, so differences are paired) and choose the
    lowest mean fair CRPS. Uses the validation cohort's manifest, arms, baseline inputs and net2
    masks only, never its truth.csv, simulation.json or tissue maps (it runs with them absent: tested)."""
    from forecast.sampler import SamplerSettings

    if samples < 2:
        raise InputError(None, "validation needs at least 2 samples per patient (fair CRPS)", field="samples")
    cohort = read_cohort(cohort_dir)
    ids = list(patients) if patients is not None else cohort.patient_ids
    y = observed_allocated_counts(cohort, ids)
    out = Path(out)
    rows, crps_by = [], {}
    tries = [int(c) for c in count_tries] if ckpt.config.count_head else [1]
    for sm in samplers:
        for st in steps:
            for g in guidance:
                for ct in tries:
                    settings = SamplerSettings(sm, int(st), float(g), ckpt.config.clip_x0, int(ct))
                    name = f"{sm}-s{st}-g{g:g}" + (f"-c{ct}" if ct > 1 else "")
                    store = sample_allocated(cohort.root, ckpt, out / name, ids, samples=samples, settings=settings,
                                             batch_size=batch_size, seed=seed, device=device)
                    ens = allocated_ensemble(cohort, store, ids)
                    sc = score_ensemble(ens, y, seed=seed, n_boot=200)
                    crps_by[(sm, int(st), float(g), int(ct))] = crps_ensemble_fair(ens, y)
                    rows.append({"sampler": sm, "steps": int(st), "guidance": float(g), "count_tries": int(ct),
                                 **{k: sc[k] for k in ("crps_count", "crps_count_se", "auc_p_active", "pit_chi2_p", "calibration_slope",
                                                       "forecast_mean", "observed_mean")}})
    table = pd.DataFrame(rows)
    best = table.loc[table["crps_count"].idxmin()]
    key = (best["sampler"], int(best["steps"]), float(best["guidance"]), int(best["count_tries"]))
    kr = [(r["sampler"], r["steps"], r["guidance"], r["count_tries"]) for r in rows]
    table["crps_minus_chosen"] = [float((crps_by[k] - crps_by[key]).mean()) for k in kr]
    table["crps_minus_chosen_se"] = [_mean_se(crps_by[k] - crps_by[key])[1] for k in kr]
    chosen = {"sampler": key[0], "steps": key[1], "guidance": key[2], "clip_x0": bool(ckpt.config.clip_x0), "count_tries": key[3]}
    validation = {"cohort": str(Path(cohort_dir).resolve()), "patients": len(ids), "patient_ids": list(ids), "samples": samples, "seed": seed,
                  "read": ["manifest.csv", "arms.csv", "baseline inputs", "net2_mask"]}
    notes = []
    if len(table) > 1:
        notes.append("differences between candidates are paired (same seeds); crps_minus_chosen_se is their standard error")
    return Tuning(chosen, table, SELECTION_CRITERION, validation, ckpt.id, notes)


THRESHOLD_CRITERION = ("lowest mean fair CRPS of the forecast NET2 lesion volume (mm^3: voxels whose sampled probability exceeds the "
                       "threshold) against the observed NET2 mask volume, allocated arm, validation patients (observed masks only)")
THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
"""Mask thresholds `make checkpoint` chooses from."""


@dataclass(frozen=True)
class ThresholdTuning:
    """The mask threshold chosen on validation data: each candidate's fair CRPS of the NET2 volume (mm^3, with its
    SE over patients and the paired difference from the chosen one), mean forecast and observed volume (mm^3),
    mean forecast volume per forecast lesion and the share of members holding their requested count."""

    chosen: float
    table: pd.DataFrame
    criterion: str
    validation: dict[str, Any]
    checkpoint: str

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "criterion": self.criterion, "validation": self.validation, "checkpoint": self.checkpoint,
                "candidates": self.table.to_dict("records"), "truth_read": False}

    def summary(self) -> str:
        lines = [f"mask threshold chosen on {self.validation['patients']} validation patients: {self.chosen:g}", f"criterion: {self.criterion}"]
        for r in self.table.to_dict("records"):
            lines.append(f"  threshold {r['threshold']:.2f}: volume fair CRPS {r['crps_volume_mm3']:.2f} mm^3 (SE {r['crps_volume_se']:.2f}; "
                         f"minus chosen {r['crps_minus_chosen']:+.2f}, SE {r['crps_minus_chosen_se']:.2f}), mean volume {r['forecast_mean_mm3']:.1f} "
                         f"vs observed {r['observed_mean_mm3']:.1f} mm^3, {r['mm3_per_lesion']:.1f} mm^3 per lesion")
        return "\n".join(lines)


def threshold_grid(grid: Sequence[float]) -> list[float]:
    """The distinct thresholds of `grid`, ascending; InputError unless there is one and each lies strictly between 0 and 1."""
    out = sorted({float(t) for t in grid})
    if not out or not all(0.0 < t < 1.0 for t in out):
        raise InputError(None, "mask thresholds must lie strictly between 0 and 1", field="threshold")
    return out


def select_threshold(ckpt: Any, cohort_dir: str | Path, out: str | Path, *, settings: Any, patients: Sequence[str] | None = None,
                     grid: Sequence[float] = THRESHOLD_GRID, samples: int = 6, batch_size: int = 8, seed: int = 0,
                     device: str | None = None) -> ThresholdTuning:
    """Sample the validation patients once under their allocated arm with `settings` (keeping each member's
    soft probability) and choose, from `grid`, the threshold whose forecast NET2 volumes score the lowest
    mean fair CRPS against the observed NET2 mask volumes. The lesion count does not enter: a count-conditioned
    model's count is drawn before rendering, the threshold sets only how much of each rendered lesion is kept.
    Reads the manifest, arms, baseline inputs and net2 masks only (never truth.csv or tissue maps)."""
    if samples < 2:
        raise InputError(None, "validation needs at least 2 samples per patient (fair CRPS)", field="samples")
    grid = threshold_grid(grid)
    cohort = read_cohort(cohort_dir)
    ids = list(patients) if patients is not None else cohort.patient_ids
    store = sample_allocated(cohort.root, ckpt, Path(out), ids, samples=samples, settings=replace(settings, threshold=grid[0]),
                             batch_size=batch_size, seed=seed, device=device, save_prob=True)
    y, vols, lesions, exact = [], {t: [] for t in grid}, {t: 0 for t in grid}, {t: 0 for t in grid}
    n_members = 0
    for pid in ids:
        v = observed_net2(cohort, pid)
        y.append(float(np.count_nonzero(v.data)) * voxel_volume(v.affine))
        block = store.block(pid, str(cohort.row(pid)["arm"]))
        prob, affine = block.prob()
        vox = voxel_volume(affine)
        want = block.sampler.get("requested_counts")
        n_members += len(prob)
        for t in grid:
            masks = (prob > t).astype(np.uint8)
            vols[t].append(masks.reshape(len(masks), -1).sum(1) * vox)
            got = count_masks(masks, affine)
            lesions[t] += int(got.sum())
            if want is not None:
                exact[t] += int((np.asarray(want) == got).sum())
    yy = np.asarray(y)
    crps = {t: crps_ensemble_fair(np.asarray(vols[t], dtype=float), yy) for t in grid}
    best = min(grid, key=lambda t: float(crps[t].mean()))
    rows = [{"threshold": t, "crps_volume_mm3": float(crps[t].mean()), "crps_volume_se": _mean_se(crps[t])[1],
             "crps_minus_chosen": float((crps[t] - crps[best]).mean()), "crps_minus_chosen_se": _mean_se(crps[t] - crps[best])[1],
             "forecast_mean_mm3": float(np.mean(vols[t])), "observed_mean_mm3": float(yy.mean()),
             "mm3_per_lesion": float(np.sum(vols[t]) / lesions[t]) if lesions[t] else float("nan"),
             "count_exact_share": exact[t] / n_members if ckpt.config.count_head else float("nan")} for t in grid]
    validation = {"cohort": str(Path(cohort_dir).resolve()), "patients": len(ids), "patient_ids": list(ids), "samples": samples, "seed": seed,
                  "settings": {k: v for k, v in settings.to_dict().items() if k != "threshold"},
                  "read": ["manifest.csv", "arms.csv", "baseline inputs", "net2_mask"]}
    return ThresholdTuning(best, pd.DataFrame(rows), THRESHOLD_CRITERION, validation, ckpt.id)


def tuning_for_checkpoint(tuned: dict[str, Any], checkpoint_id: str, cohort: str) -> dict[str, Any]:
    """The tuning record a checkpoint folder keeps (its tuning.json), from a `Tuning.to_dict()` (with
    its `mask_threshold` record, if any): `checkpoint` is the id of that folder's checkpoint -- the
    id tuned with, when another (the training run a release was exported from, same EMA weights),
    moves to `tuned_with_checkpoint` -- and the validation cohort is `cohort`, a neutral description
    (e.g. "simulated trial seed 2028, 60 of its patients"), not a path on the machine that tuned it."""
    out = json.loads(json.dumps(tuned))
    for rec in (out, out.get("mask_threshold")):
        if not isinstance(rec, dict):
            continue
        if rec.get("checkpoint") not in (None, checkpoint_id):
            rec["tuned_with_checkpoint"] = rec["checkpoint"]
        rec["checkpoint"] = checkpoint_id
        if isinstance(rec.get("validation"), dict):
            rec["validation"]["cohort"] = cohort
    return out


def evaluate_checkpoint(
    checkpoint: str | Path,
    cohort_dir: str | Path,
    out: str | Path,
    *,
    split: str = "validation",
    samples: int = 10,
    steps: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    arms: str = "all",
    tune_cohort: str | Path | None = None,
    tune_guidance: Sequence[float] | None = None,
    tune_steps: Sequence[int] | None = None,
    tune_samplers: Sequence[str] | None = None,
    tune_count_tries: Sequence[int] | None = None,
    tune_thresholds: Sequence[float] | None = None,
    tune_samples: int = 12,
    baseline_cohort: str | Path | None = None,
    record_in_checkpoint: bool = False,
) -> dict[str, Any]:
    """Sample `split` (under `arms`: 'all' or 'allocated') into out/forecasts, write out/evaluation.csv,
    per_arm.csv and summary.json; returns the summary.

    Leak-free protocol: with `tune_cohort`, the sampler settings are first chosen on that cohort's
    validation patients (the checkpoint's val_ids found there; where there are none, a separate
    validation trial is assumed and all its patients are used -- refused when the checkpoint's
    provenance names it as the training cohort) from the grids tune_guidance x tune_steps x tune_samplers x tune_count_tries (`select_settings`) and, with
    `tune_thresholds`, the mask threshold for that sampler (`select_threshold`), then
    `split` is sampled once with the choice; reporting on the patients tuned on is refused. The
    choice is written to out/tuning.json (and to the checkpoint folder's tuning.json with
    `record_in_checkpoint`). `baseline_cohort`: the training trial the NB2 baseline is fitted on
    (its patients in the checkpoint's train_ids, or all of them when none are); default: this
    cohort's train_ids patients, when it holds any.
    """
    from forecast.checkpoint import load_checkpoint
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings

    if tune_thresholds and tune_cohort is None:
        raise InputError(None, "--tune-thresholds needs --tune-on (a validation cohort)", field="tune_thresholds")
    if tune_thresholds:
        threshold_grid(tune_thresholds)  # before anything is sampled or written
    ckpt = load_checkpoint(checkpoint)
    cohort = read_cohort(cohort_dir)
    ids = split_ids(cohort, ckpt.train_ids, ckpt.val_ids, split)
    cfg = ckpt.config
    out = Path(out)
    tuning = None
    if tune_cohort is not None:
        tc = read_cohort(tune_cohort, check_files=False)
        val = [p for p in tc.patient_ids if p in set(ckpt.val_ids)]
        if not val:  # a separate validation trial: all of its patients (patient ids are per trial)
            prov = getattr(ckpt, "provenance", None) or {}
            trained_on = {str(Path(v).resolve()) for k, v in prov.items() if "cohort" in k and isinstance(v, str)}
            if str(tc.root.resolve()) in trained_on:
                raise InputError(tc.root / "manifest.csv", "no validation patients: this is the checkpoint's training cohort and it holds none of "
                                 "its held-out patients; tune on a separate validation trial", field="patient_id")
            val = tc.patient_ids
        if Path(tune_cohort).resolve() == Path(cohort_dir).resolve() and set(val) & set(ids):
            raise InputError(None, f"the {split!r} split overlaps the validation patients the settings are tuned on; report on --split test or another cohort",
                             field="split")
        tuning = select_settings(ckpt, tune_cohort, out / "tuning_forecasts", patients=val,
                                 guidance=list(tune_guidance or [cfg.guidance]), steps=list(tune_steps or [steps or cfg.sample_steps]),
                                 samplers=list(tune_samplers or [cfg.sampler]), count_tries=list(tune_count_tries or [cfg.count_tries]),
                                 samples=tune_samples, batch_size=batch_size, seed=seed + 1,
                                 device=device)
        settings = tuning.settings()
        tuned = tuning.to_dict()
        if tune_thresholds:
            thr = select_threshold(ckpt, tune_cohort, out / "tuning_threshold", settings=settings, patients=val, grid=tune_thresholds,
                                   samples=tune_samples, batch_size=batch_size, seed=seed + 1, device=device)
            settings = replace(settings, threshold=thr.chosen)
            tuned["mask_threshold"] = thr.to_dict()
            write_csv_atomic(thr.table, out / "tuning_threshold.csv")
        write_json_atomic(tuned, out / "tuning.json")
        write_csv_atomic(tuning.table, out / "tuning.csv")
        if record_in_checkpoint and ckpt.path is not None:
            from mseval.provenance import cohort_fingerprint

            neutral = f"{tc.root.name} ({len(val)} patients; cohort fingerprint {cohort_fingerprint(tc.manifest)})"
            write_json_atomic(tuning_for_checkpoint(tuned, ckpt.id, neutral), Path(ckpt.path) / "tuning.json")
    else:
        settings = SamplerSettings(cfg.sampler, steps or cfg.sample_steps, cfg.guidance, cfg.clip_x0, cfg.count_tries)
    if settings.threshold is None:  # name the threshold the masks are cut at in the summary, as the blocks do
        settings = replace(settings, threshold=cfg.mask_threshold)
    if arms == "allocated":
        store = sample_allocated(cohort.root, ckpt, out / "forecasts", ids, samples=samples, settings=settings, batch_size=batch_size,
                                 seed=seed, device=device)
    else:
        store = forecast_cohort(cohort.root, ckpt, out / "forecasts", samples=samples, arms=arms, settings=settings, batch_size=batch_size,
                                seed=seed, patients=ids, device=device)
    assert store is not None
    baseline, bnote = None, ""
    bc = read_cohort(baseline_cohort) if baseline_cohort is not None else cohort
    train_here = [p for p in bc.patient_ids if p in set(ckpt.train_ids)]
    if train_here or baseline_cohort is not None:
        try:
            baseline = fit_baseline_on(bc, train_here or None, f"{bc.root} ({len(train_here) or len(bc.patient_ids)} patients"
                                       + (", the checkpoint's training patients)" if train_here else ")"))
        except InputError as exc:
            bnote = f"NB2 baseline not fitted: {exc}"
    else:
        bnote = "NB2 baseline not fitted: no training cohort given (--baseline-cohort) and this cohort holds none of the checkpoint's training patients"
    per, per_arm, summary = score_store(cohort, store, seed=seed, baseline=baseline)
    summary.update({"checkpoint": ckpt.id, "split": split, "sampler": settings.to_dict(),
                    "protocol": {"trained_on": {"patients": len(ckpt.train_ids), "validation_ids": len(ckpt.val_ids),
                                                "provenance": getattr(ckpt, "provenance", None)},
                                 "tuned_on": tuned if tuning else None,
                                 "settings_from": "validation (observed outcomes only)" if tuning else "the checkpoint's config (not tuned here)",
                                 "reported_on": {"cohort": str(cohort.root.resolve()), "split": split, "patients": len(ids)}}})
    if bnote:
        summary.setdefault("notes", []).append(bnote)
    write_csv_atomic(per, out / "evaluation.csv")
    write_csv_atomic(per_arm, out / "per_arm.csv")
    write_json_atomic(summary, out / "summary.json")
    return summary
