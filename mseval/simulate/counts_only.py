"""The trial's count model without images: fast trials for statistical validity checks.

Draws patients and their true counterfactual means exactly as `simulate_trial` does, then the
observed NET2 count under the allocated arm, Poisson(expected_count), and an oracle ensemble
(every patient x arm x sample, Poisson(expected_count)) -- the laws the image simulator and the
oracle forecaster follow, minus the masks. Use it where thousands of trials are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from mseval.seeding import rng_for
from mseval.simulate.model import WEEKS_PER_YEAR, TrialConfig, draw_patients, truth_frame


@dataclass(frozen=True)
class CountTrial:
    """table: one row per patient (analysis table: covariates, arm, followup_years, net2);
    counts: ensemble counts (patient_id, arm, sample, count) under every arm; truth: truth.csv rows."""

    table: pd.DataFrame
    counts: pd.DataFrame
    truth: pd.DataFrame


def simulate_count_trial(cfg: TrialConfig, *, samples: int = 20, forecast_seed: int = 0) -> CountTrial:
    patients = draw_patients(cfg, rng_for(cfg.seed, "patients"))
    truth = truth_frame(patients, cfg)
    rng = rng_for(cfg.seed, "counts-only")
    alloc = truth[truth["allocated"]].set_index("patient_id").loc[patients["patient_id"]]
    net2 = rng.poisson(alloc["expected_count"].to_numpy())
    truth["realized_count"] = pd.array([None] * len(truth), dtype="Int64")
    truth.loc[truth["allocated"].to_numpy(), "realized_count"] = pd.Series(net2, index=patients["patient_id"]).loc[truth.loc[truth["allocated"], "patient_id"]].to_numpy()
    table = patients[["patient_id", "arm", "site", "followup_weeks", "age", "sex", "edss", "gd_count"]].copy()
    table["t2_volume_mm3"] = patients["n_baseline_lesions"].to_numpy() * 150.0
    table["followup_years"] = table["followup_weeks"] / WEEKS_PER_YEAR
    table["net2"] = net2
    frng = rng_for(forecast_seed, "counts-only-forecast", cfg.seed)
    mu = truth["expected_count"].to_numpy()
    draws = frng.poisson(np.repeat(mu, samples))
    counts = pd.DataFrame({
        "patient_id": np.repeat(truth["patient_id"].to_numpy(), samples),
        "arm": np.repeat(truth["arm"].to_numpy(), samples),
        "sample": np.tile(np.arange(samples, dtype=np.int64), len(truth)),
        "count": draws.astype(np.int64),
        "volume_mm3": draws * 100.0,
    })
    return CountTrial(table, counts, truth)


@lru_cache(maxsize=16)
def population_rate_ratios(cfg: TrialConfig, n: int = 400_000, seed: int = 12345) -> dict[str, float]:
    """Superpopulation marginal rate ratios E[mu_a] / E[mu_ref] by Monte Carlo over the patient model
    (the target of an arm-only NB2 analysis of a randomized trial). MC relative error about 0.3%."""
    big = TrialConfig(**{**cfg.__dict__, "patients_per_arm": max(n // len(cfg.arms), 1)})
    pats = draw_patients(big, np.random.default_rng(seed))
    truth = truth_frame(pats, big)
    m = truth.groupby("arm")["annual_rate"].mean()
    return {a: float(m[a] / m[big.reference_arm]) for a in m.index}
