"""`mseval evaluate`: forecasts vs what was observed, the way a trial statistician reads them.

For every patient, the ensemble forecast under the patient's ALLOCATED arm (the only arm whose
outcome was observed) is scored against the observed NET2 mask:

- lesion counts of the forecast samples: `count_store` on the store (or a counts table given
  with `counts=`; its recorded counting settings must match the ones asked for);
- observed counts: the cohort's `net2_mask` files, counted with the same connectivity and
  minimum size (`count_lesions`); only when a patient has no net2_mask, truth.csv's
  `realized_count` (simulated cohorts), and the summary says for how many patients;
- activity (`mseval.metrics.activity`), P(active) and count calibration
  (`mseval.metrics.calibration`), voxel reliability inside the brain mask (`mseval.metrics.voxel`,
  streamed) and lesion-wise detection of each sample vs the observed mask
  (`mseval.lesions.matching.match_lesions`), overall and per allocated arm.

The output folder is written atomically (`atomic_dir`): bad input leaves nothing behind.
`compute_metrics` is the I/O-free core (counts table + observed table in, results out).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.provenance import forecast_provenance
from mseval.errors import InputError
from mseval.metrics.activity import ActivityResult, CountErrorResult, activity_metrics, count_error, ensemble_matrix, p_active
from mseval.metrics.calibration import LEVELS, BinaryCalibration, CountCalibration, binary_calibration, count_calibration
from mseval.metrics.voxel import VoxelReliability

OVERALL = "all"
METRIC_COLUMNS = ["group", "metric", "value", "ci_low", "ci_high", "threshold", "n", "note"]
PATIENT_COLUMNS = [
    "patient_id", "arm", "samples", "observed_count", "observed_active", "observed_source",
    "mean_count", "sd_count", "median_count", "p_active", "pit", "crps_fair", "rps",
    "lower_50", "upper_50", "lower_80", "upper_80", "lower_95", "upper_95",
]
"""Per-patient columns of patients.csv (truth columns `true_expected_count`, `true_p_active` and the
detection means `det_*` follow when available)."""


@dataclass(frozen=True)
class EvaluationSettings:
    """Every setting of an evaluation (all recorded in summary.json)."""

    k: int = 1
    operating_point: str | float = "youden"
    connectivity: int = 26
    min_volume_mm3: float = 3.0
    min_voxels: int | None = None
    n_bins: int = 10
    bin_strategy: str = "quantile"
    pit_bins: int = 10
    pit_kind: str = "augmented"
    levels: tuple[float, ...] = LEVELS
    n_boot: int = 1000
    seed: int = 0
    confidence_level: float = 0.95
    by_arm: bool = True
    voxel: bool = True
    voxel_bins: int = 10
    detection: bool = True
    detection_preset: str | None = None
    workers: int = 1

    def check(self) -> None:
        if self.k < 1:
            raise InputError(None, f"--k must be at least 1, got {self.k}", field="k")
        if self.connectivity not in (6, 18, 26):
            raise InputError(None, f"--connectivity must be 6, 18 or 26, got {self.connectivity}", field="connectivity")
        if self.min_volume_mm3 < 0 or (self.min_voxels is not None and self.min_voxels < 0):
            raise InputError(None, "the minimum lesion size must not be negative", field="min_volume_mm3")
        if isinstance(self.operating_point, str) and self.operating_point != "youden":
            raise InputError(None, f"--operating-point must be 'youden' or a number in [0, 1], got {self.operating_point!r}", field="operating_point")
        if not isinstance(self.operating_point, str) and not 0 <= float(self.operating_point) <= 1:
            raise InputError(None, f"--operating-point must be in [0, 1], got {self.operating_point}", field="operating_point")
        if self.n_bins < 1 or self.pit_bins < 2 or self.voxel_bins < 1:
            raise InputError(None, "bins must be positive (PIT bins at least 2)", field="n_bins")
        if self.bin_strategy not in ("quantile", "uniform"):
            raise InputError(None, f"--bin-strategy must be quantile or uniform, got {self.bin_strategy!r}", field="bin_strategy")
        if self.pit_kind not in ("augmented", "ensemble"):
            raise InputError(None, f"--pit-kind must be augmented or ensemble, got {self.pit_kind!r}", field="pit_kind")
        if not all(0 < lv < 1 for lv in self.levels):
            raise InputError(None, f"interval levels must be in (0, 1), got {self.levels}", field="levels")
        if self.n_boot < 0:
            raise InputError(None, "--n-boot must not be negative", field="n_boot")
        if not 0 < self.confidence_level < 1:
            raise InputError(None, "--confidence-level must be in (0, 1)", field="confidence_level")


@dataclass(frozen=True)
class GroupResult:
    """Metrics of one group of patients (all, or one allocated arm)."""

    group: str
    activity: ActivityResult
    count_error: CountErrorResult
    binary: BinaryCalibration
    counts: CountCalibration

    def to_frame(self) -> pd.DataFrame:
        parts = [self.activity.to_frame(), self.count_error.to_frame(), self.binary.to_frame(), self.counts.to_frame()]
        df = pd.concat(parts, ignore_index=True)
        df.insert(0, "group", self.group)
        return df[METRIC_COLUMNS]


def _flag_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Add `estimable` by the shared rule (`mseval.stats.estimability.assess_additive`): the value is
    finite and, where the row has an interval, so is the interval; a failing row's note says why."""
    from mseval.stats.estimability import assess_additive

    ok_col, notes = [], []
    for r in df.itertuples(index=False):
        lo, hi = r.ci_low, r.ci_high
        no_ci = pd.isna(lo) and pd.isna(hi)
        ok, why = assess_additive(r.value, None if no_ci else lo, None if no_ci else hi)
        ok_col.append(bool(ok))
        old = r.note if isinstance(r.note, str) else ""
        notes.append(old if ok else "; ".join(filter(None, [old, why])))
    return df.assign(note=notes, estimable=ok_col)


@dataclass(frozen=True)
class EvaluationResult:
    """The evaluation: per-patient table, metrics per group, voxel reliability, detection, flags."""

    patients: pd.DataFrame
    groups: tuple[GroupResult, ...]
    settings: EvaluationSettings
    samples: int
    flags: tuple[str, ...] = field(default_factory=tuple)
    voxel: VoxelReliability | None = None
    detection: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str = OVERALL) -> GroupResult:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def to_frame(self) -> pd.DataFrame:
        """Tidy metrics: group, metric, value, ci_low, ci_high, threshold, n, note, estimable."""
        parts = [g.to_frame() for g in self.groups]
        if self.voxel is not None:
            v = self.voxel.to_frame()
            v.insert(0, "group", "voxels")
            parts.append(v[METRIC_COLUMNS])
        if self.detection is not None and len(self.detection):
            parts.append(_detection_metrics(self.detection))
        return _flag_metrics(pd.concat(parts, ignore_index=True))

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables `evaluate` writes, by file stem."""
        conf, rel, pit, cov = [], [], [], []
        for g in self.groups:
            conf.append(g.activity.confusion_matrix().assign(group=g.group))
            rel.append(g.binary.reliability.assign(group=g.group))
            pit.append(g.counts.pit_test.histogram.assign(group=g.group))
            cov.append(g.counts.coverage.assign(group=g.group))

        def front(dfs: list[pd.DataFrame]) -> pd.DataFrame:
            df = pd.concat(dfs, ignore_index=True)
            return df[["group", *[c for c in df.columns if c != "group"]]]

        out = {"patients": self.patients, "metrics": self.to_frame(), "confusion": front(conf), "reliability": front(rel),
               "pit_histogram": front(pit), "coverage": front(cov)}
        if self.voxel is not None:
            out["voxel_reliability"] = self.voxel.reliability(self.settings.voxel_bins)
            out["voxel_values"] = self.voxel.by_value
        if self.detection is not None:
            out["detection"] = self.detection
        return out

    def summary(self) -> str:
        g = self.group()
        lines = [f"Evaluation of {len(self.patients)} patients ({self.samples} samples each, allocated arm)",
                 g.activity.summary(), g.count_error.summary(), g.binary.summary(), g.counts.summary()]
        if self.voxel is not None:
            lines.append(self.voxel.summary())
        if self.detection is not None and len(self.detection):
            d = self.detection
            tp, fp, fn = int(d["tp_ref"].sum()), int(d["fp"].sum()), int(d["fn"].sum())
            lines.append(f"Detection ({d['rule'].iloc[0]}, every sample vs the observed NET2 mask): TP {tp}, FP {fp}, FN {fn}; "
                         f"mean Dice {np.nanmean(d['dice']) if d['dice'].notna().any() else float('nan'):.3f}")
        lines += [f"FLAG: {f}" for f in self.flags]
        return "\n".join(lines)


def _detection_metrics(det: pd.DataFrame) -> pd.DataFrame:
    tp_ref, tp_pred, fp, fn = (int(det[c].sum()) for c in ("tp_ref", "tp_pred", "fp", "fn"))
    from mseval.metrics.activity import wilson

    n_ref, n_pred = tp_ref + fn, tp_pred + fp
    rec_ci, prec_ci = wilson(tp_ref, n_ref), wilson(tp_pred, n_pred)
    scored = det[~det["empty_case"].astype(bool)]
    rows = [
        {"metric": "lesion_recall_pooled", "value": tp_ref / n_ref if n_ref else np.nan, "ci_low": rec_ci[0], "ci_high": rec_ci[1], "n": n_ref,
         "note": "pooled over samples and patients; Wilson CI ignores clustering" if n_ref else "no observed lesion"},
        {"metric": "lesion_precision_pooled", "value": tp_pred / n_pred if n_pred else np.nan, "ci_low": prec_ci[0], "ci_high": prec_ci[1], "n": n_pred,
         "note": "pooled over samples and patients; Wilson CI ignores clustering" if n_pred else "no forecast lesion"},
        {"metric": "lesion_f1_mean", "value": float(scored["f1"].mean()) if len(scored) else np.nan, "ci_low": np.nan, "ci_high": np.nan,
         "n": len(scored), "note": f"{int(det['empty_case'].sum())} empty cases reported apart"},
        {"metric": "dice_mean", "value": float(scored["dice"].mean()) if len(scored) else np.nan, "ci_low": np.nan, "ci_high": np.nan,
         "n": len(scored), "note": "voxel Dice, non-empty cases"},
    ]
    df = pd.DataFrame(rows)
    df["group"] = "detection"
    df["threshold"] = np.nan
    return df[METRIC_COLUMNS]


# -- the I/O-free core ----------------------------------------------------------------------
def allocated_ensembles(counts: pd.DataFrame, observed: pd.DataFrame, arms: list[str], *, file: str | Path | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Check a counts table against the arms and the allocation; return (patients, (n, S) matrix)
    under each patient's allocated arm, rows in `observed` order.

    observed: patient_id, arm (allocated), observed_count (+ any extra columns, kept).
    """
    present = pd.unique(counts["arm"]) if "arm" in counts.columns else []
    unknown = [a for a in present if a not in set(arms)]
    if unknown:
        raise InputError(file, f"arm {unknown[0]!r} is not in the arms table ({', '.join(arms)})", field="arm")
    keys, mat = ensemble_matrix(counts, file=file)
    known = set(observed["patient_id"])
    stray = keys.loc[~keys["patient_id"].isin(known), "patient_id"]
    if len(stray):
        raise InputError(file, f"patient {stray.iloc[0]!r} is not in the cohort's manifest", field="patient_id")
    pos = pd.Series(np.arange(len(keys)), index=pd.MultiIndex.from_frame(keys[["patient_id", "arm"]]))
    want = pd.MultiIndex.from_frame(observed[["patient_id", "arm"]])
    rows = pos.reindex(want)
    if rows.isna().any():
        k = int(np.flatnonzero(rows.isna().to_numpy())[0])
        pid, arm = want[k]
        only = f"; the table holds only arm {present[0]!r}" if len(present) == 1 else ""
        raise InputError(file, f"no forecast counts for patient {pid!r} under the allocated arm {arm!r}{only}", field="arm")
    return observed.reset_index(drop=True), mat[rows.to_numpy(dtype=np.int64)]


def _group_metrics(name: str, ens: np.ndarray, obs: np.ndarray, s: EvaluationSettings, seed: int) -> GroupResult:
    pa = p_active(ens, s.k)
    active = obs >= s.k
    act = activity_metrics(pa, active, k=s.k, operating_point=s.operating_point, confidence_level=s.confidence_level)
    err = count_error(ens.mean(axis=1), obs, confidence_level=s.confidence_level)
    binc = binary_calibration(pa, active, samples=ens.shape[1], n_bins=s.n_bins, strategy=s.bin_strategy, n_boot=s.n_boot, seed=seed,
                              confidence_level=s.confidence_level)
    cc = count_calibration(ens, obs, levels=s.levels, pit_bins=s.pit_bins, seed=seed, pit_kind=s.pit_kind, confidence_level=s.confidence_level)
    return GroupResult(name, act, err, binc, cc)


def compute_metrics(
    counts: pd.DataFrame,
    observed: pd.DataFrame,
    arms: list[str],
    settings: EvaluationSettings = EvaluationSettings(),
    *,
    file: str | Path | None = None,
    truth: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Activity and calibration of the allocated-arm forecasts (no voxels, no detection).

    counts: patient_id, arm, sample, count (every patient x arm x S samples, or at least the
    allocated arm). observed: patient_id, arm (allocated), observed_count, observed_source.
    truth: optional truth.csv frame (adds true_expected_count / true_p_active columns).
    """
    settings.check()
    pats, ens = allocated_ensembles(counts, observed, arms, file=file)
    obs = pats["observed_count"].to_numpy(dtype=np.int64)
    S = ens.shape[1]
    flags: list[str] = []
    if S < 2:
        flags.append(f"only {S} sample per patient: fair CRPS undefined, P(active) is 0 or 1")
    if (ens == 0).all():
        flags.append("every forecast sample has zero lesions: P(active) = 0 for every patient; AUC is 0.5 by ties and the calibration slope undefined")
    if (obs == 0).all():
        flags.append("every observed count is zero: AUC, sensitivity and the calibration intercept/slope are undefined")
    groups = [_group_metrics(OVERALL, ens, obs, settings, settings.seed)]
    if settings.by_arm:
        for j, arm in enumerate(a for a in arms if (pats["arm"] == a).any()):
            m = (pats["arm"] == arm).to_numpy()
            groups.append(_group_metrics(arm, ens[m], obs[m], settings, settings.seed + 1 + j))
    pit = groups[0].counts.pit
    qs = {}
    for lv in settings.levels:
        lo, hi = np.quantile(ens, [(1 - lv) / 2, (1 + lv) / 2], axis=1, method="inverted_cdf")
        qs[f"lower_{round(100 * lv)}"], qs[f"upper_{round(100 * lv)}"] = lo.astype(np.int64), hi.astype(np.int64)
    table = pd.DataFrame({
        "patient_id": pats["patient_id"].to_numpy(), "arm": pats["arm"].to_numpy(), "samples": S,
        "observed_count": obs, "observed_active": obs >= settings.k, "observed_source": pats["observed_source"].to_numpy(),
        "mean_count": ens.mean(axis=1), "sd_count": ens.std(axis=1, ddof=1) if S > 1 else np.nan,
        "median_count": np.median(ens, axis=1), "p_active": p_active(ens, settings.k), "pit": pit,
        "crps_fair": groups[0].counts.crps, "rps": groups[0].counts.rps, **qs,
    })
    info: dict[str, Any] = {}
    if truth is not None:
        t = truth.set_index(["patient_id", "arm"])
        idx = pd.MultiIndex.from_frame(table[["patient_id", "arm"]])
        table["true_expected_count"] = t["expected_count"].reindex(idx).to_numpy(dtype=float)
        table["true_p_active"] = t["p_active"].reindex(idx).to_numpy(dtype=float)
        if table["true_expected_count"].notna().all():
            d = table["mean_count"] - table["true_expected_count"]
            info["vs_truth"] = {
                "mae_mean_vs_true_expected": float(d.abs().mean()), "bias_mean_vs_true_expected": float(d.mean()),
                "pearson_mean_vs_true_expected": float(np.corrcoef(table["mean_count"], table["true_expected_count"])[0, 1]) if table["mean_count"].std() > 0 else None,
                "mae_p_active_vs_true": float((table["p_active"] - table["true_p_active"]).abs().mean()),
            }
    for g in groups:
        flags += [f"{g.group}: {n}" for n in (*g.activity.notes, *g.count_error.notes) if n]
        if g.binary.recalibration.note:
            flags.append(f"{g.group}: calibration {g.binary.recalibration.note}")
    return EvaluationResult(table, tuple(groups), settings, S, tuple(flags), info=info)


# -- the command's orchestration ------------------------------------------------------------
def _read_counts(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "file not found", field="counts")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read the counts table ({type(exc).__name__}: {exc})") from None


def _check_count_settings(path: Path, s: EvaluationSettings) -> dict | None:
    """The settings recorded in a counts.parquet; InputError when they differ from the requested ones."""
    if path.suffix.lower() == ".csv":
        return None
    from mseval.lesions.ensemble import read_count_settings

    try:
        meta = read_count_settings(path)
    except InputError:
        return None
    want = {"connectivity": s.connectivity, "min_volume_mm3": s.min_volume_mm3, "min_voxels": s.min_voxels}
    for k, v in want.items():
        if k in meta and meta[k] != v and not (isinstance(v, float) and meta[k] is not None and float(meta[k]) == v):
            raise InputError(path, f"was counted with {k}={meta[k]!r} but the evaluation asks for {k}={v!r}; pass the same counting settings", field=k)
    return meta


def _detection_rule(s: EvaluationSettings):  # noqa: ANN202
    try:
        from mseval.lesions.presets import rule_from_options
    except ImportError:  # pragma: no cover
        return None
    try:
        if s.detection_preset:
            return rule_from_options(s.detection_preset)
        from mseval.lesions.presets import DEFAULT_RULE

        opts = {k: v for k, v in {"connectivity": s.connectivity, "min_volume_mm3": s.min_volume_mm3}.items() if getattr(DEFAULT_RULE, k) != v}
        return rule_from_options(None, **opts)
    except (KeyError, ValueError) as exc:
        raise InputError(None, str(exc).strip("'\""), field="detection_preset") from None


def detect_patient(sparse: Any, observed: np.ndarray, affine: np.ndarray, rule: Any) -> pd.DataFrame | None:
    """Detection hook: lesion-wise matching of every forecast sample vs the observed NET2 mask.

    Returns one row per sample (columns of `mseval.lesions.matching.MATCH_COLUMNS` plus `sample`),
    or None when `mseval.lesions.matching` is not available.
    """
    try:
        from mseval.lesions.matching import match_lesions
    except ImportError:  # pragma: no cover - the matching module ships with mseval
        return None
    rows = [match_lesions(sparse.dense(s), observed, affine, rule).to_frame().assign(sample=s) for s in range(sparse.n_samples)]
    return pd.concat(rows, ignore_index=True)


def evaluate(
    cohort_dir: str | Path,
    forecasts_dir: str | Path,
    out: str | Path,
    settings: EvaluationSettings = EvaluationSettings(),
    *,
    counts: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate the forecasts of `forecasts_dir` against the observed outcomes of `cohort_dir`;
    write tables and summary.json into the folder `out` (atomically). See the module docstring."""
    from mseval.io.atomic import atomic_dir, recorded_path, write_csv_atomic, write_json_atomic, write_parquet_atomic
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore
    from mseval.lesions.components import count_lesions
    from mseval.metrics.voxel import VoxelAccumulator

    settings.check()
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "exists already; remove it, choose another --out, or pass --overwrite")
    cohort = read_cohort(cohort_dir)
    arms = list(cohort.arms["arm"])
    store = ForecastStore.open(forecasts_dir) if (settings.voxel or settings.detection or counts is None) else None
    flags: list[str] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        # 1. forecast counts
        count_meta: dict | None
        if counts is not None:
            cpath = Path(counts)
            table = _read_counts(cpath)
            count_meta = _check_count_settings(cpath, settings)
            counts_source = recorded_path(cpath, out)
            if count_meta is None:
                flags.append(f"{cpath.name} records no counting settings; assumed connectivity {settings.connectivity}, >= {settings.min_volume_mm3} mm^3")
        else:
            from mseval.lesions.ensemble import CountSettings, count_store

            cs = CountSettings(settings.connectivity, settings.min_volume_mm3, settings.min_voxels)
            res = count_store(forecasts_dir, tmp / "_count", cs, workers=settings.workers)
            table = res.counts
            count_meta = res.settings
            cpath = tmp / "forecast_counts.parquet"
            (tmp / "_count" / "counts.parquet").replace(cpath)
            import shutil

            shutil.rmtree(tmp / "_count", ignore_errors=True)
            counts_source = "counted from the store (forecast_counts.parquet)"

        # 2. observed outcomes (+ voxel reliability and detection, one patient at a time)
        man = cohort.manifest
        has_net2 = "net2_mask" in man.columns
        truth = cohort.truth
        realized = None if truth is None else truth[truth["allocated"].astype(bool)].set_index("patient_id")["realized_count"]
        acc = VoxelAccumulator() if settings.voxel else None
        rule = _detection_rule(settings) if settings.detection else None
        det_parts: list[pd.DataFrame] = []
        rows = []
        n = len(man)
        for i, (pid, arm) in enumerate(zip(man["patient_id"], man["arm"])):
            p = cohort.path(pid, "net2_mask") if has_net2 else None
            if p is not None:
                fields = ("net2_mask", "brain_mask") if acc is not None else ("net2_mask",)
                vols = cohort.load_patient(pid, fields)
                net2 = vols["net2_mask"]
                lc = count_lesions(net2.data, net2.affine, connectivity=settings.connectivity, min_volume_mm3=settings.min_volume_mm3,
                                   min_voxels=settings.min_voxels)
                rows.append((pid, arm, lc.count, "net2_mask"))
                if store is not None and (acc is not None or rule is not None) and (pid, arm) in store:
                    sp = store.block(pid, arm).sparse()
                    if tuple(sp.shape) != net2.shape:
                        raise InputError(store.root / f"sparse/{pid}/{arm}.npz", f"forecast grid {tuple(sp.shape)} differs from the cohort's {net2.shape} for patient {pid!r}", field="shape")
                    if sp.affine is not None and not np.allclose(sp.affine, net2.affine, atol=1e-3):
                        raise InputError(store.root / f"sparse/{pid}/{arm}.npz", f"forecast affine differs from the cohort's for patient {pid!r}", field="affine")
                    if acc is not None:
                        acc.add(sp, vols["brain_mask"].data, net2.data, where=store.root / f"sparse/{pid}/{arm}.npz")
                    if rule is not None:
                        d = detect_patient(sp, net2.data, net2.affine, rule)
                        if d is not None:
                            det_parts.append(d.assign(patient_id=pid, arm=arm))
            elif realized is not None and pid in realized.index and pd.notna(realized[pid]):
                rows.append((pid, arm, int(realized[pid]), "truth_realized_count"))
            else:
                raise InputError(Path(cohort_dir) / "manifest.csv", f"patient {pid!r} has no net2_mask and no realized count in truth.csv: nothing observed to evaluate against",
                                 row=i + 1, field="net2_mask")
            if progress:
                progress(i + 1, n)
        observed = pd.DataFrame(rows, columns=["patient_id", "arm", "observed_count", "observed_source"])
        n_truth = int((observed["observed_source"] != "net2_mask").sum())
        if n_truth:
            flags.append(f"{n_truth} of {n} patients have no net2_mask: their observed counts come from truth.csv realized_count "
                         "(drawn counts, not counted from a mask)")

        # 3. metrics
        result = compute_metrics(table, observed, arms, settings, file=cpath, truth=truth)
        voxel = acc.result() if acc is not None else None
        if voxel is not None and voxel.n_patients < n:
            flags.append(f"voxel reliability covers {voxel.n_patients} of {n} patients (the others lack a net2_mask or a forecast block)")
        if settings.detection and rule is None:
            flags.append("detection skipped: mseval.lesions.matching is not available")
        detection = None
        if det_parts:
            det = pd.concat(det_parts, ignore_index=True)
            detection = det[["patient_id", "arm", "sample", *[c for c in det.columns if c not in ("patient_id", "arm", "sample")]]]
            means = detection.groupby("patient_id")[["tp_ref", "fp", "fn", "precision", "recall", "f1", "dice"]].mean().add_prefix("det_")
            result = _replace(result, patients=result.patients.join(means, on="patient_id"))
        result = _replace(result, voxel=voxel, detection=detection, flags=tuple(flags) + result.flags)

        # 4. write
        tables = result.tables()
        for name, df in tables.items():
            write_csv_atomic(df, tmp / f"{name}.csv")
        write_parquet_atomic(result.patients, tmp / "patients.parquet")
        write_json_atomic(_summary_json(result, cohort_dir, forecasts_dir, counts_source, count_meta, observed, rule, sorted(tables)), tmp / "summary.json")
    return result


def _replace(r: EvaluationResult, **kw: Any) -> EvaluationResult:
    from dataclasses import replace

    return replace(r, **kw)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def _summary_json(r: EvaluationResult, cohort_dir: Any, forecasts_dir: Any, counts_source: str, count_meta: dict | None,
                  observed: pd.DataFrame, rule: Any, tables: list[str]) -> dict:
    metrics: dict[str, dict] = {}
    for rec in r.to_frame().to_dict("records"):
        metrics.setdefault(rec["group"], {})[rec["metric"]] = {
            "value": _clean(rec["value"]), "ci_low": _clean(rec["ci_low"]), "ci_high": _clean(rec["ci_high"]), "n": _clean(rec["n"]),
            **({"threshold": _clean(rec["threshold"])} if pd.notna(rec["threshold"]) else {}), **({"note": rec["note"]} if rec["note"] else {}),
        }
    s = asdict(r.settings)
    s["levels"] = list(s["levels"])
    src = observed["observed_source"].value_counts().to_dict()
    return _deep_clean({
        "format": "mseval-evaluation-summary",
        "mseval_version": __version__,
        "inputs": {"cohort": str(cohort_dir), "forecasts": str(forecasts_dir), "counts": counts_source},
        "provenance": forecast_provenance(cohort_dir, forecasts_dir),
        "settings": s,
        "counting": json.loads(json.dumps(count_meta, default=str)) if count_meta else None,
        "observed": {"from_net2_mask": int(src.get("net2_mask", 0)), "from_truth_realized_count": int(src.get("truth_realized_count", 0)),
                     "connectivity": r.settings.connectivity, "min_volume_mm3": r.settings.min_volume_mm3, "min_voxels": r.settings.min_voxels},
        "definitions": {
            "forecast_arm": "each patient's allocated arm",
            "p_active": f"share of samples with >= {r.settings.k} lesion(s)",
            "pit": f"randomized PIT, kind '{r.settings.pit_kind}' (augmented: against the ensemble plus the observation, exactly uniform when calibrated)",
            "interval_quantiles": "numpy method='inverted_cdf' (Hyndman-Fan type 1), closed intervals",
            "auc_ci": "DeLong SE, normal interval clipped to [0, 1]",
            "ece_ci": "patient bootstrap (BCa, percentile fallback)",
        },
        "n_patients": int(len(r.patients)),
        "samples": int(r.samples),
        "arms": sorted(set(r.patients["arm"])),
        "metrics": metrics,
        "vs_truth": r.info.get("vs_truth"),
        "detection": None if rule is None else {"rule": rule.settings(), "rows": 0 if r.detection is None else int(len(r.detection))},
        "voxel": None if r.voxel is None else {"patients": r.voxel.n_patients, "voxels": r.voxel.n_voxels, "outside_brain_voxel_samples": r.voxel.outside_brain_voxels},
        "flags": list(r.flags),
        "tables": [f"{t}.csv" for t in tables] + ["patients.parquet"] + (["forecast_counts.parquet"] if counts_source.startswith("counted") else []),
    })


def _deep_clean(v: Any) -> Any:
    """NaN/inf -> null (strict JSON), numpy scalars -> Python, tuples -> lists, recursively."""
    if isinstance(v, dict):
        return {str(k): _deep_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_deep_clean(x) for x in v]
    return _clean(v)
