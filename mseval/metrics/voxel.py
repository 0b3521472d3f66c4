"""Voxel-level reliability of forecast probability maps, streamed over a forecast store.

A block of S sampled masks gives each voxel a forecast probability k / S, k = the number of
samples in which the voxel is foreground (read from the block's sparse companion, so only the
foreground is touched). Inside the patient's brain mask, every voxel is scored against the
observed NET2 mask. `VoxelAccumulator.add` folds one patient into histograms of (S, k) ->
(voxels, observed-positive voxels), so memory is bounded by one patient's volume whatever the
store's size; `result()` gives the reliability table by forecast value, uniform-bin reliability
data, the Brier score, ECE and the voxel-level AUC (exact, from the value histogram, ties counted
one half). Forecast foreground outside the brain mask is not scored; its voxel count is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.io.sparse import SparseMasks
from mseval.metrics.activity import TIDY_COLUMNS
from mseval.metrics.calibration import assign_bins


@dataclass(frozen=True)
class VoxelReliability:
    """Voxel calibration over a cohort. `by_value`: p, voxels, positives, observed_rate (one row per forecast value)."""

    by_value: pd.DataFrame
    n_patients: int
    outside_brain_voxels: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_voxels(self) -> int:
        return int(self.by_value["voxels"].sum())

    @property
    def brier(self) -> float:
        v = self.by_value
        n = v["voxels"].to_numpy(float)
        pos = v["positives"].to_numpy(float)
        p = v["p"].to_numpy(float)
        return float(((n - pos) * p ** 2 + pos * (1 - p) ** 2).sum() / n.sum()) if n.sum() else float("nan")

    @property
    def ece(self) -> float:
        v = self.by_value
        n = v["voxels"].to_numpy(float)
        return float(np.abs(v["positives"].to_numpy(float) - n * v["p"].to_numpy(float)).sum() / n.sum()) if n.sum() else float("nan")

    @property
    def auc(self) -> float:
        v = self.by_value.sort_values("p")
        pos = v["positives"].to_numpy(float)
        neg = v["voxels"].to_numpy(float) - pos
        P, N = pos.sum(), neg.sum()
        if P == 0 or N == 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (P * N))

    def reliability(self, n_bins: int = 10) -> pd.DataFrame:
        """Uniform bins over [0, 1], closed edges (p = 0 and p = 1 counted): bin, p_low, p_high, voxels,
        mean_predicted, observed_rate, positives. Empty bins are dropped."""
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        v = self.by_value
        b = assign_bins(v["p"].to_numpy(float), edges)
        n = np.bincount(b, weights=v["voxels"].to_numpy(float), minlength=n_bins)
        pos = np.bincount(b, weights=v["positives"].to_numpy(float), minlength=n_bins)
        sp = np.bincount(b, weights=(v["voxels"] * v["p"]).to_numpy(float), minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            df = pd.DataFrame({"bin": np.arange(n_bins), "p_low": edges[:-1], "p_high": edges[1:], "voxels": n.astype(np.int64),
                               "mean_predicted": sp / n, "observed_rate": pos / n, "positives": pos.astype(np.int64)})
        return df[df["voxels"] > 0].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        """Tidy: voxel_brier, voxel_ece, voxel_auc (metric, value, ci_low, ci_high, threshold, n, note)."""
        note = "; ".join(self.notes)
        rows = [
            {"metric": "voxel_brier", "value": self.brier, "note": note},
            {"metric": "voxel_ece", "value": self.ece, "note": note or "over distinct forecast values"},
            {"metric": "voxel_auc", "value": self.auc, "note": note or "exact from the value histogram; no CI (voxels are not independent)"},
            {"metric": "voxel_prevalence", "value": float(self.by_value["positives"].sum() / max(self.n_voxels, 1)), "note": note},
        ]
        df = pd.DataFrame(rows)
        df["ci_low"] = np.nan
        df["ci_high"] = np.nan
        df["threshold"] = np.nan
        df["n"] = self.n_voxels
        return df[TIDY_COLUMNS]

    def summary(self) -> str:
        return (f"Voxel calibration inside the brain mask ({self.n_patients} patients, {self.n_voxels} voxels): Brier {self.brier:.5f}, "
                f"ECE {self.ece:.5f}, AUC {self.auc:.3f}; {self.outside_brain_voxels} forecast voxel-samples outside the brain not scored"
                + "".join(f"\n  note: {n}" for n in self.notes))


class VoxelAccumulator:
    """Streams patients into per-(S, k) histograms of voxels and observed positives."""

    def __init__(self) -> None:
        self._hist: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.n_patients = 0
        self.outside_brain = 0

    def add(self, sparse: SparseMasks, brain: np.ndarray, observed: np.ndarray, *, where: str | Path | None = None) -> None:
        """Fold one patient: sparse (S samples on (X, Y, Z)), brain and observed (X, Y, Z) binary masks."""
        if tuple(brain.shape) != tuple(sparse.shape) or tuple(observed.shape) != tuple(sparse.shape):
            raise InputError(where, f"forecast grid {tuple(sparse.shape)} differs from the cohort's masks {tuple(brain.shape)}", field="shape")
        S = sparse.n_samples
        b = np.asarray(brain, dtype=bool).ravel()
        o = np.asarray(observed, dtype=bool).ravel()
        ids, k = np.unique(sparse.indices, return_counts=True)
        inside = b[ids]
        self.outside_brain += int(k[~inside].sum())
        ids, k = ids[inside], k[inside]
        neg, pos = self._hist.setdefault(S, (np.zeros(S + 1, np.int64), np.zeros(S + 1, np.int64)))
        ok = o[ids]
        tot = np.bincount(k, minlength=S + 1)
        hit = np.bincount(k[ok], minlength=S + 1)
        n_brain, n_obs = int(b.sum()), int((o & b).sum())
        tot[0] = n_brain - ids.size
        hit[0] = n_obs - int(ok.sum())
        neg += tot - hit
        pos += hit
        self.n_patients += 1

    def result(self) -> VoxelReliability:
        rows = []
        for S, (neg, pos) in sorted(self._hist.items()):
            k = np.arange(S + 1)
            rows.append(pd.DataFrame({"p": k / S, "voxels": neg + pos, "positives": pos}))
        notes = []
        if not rows:
            notes.append("no patient scored")
            df = pd.DataFrame({"p": pd.Series(dtype=float), "voxels": pd.Series(dtype=np.int64), "positives": pd.Series(dtype=np.int64)})
        else:
            df = pd.concat(rows).groupby("p", as_index=False)[["voxels", "positives"]].sum()
            df = df[df["voxels"] > 0].reset_index(drop=True)
            if df["positives"].sum() == 0:
                notes.append("no observed NET2 voxel inside the brain masks: AUC undefined")
        with np.errstate(invalid="ignore", divide="ignore"):
            df["observed_rate"] = df["positives"] / df["voxels"]
        return VoxelReliability(df, self.n_patients, self.outside_brain, tuple(notes))


def voxel_reliability(cohort_dir: str | Path, forecasts_dir: str | Path, pairs: Iterable[tuple[str, str]] | None = None) -> VoxelReliability:
    """Voxel reliability of a store against a cohort's observed NET2 masks, inside the brain masks.

    pairs: (patient_id, arm) blocks to score; default each patient's allocated arm.
    """
    from mseval.io.cohort import read_cohort
    from mseval.io.store import ForecastStore

    cohort = read_cohort(cohort_dir)
    store = ForecastStore.open(forecasts_dir)
    if pairs is None:
        pairs = list(zip(cohort.manifest["patient_id"], cohort.manifest["arm"]))
    acc = VoxelAccumulator()
    for pid, arm in pairs:
        if cohort.path(pid, "net2_mask") is None:
            raise InputError(Path(cohort_dir) / "manifest.csv", f"patient {pid!r} has no net2_mask", field="net2_mask")
        vols = cohort.load_patient(pid, ("brain_mask", "net2_mask"))
        acc.add(store.block(pid, arm).sparse(), vols["brain_mask"].data, vols["net2_mask"].data, where=store.root / f"sparse/{pid}/{arm}.npz")
    return acc.result()
