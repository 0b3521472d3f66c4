"""The generative model of the synthetic trial: patients, latent activity, true counterfactual rates.

Per patient i (ages in years, rates per year):
    u_i ~ Gamma(shape 1/dispersion, scale dispersion)                    latent activity, mean 1
    lambda_i = base_rate * exp(age_effect * (age_i - 37) / 10) * u_i     placebo NET2 rate
    RR_ia = RR_a ** m_i,  m_i = clip(1 - modifier * (age_i - 37) / 10, 0.4, 1.6)
                                     effect modifier: treatments work better in younger patients
                                     (Weideman et al., Front Neurol 2017)
    mu_ia = lambda_i * RR_ia * followup_years_i                          the counterfactual mean
    NET2 count under the allocated arm ~ Poisson(mu_ia)
So given the covariates, placebo counts are negative binomial (NB2) with alpha = dispersion.
The baseline images carry signal about u_i: Gd+ lesions ~ Poisson(gd_per_rate * lambda_i) and
the number of baseline T2 lesions rises with sqrt(lambda_i).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mseval.simulate.arms import DEFAULT_ARMS, ArmSpec
from mseval.units import WEEKS_PER_YEAR  # re-exported: the simulator's modules import it from here

AGE_CENTRE = 37.0


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines a simulated trial; the same config and seed give the same cohort."""

    patients_per_arm: int = 20
    shape: tuple[int, int, int] = (64, 76, 64)
    spacing: tuple[float, float, float] | None = None
    seed: int = 0
    followup_weeks: float = 48.0
    visit_window_weeks: int = 2
    base_rate: float = 7.0
    dispersion: float = 1.0
    age_effect: float = -0.3
    modifier: float = 0.3
    gd_per_rate: float = 0.2
    baseline_lesions_per_sqrt_rate: float = 3.0
    p_enlarging: float = 0.25
    new_radius_mm: float = 2.5
    baseline_radius_mm: float = 3.5
    min_lesion_voxels: int | None = None
    n_sites: int = 4
    arms: tuple[ArmSpec, ...] = field(default=DEFAULT_ARMS)

    @property
    def min_voxels(self) -> int:
        """Smallest lesion (voxels). Default by grid, so that coarse grids still hold a very active
        patient's lesions with their one-voxel gaps: 4 from 48 voxels per axis up, 3 from 32, 2 from
        24, 1 below (a voxel of the 182 mm field of view is then over 7 mm wide)."""
        if self.min_lesion_voxels is not None:
            return int(self.min_lesion_voxels)
        smallest = min(self.shape)
        return 4 if smallest >= 48 else 3 if smallest >= 32 else 2 if smallest >= 24 else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["min_lesion_voxels"] = self.min_voxels
        d["arms"] = [asdict(a) for a in self.arms]
        return d

    @property
    def reference_arm(self) -> str:
        return next(a.arm for a in self.arms if a.reference)


def patient_ids(n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"P{i + 1:0{width}d}" for i in range(n)]


def effect_multiplier(age: np.ndarray, modifier: float) -> np.ndarray:
    """m_i: the patient's log rate ratio is m_i times the arm's (larger m = stronger effect)."""
    return np.clip(1.0 - modifier * (np.asarray(age, dtype=float) - AGE_CENTRE) / 10.0, 0.4, 1.6)


def draw_patients(cfg: TrialConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One row per patient: covariates known at baseline, latent activity, allocation, follow-up.

    Allocation is a random permutation of `patients_per_arm` copies of every arm (equal arms).
    """
    arms = [a.arm for a in cfg.arms]
    n = cfg.patients_per_arm * len(arms)
    age = np.clip(rng.normal(AGE_CENTRE, 9.0, n), 18.0, 60.0).round(1)
    sex = np.where(rng.random(n) < 0.7, "F", "M")
    u = rng.gamma(1.0 / cfg.dispersion, cfg.dispersion, n)
    rate = cfg.base_rate * np.exp(cfg.age_effect * (age - AGE_CENTRE) / 10.0) * u
    gd = rng.poisson(cfg.gd_per_rate * rate)
    n_t2 = np.maximum(gd, 1 + rng.poisson(cfg.baseline_lesions_per_sqrt_rate * np.sqrt(rate)))
    edss_raw = 1.0 + 0.06 * (age - 30.0) + 0.4 * np.log1p(n_t2) + rng.normal(0.0, 0.8, n)
    edss = np.clip(np.round(edss_raw * 2.0) / 2.0, 0.0, 6.5)
    arm = rng.permutation(np.repeat(arms, cfg.patients_per_arm))
    site = np.array([f"site-{k + 1}" for k in rng.integers(0, cfg.n_sites, n)])
    weeks = cfg.followup_weeks + rng.integers(-cfg.visit_window_weeks, cfg.visit_window_weeks + 1, n)
    ventricle_scale = np.clip(np.round((1.0 + 0.01 * (age - AGE_CENTRE) + rng.normal(0, 0.08, n)) * 10) / 10, 0.8, 1.4)
    return pd.DataFrame(
        {
            "patient_id": patient_ids(n),
            "arm": arm,
            "site": site,
            "followup_weeks": weeks.astype(float),
            "age": age,
            "sex": sex,
            "edss": edss,
            "gd_count": gd.astype(np.int64),
            "n_baseline_lesions": n_t2.astype(np.int64),
            "latent_activity": u,
            "placebo_rate": rate,
            "ventricle_scale": ventricle_scale,
        }
    )


def truth_frame(patients: pd.DataFrame, cfg: TrialConfig, realized: dict[str, int] | None = None) -> pd.DataFrame:
    """truth.csv: every patient under every arm (schema `truth`).

    realized: NET2 count drawn under the allocated arm, by patient_id (None before it is drawn).
    """
    m = effect_multiplier(patients["age"].to_numpy(), cfg.modifier)
    years = patients["followup_weeks"].to_numpy() / WEEKS_PER_YEAR
    rows = []
    for spec in cfg.arms:
        rr = np.ones(len(patients)) if spec.reference else spec.rate_ratio ** m
        annual = patients["placebo_rate"].to_numpy() * rr
        mu = annual * years
        allocated = patients["arm"].to_numpy() == spec.arm
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": patients["patient_id"].to_numpy(),
                    "arm": spec.arm,
                    "allocated": allocated,
                    "followup_weeks": patients["followup_weeks"].to_numpy(),
                    "annual_rate": annual,
                    "rate_ratio": rr,
                    "expected_count": mu,
                    "p_active": -np.expm1(-mu),
                }
            )
        )
    truth = pd.concat(rows, ignore_index=True)
    order = {a.arm: k for k, a in enumerate(cfg.arms)}
    truth["_o"] = truth["arm"].map(order)
    truth = truth.sort_values(["patient_id", "_o"]).drop(columns="_o").reset_index(drop=True)
    counts = pd.array([None] * len(truth), dtype="Int64")
    if realized is not None:
        for k, (pid, alloc) in enumerate(zip(truth["patient_id"], truth["allocated"])):
            if alloc:
                counts[k] = realized[pid]
    truth["realized_count"] = counts
    return truth
