"""Issue 21's per-patient effect accuracy on a DEV trial: each patient's log rate ratio of every arm against the
reference arm, as a count law predicts it, against the simulator's truth (`truth.csv` rate_ratio: the patient's own
ratio of expected counts, age modifier and response included), beside NB2 regressions fitted on the training trial's
observed counts. Used by `bench/image_count_dev.py --effects`.

Reported per law, pooled over the non-reference arms and within arm (each arm's patients centred on the arm's mean,
i.e. the heterogeneity alone): the slope of the true on the predicted log rate ratio (1 = calibrated), the slope of
the predicted on the true (the acceptance's wording; below 1 whenever part of the truth is unobservable, such as the
patient's response), the correlation, and the RMSE (log units); and the same slope of the predicted on the truth's
*observable part* (`observable_log_rate_ratios`: the patient's response, which no input shows, integrated out), which
is 1 for the exact law given what can be observed. The observable part itself is reported as a law
(`observable_truth`), so the ceiling of the literal reading sits beside the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecast.image_count import ImageCountNet, collate
from mseval.stats.baseline_nb2 import fit_nb2_baseline


def model_log_means(net: ImageCountNet, patients: Sequence, arms: Sequence[str], ids: Sequence[str], *, zero: Sequence[int] = ()) -> pd.DataFrame:
    """(patient_id, arm, log_mu): the log of the model's expected count to the last visit of every patient under every arm."""
    rows = []
    with torch.no_grad():
        for lo in range(0, len(patients), 16):
            b = collate(patients[lo: lo + 16], zero_channels=zero)
            for k, arm in enumerate(arms):
                log_mu = net(b["cond"], b["brain"], b["tab"], torch.full_like(b["arm"], k), b["years"], centres=False)[0][:, -1]
                rows.extend((ids[lo + j], arm, float(v)) for j, v in enumerate(log_mu.numpy()))
    return pd.DataFrame(rows, columns=["patient_id", "arm", "log_mu"])


def model_log_rate_ratios(net: ImageCountNet, patients: Sequence, arms: Sequence[str], ids: Sequence[str], *, zero: Sequence[int] = ()) -> pd.DataFrame:
    """(patient_id, arm, lrr): log of the model's expected count to the last visit under each arm over that under arms[0]."""
    d = model_log_means(net, patients, arms, ids, zero=zero)
    ref = d[d["arm"] == arms[0]].set_index("patient_id")["log_mu"]
    return d.assign(lrr=d["log_mu"] - ref.loc[d["patient_id"]].to_numpy())[["patient_id", "arm", "lrr"]]


def population_ratios(means: pd.DataFrame, root: str | Path, reference: str) -> dict:
    """Counterfactual population rate ratios of a law against the truth. means: (patient_id, arm, mu) the law's expected
    count to the last visit of every patient under every arm. Per arm: the law's ratio of mean expected counts over the
    patients (every patient under both arms) vs the same ratio of `truth.csv`'s expected counts on the same patients
    (`same_patients`) and vs the world's superpopulation ratio (`mseval.simulate.counts_only.population_rate_ratios`,
    the protocol's target), each as law / truth."""
    import json

    from mseval.simulate.counts_only import population_rate_ratios
    from mseval.simulate.model import TrialConfig

    root = Path(root)
    truth = pd.read_csv(root / "truth.csv").groupby("arm")["expected_count"].mean()
    pop = population_rate_ratios(TrialConfig.from_dict(json.loads((root / "simulation.json").read_text())["config"]))
    m = means.groupby("arm")["mu"].mean()
    out = {}
    for arm in m.index:
        if arm == reference:
            continue
        law, same = float(m[arm] / m[reference]), float(truth[arm] / truth[reference])
        out[arm] = {"law": law, "same_patients": same, "population": pop[arm], "law_over_same": law / same, "law_over_population": law / pop[arm]}
    return out


def nb2_log_rate_ratios(train: pd.DataFrame, dev: pd.DataFrame, arms: Sequence[str], formula: str) -> pd.DataFrame:
    """(patient_id, arm, lrr) of an NB2 regression (`formula`) fitted on `train`'s observed counts: each DEV patient's
    predicted mean under each arm over that under arms[0]."""
    fit = fit_nb2_baseline(train, formula=formula, reference=arms[0])
    base = np.log(fit.mean(dev.assign(arm=arms[0])))
    return pd.concat([pd.DataFrame({"patient_id": dev["patient_id"].to_numpy(), "arm": arm, "lrr": np.log(fit.mean(dev.assign(arm=arm))) - base})
                      for arm in arms], ignore_index=True)


def observable_log_rate_ratios(root: str | Path, nodes: int = 40) -> pd.DataFrame:
    """(patient_id, arm, lrr): log E_R[rho_ia] for every patient and arm, the simulator's rate ratio
    rho_ia = RR_a ** (m_i R_ia) (`mseval.simulate.model`) with the patient's response R_ia = exp(response_sd Z), Z ~ N(0, 1),
    integrated out by Gauss-Hermite quadrature (`nodes` points): the ratio of the expected counts that a law knowing
    the arm, the age (m_i) and the latent activity but not the response would predict. Reads the trial's
    simulation.json (arms, modifier, response_sd) and manifest.csv (ages); truth-side, for scoring only."""
    import json

    from mseval.simulate.model import effect_multiplier

    root = Path(root)
    cfg = json.loads((root / "simulation.json").read_text())["config"]
    man = pd.read_csv(root / "manifest.csv")[["patient_id", "age"]]
    m = effect_multiplier(man["age"].to_numpy(float), float(cfg["modifier"]))
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    resp = np.exp(float(cfg["response_sd"]) * z)
    rows = []
    for a in cfg["arms"]:
        log_rr = np.log(float(a["rate_ratio"]))
        lrr = np.zeros(len(man)) if a.get("reference") else np.log(np.exp(np.outer(m, resp) * log_rr) @ w)
        rows.append(pd.DataFrame({"patient_id": man["patient_id"], "arm": a["arm"], "lrr": lrr}))
    return pd.concat(rows, ignore_index=True)


def _fit(pred: np.ndarray, true: np.ndarray) -> dict:
    """Slopes, correlation and RMSE; a law whose predictions do not vary (SD < 1e-6 log units, e.g. an NB2 without an
    arm:age term within an arm) has no slope of the truth on them nor correlation: NaN, flagged `varies` False."""
    varies = bool(np.std(pred) > 1e-6)
    return {"varies": varies, "slope_true_on_pred": float(np.polyfit(pred, true, 1)[0]) if varies else float("nan"),
            "slope_pred_on_true": float(np.polyfit(true, pred, 1)[0]) if varies else 0.0,
            "corr": float(np.corrcoef(pred, true)[0, 1]) if varies else float("nan"), "rmse": float(np.sqrt(np.mean((pred - true) ** 2)))}


def effect_accuracy(predictions: dict[str, pd.DataFrame], root: str | Path, reference: str) -> dict:
    """{law: {"pooled": ..., "within_arm": ..., "n": patients x arms}} against truth.csv's log rate_ratio; each block
    also holds `slope_pred_on_observable`, the slope of the prediction on `observable_log_rate_ratios`. The observable
    part is added as the law `observable_truth`."""
    truth = pd.read_csv(Path(root) / "truth.csv")[["patient_id", "arm", "rate_ratio"]]
    obs = observable_log_rate_ratios(root).rename(columns={"lrr": "obs"})
    out = {}
    for name, pred in (predictions | {"observable_truth": obs.rename(columns={"obs": "lrr"})}).items():
        d = pred.merge(truth, on=["patient_id", "arm"]).merge(obs, on=["patient_id", "arm"])
        d = d[d["arm"] != reference].assign(true=lambda x: np.log(x["rate_ratio"]))
        g = d.groupby("arm")
        c = d.assign(lrr=d["lrr"] - g["lrr"].transform("mean"), true=d["true"] - g["true"].transform("mean"), obs=d["obs"] - g["obs"].transform("mean"))
        blocks = {}
        for key, x in (("pooled", d), ("within_arm", c)):
            f = _fit(x["lrr"].to_numpy(), x["true"].to_numpy())
            f["slope_pred_on_observable"] = float(np.polyfit(x["obs"].to_numpy(), x["lrr"].to_numpy(), 1)[0]) if np.std(x["obs"]) > 1e-9 else float("nan")
            blocks[key] = f
        out[name] = {"n": int(len(d))} | blocks
    return out


__all__ = ["effect_accuracy", "model_log_rate_ratios", "nb2_log_rate_ratios", "observable_log_rate_ratios", "population_ratios", "model_log_means"]
