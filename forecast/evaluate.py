"""Checkpoint evaluation: sample a split of patients under every arm, then score the forecasts
against the observed NET2 masks (and, for a simulated cohort, against the truth and the oracle).

Lesions are 26-connected components of at least 3 mm^3 (`mseval.lesions.components`). Until the
statistics package exists this module computes what a researcher compares checkpoints with:
per arm, the mean forecast count vs the true mean and the rate ratio vs the reference arm
(bootstrap over patients); on the allocated arm, the P(active) AUC, the count CRPS and Dice; for
simulated cohorts, the same AUC and CRPS of the oracle forecaster (the true Poisson law) and
the share of forecast lesion voxels inside white matter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.atomic import write_csv_atomic, write_json_atomic
from mseval.io.cohort import Cohort, read_cohort
from mseval.io.nifti import load_volume
from mseval.io.store import ForecastStore
from mseval.lesions.components import count_lesions

WM_LABEL = 3
CONNECTIVITY = 26
MIN_VOLUME_MM3 = 3.0


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


def crps_samples(samples: np.ndarray, y: float) -> float:
    """CRPS of an ensemble (1D) at observation y by the fair estimator, the one `mseval evaluate` uses
    (`mseval.metrics.calibration.crps_ensemble_fair`): mean |X - y| - sum_{j != k} |X_j - X_k| / (2 S (S - 1)),
    unbiased for the CRPS of the law the members are drawn from (the plain energy form, with the
    S^2 pairs, penalises small ensembles). One member: |X - y|."""
    from mseval.metrics.calibration import crps_ensemble_fair

    x = np.asarray(samples, dtype=float).ravel()
    if x.size < 2:
        return float(np.abs(x - y).mean())
    return float(crps_ensemble_fair(x[None, :], np.array([float(y)]))[0])


def crps_poisson(mu: float, y: int, kmax: int | None = None) -> float:
    """CRPS of Poisson(mu) at integer y: sum over k of (F(k) - 1{y <= k})^2."""
    from scipy.stats import poisson

    kmax = kmax or int(max(y, mu + 12 * np.sqrt(mu + 1) + 20))
    k = np.arange(kmax + 1)
    return float(((poisson.cdf(k, mu) - (k >= y)) ** 2).sum())


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(label)) < 2:
        return float("nan")
    return float(roc_auc_score(label, score))


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


def score_store(cohort: Cohort, store: ForecastStore, *, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(per patient x arm table, per arm table, summary dict) for the arms of the cohort found in the store."""
    truth = cohort.truth.set_index(["patient_id", "arm"]) if cohort.truth is not None else None
    sim_path = cohort.root / "simulation.json"
    tissues_tpl = json.loads(sim_path.read_text()).get("truth_files", {}).get("tissues") if sim_path.is_file() else None
    arms = [a for a in cohort.arms["arm"] if a in store.arms]
    rows = []
    wm_in = wm_all = 0
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
            masks, affine = store.block(pid, arm).masks()
            counts = np.array([count_lesions(m, affine, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3).count for m in masks])
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
                rec["crps"] = crps_samples(counts, y)
                if truth is not None:
                    rec["oracle_crps"] = crps_poisson(rec["true_expected"], y)
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
    alloc = per[per["allocated"] & per.get("observed_count", pd.Series(dtype=float)).notna()] if "observed_count" in per else per.iloc[0:0]
    if len(alloc):
        active = (alloc["observed_count"] > 0).to_numpy().astype(int)
        summary["auc_p_active"] = _auc(alloc["forecast_p_active"].to_numpy(), active)
        summary["auc_p_active_ci"] = list(_auc_ci(alloc["forecast_p_active"].to_numpy(), active, rng, min(n_boot, 1000)))
        summary["crps_count"] = float(alloc["crps"].mean())
        summary["dice_mean"] = float(np.nanmean(alloc["dice_mean"])) if alloc["dice_mean"].notna().any() else float("nan")
        summary["observed_active_share"] = float(active.mean())
        if "true_p_active" in alloc:
            summary["oracle_auc_p_active"] = _auc(alloc["true_p_active"].to_numpy(), active)
            summary["oracle_auc_p_active_ci"] = list(_auc_ci(alloc["true_p_active"].to_numpy(), active, rng, min(n_boot, 1000)))
            summary["oracle_crps_count"] = float(alloc["oracle_crps"].mean())
    if wm_all:
        summary["white_matter_share"] = wm_in / wm_all
    summary["forecast_voxels_per_sample"] = float(per["forecast_voxels"].mean()) if len(per) else 0.0
    summary["per_arm"] = per_arm.to_dict("records")
    return per, per_arm, summary


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
) -> dict[str, Any]:
    """Sample `split` under every arm into out/forecasts, write out/evaluation.csv, per_arm.csv and
    summary.json; returns the summary."""
    from forecast.checkpoint import load_checkpoint
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings

    ckpt = load_checkpoint(checkpoint)
    cohort = read_cohort(cohort_dir)
    ids = split_ids(cohort, ckpt.train_ids, ckpt.val_ids, split)
    cfg = ckpt.config
    settings = SamplerSettings(cfg.sampler, steps or cfg.sample_steps, cfg.guidance, cfg.clip_x0)
    out = Path(out)
    store = forecast_cohort(cohort.root, ckpt, out / "forecasts", samples=samples, settings=settings, batch_size=batch_size,
                            seed=seed, patients=ids, device=device)
    assert store is not None
    per, per_arm, summary = score_store(cohort, store, seed=seed)
    summary.update({"checkpoint": ckpt.id, "split": split, "sampler": settings.to_dict()})
    write_csv_atomic(per, out / "evaluation.csv")
    write_csv_atomic(per_arm, out / "per_arm.csv")
    write_json_atomic(summary, out / "summary.json")
    return summary
