"""Issue 21's per-patient effect accuracy on a DEV trial: each patient's log rate ratio of every arm against the
reference arm, as a count law predicts it, against the simulator's truth (`truth.csv` rate_ratio: the patient's own
ratio of expected counts, age modifier and response included), beside NB2 regressions fitted on the training trial's
observed counts. Used by `bench/image_count_dev.py --effects`.

Reported per law, pooled over the non-reference arms and within arm (each arm's patients centred on the arm's mean,
i.e. the heterogeneity alone): the slope of the true on the predicted log rate ratio (1 = calibrated), the slope of
the predicted on the true (the acceptance's wording; below 1 whenever part of the truth is unobservable, such as the
patient's response), the correlation, and the RMSE (log units).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecast.image_count import ImageCountNet, collate
from mseval.stats.baseline_nb2 import fit_nb2_baseline


def model_log_rate_ratios(net: ImageCountNet, patients: Sequence, arms: Sequence[str], ids: Sequence[str], *, zero: Sequence[int] = ()) -> pd.DataFrame:
    """(patient_id, arm, lrr): log of the model's expected count to the last visit under each arm over that under arms[0]."""
    rows = []
    with torch.no_grad():
        for lo in range(0, len(patients), 16):
            b = collate(patients[lo: lo + 16], zero_channels=zero)
            mus = [net(b["cond"], b["brain"], b["tab"], torch.full_like(b["arm"], k), b["years"], centres=False)[0][:, -1] for k in range(len(arms))]
            for k, arm in enumerate(arms):
                for j, lr in enumerate((mus[k] - mus[0]).numpy()):
                    rows.append((ids[lo + j], arm, float(lr)))
    return pd.DataFrame(rows, columns=["patient_id", "arm", "lrr"])


def nb2_log_rate_ratios(train: pd.DataFrame, dev: pd.DataFrame, arms: Sequence[str], formula: str) -> pd.DataFrame:
    """(patient_id, arm, lrr) of an NB2 regression (`formula`) fitted on `train`'s observed counts: each DEV patient's
    predicted mean under each arm over that under arms[0]."""
    fit = fit_nb2_baseline(train, formula=formula, reference=arms[0])
    base = np.log(fit.mean(dev.assign(arm=arms[0])))
    return pd.concat([pd.DataFrame({"patient_id": dev["patient_id"].to_numpy(), "arm": arm, "lrr": np.log(fit.mean(dev.assign(arm=arm))) - base})
                      for arm in arms], ignore_index=True)


def _fit(pred: np.ndarray, true: np.ndarray) -> dict:
    """Slopes, correlation and RMSE; a law whose predictions do not vary (SD < 1e-6 log units, e.g. an NB2 without an
    arm:age term within an arm) has no slope of the truth on them nor correlation: NaN, flagged `varies` False."""
    varies = bool(np.std(pred) > 1e-6)
    return {"varies": varies, "slope_true_on_pred": float(np.polyfit(pred, true, 1)[0]) if varies else float("nan"),
            "slope_pred_on_true": float(np.polyfit(true, pred, 1)[0]) if varies else 0.0,
            "corr": float(np.corrcoef(pred, true)[0, 1]) if varies else float("nan"), "rmse": float(np.sqrt(np.mean((pred - true) ** 2)))}


def effect_accuracy(predictions: dict[str, pd.DataFrame], root: str | Path, reference: str) -> dict:
    """{law: {"pooled": ..., "within_arm": ..., "n": patients x arms}} against truth.csv's log rate_ratio."""
    truth = pd.read_csv(Path(root) / "truth.csv")[["patient_id", "arm", "rate_ratio"]]
    out = {}
    for name, pred in predictions.items():
        d = pred.merge(truth, on=["patient_id", "arm"])
        d = d[d["arm"] != reference].assign(true=lambda x: np.log(x["rate_ratio"]))
        c = d.assign(lrr=d["lrr"] - d.groupby("arm")["lrr"].transform("mean"), true=d["true"] - d.groupby("arm")["true"].transform("mean"))
        out[name] = {"n": int(len(d)), "pooled": _fit(d["lrr"].to_numpy(), d["true"].to_numpy()),
                     "within_arm": _fit(c["lrr"].to_numpy(), c["true"].to_numpy())}
    return out


__all__ = ["effect_accuracy", "model_log_rate_ratios", "nb2_log_rate_ratios"]
