"""The generative model of the synthetic trial: patients, latent activity, visits, true counterfactual rates.

Per patient i (ages in years, rates per year, times in weeks from baseline):
    u_i ~ Gamma(shape 1/dispersion, scale dispersion)                    latent activity, mean 1
    lambda_i = base_rate * exp(age_effect * (age_i - 37) / 10) * u_i     placebo NET2 rate
    rho_ia = RR_a ** (m_i * R_ia),  m_i = clip(1 - modifier * (age_i - 37) / 10, 0.4, 1.6)
        m_i: treatments work better in younger patients (Weideman et al., Front Neurol 2017);
        R_ia = exp(response_sd * Z_ia), Z_ia ~ N(0, 1) on active arms (R = 1 on the reference arm):
        the patient's own response, so treated arms are more overdispersed than placebo
        (WORLD_FACTS 1: k about 3-4 on treatment). rho_ia <= 1 whenever RR_a <= 1.
    New and enlarging lesions arise in continuous time as a Poisson process of rate lambda_i under
    placebo; under arm a each event survives with probability rho_ia (thinning, from randomisation
    on: see `mseval.simulate.events`), so the NET2 count over any interval (t0, t1] is
    Poisson(lambda_i rho_ia (t1 - t0) / 52.1775): interval counts add up exactly.
So given the covariates, placebo counts are negative binomial (NB2) with alpha = dispersion.

What the baseline shows about u_i (the observation model of `mseval.simulate.observable_oracle`):
    Gd+ lesions G_i ~ Poisson(gd_per_rate * lambda_i) (lesions born in the last gd_per_rate years);
    T2 lesions T_i = max(G_i, 1 + X_i), X_i ~ NB2(mean b sqrt(lambda_i), t2_count_dispersion): the
        T2 load reflects the whole disease history, so it is a noisy signal of today's rate;
    diffusely abnormal white matter (DAWM), a share of the white matter
        f_i = dawm_fraction * u_i ** dawm_strength * exp(dawm_sd * N - dawm_sd^2 / 2);
    pre-lesional sites: future new lesions whose pre-lesional change (onset `prelesion_months`
        before the lesion appears) has begun at baseline and is visible (share `prelesion_fraction`).
Every image knob at 0 (dawm_strength, prelesion_fraction) leaves only the lesion counts to read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mseval.simulate.arms import DEFAULT_ARMS, ArmSpec
from mseval.units import WEEKS_PER_YEAR  # re-exported: the simulator's modules import it from here

AGE_CENTRE = 37.0
WEEKS_PER_MONTH = WEEKS_PER_YEAR / 12.0


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines a simulated trial; the same config and seed give the same cohort.

    Visits: `visits` (weeks after baseline, increasing) unless `followup_weeks` is set, which asks for
    one follow-up visit at that week (the single-visit trials of earlier versions). Each visit varies
    by +/- `visit_window_weeks` per patient.

    Image channels (each documented in `mseval.simulate.model`'s docstring; 0 switches it off):
    `dawm_strength` (and its rendering contrast `dawm_contrast`, a multiple of `mri.DAWM_DELTA`: at the default 2
    the DAWM's FLAIR is +120 a.u., 4 noise SDs, close to grey matter's +140 as DAWM is described (docs/world.md);
    trials written before 2026-12-08 were rendered at 1; it changes the images only, never the DAWM share the oracle reads),
    `prelesion_fraction` (and its rendering contrast `prelesion_contrast`, in units of the image noise SD), `spatial_strength` (the patient's own lesion-prone regions, shared by
    baseline and new lesions), `load_preference` (new lesions favour the regions of the patient's baseline
    lesions, smoothed over `load_smooth_mm`), `dawm_preference` (new lesions favour DAWM), `site_gain_sd` /
    `site_offset_sd` (scanner intensity differences between sites), `field_3t_share` (share of sites
    scanning at 3 T; the rest at 1.5 T) and `small_lesion_contrast_1p5t` (the fraction of its contrast
    a lesion under `small_lesion_mm3` keeps on every sequence at 1.5 T; 1 switches it off: WORLD_FACTS
    8, +15% T2 lesions seen at 3 T, mostly small ones). The scanner changes the images only: the
    lesion masks are the reference-standard annotation, so observed counts stay the true ones.

    Dropout (default off): hazard `dropout_per_year` per year of follow-up, `dropout_arm_difference`
    added on the reference arm (patients on the weaker arm leave more), log hazard ratio `dropout_mar`
    after an interval with observed NET2 activity (missing at random) and `dropout_mnar` per unit
    log latent activity (missing not at random); `missed_visit`: each scheduled visit missed at random.
    """

    patients_per_arm: int = 20
    shape: tuple[int, int, int] = (64, 76, 64)
    spacing: tuple[float, float, float] | None = None
    seed: int = 0
    visits: tuple[float, ...] = (24.0, 48.0, 96.0)
    followup_weeks: float | None = None
    visit_window_weeks: int = 2
    base_rate: float = 5.5
    dispersion: float = 1.7
    age_effect: float = -0.3
    modifier: float = 0.3
    response_sd: float = 0.35
    gd_per_rate: float = 0.2
    baseline_lesions_per_sqrt_rate: float = 3.0
    t2_count_dispersion: float = 1.0
    p_enlarging: float = 0.25
    new_radius_mm: float = 2.5
    baseline_radius_mm: float = 3.5
    min_lesion_voxels: int | None = None
    n_sites: int = 4
    prelesion_fraction: float = 0.15
    prelesion_months: tuple[float, float] = (2.0, 12.0)
    prelesion_contrast: float = 0.5
    dawm_strength: float = 0.5
    dawm_fraction: float = 0.04
    dawm_sd: float = 0.6
    dawm_preference: float = 2.0
    dawm_contrast: float = 2.0
    spatial_strength: float = 1.5
    spatial_smooth_mm: float = 15.0
    load_preference: float = 9.0
    load_smooth_mm: float = 10.0
    p_black_hole: float = 0.25
    site_gain_sd: float = 0.1
    site_offset_sd: float = 20.0
    field_3t_share: float = 0.5
    small_lesion_mm3: float = 30.0
    small_lesion_contrast_1p5t: float = 0.6
    mtr: bool = False
    dropout_per_year: float = 0.0
    dropout_arm_difference: float = 0.0
    dropout_mar: float = 0.0
    dropout_mnar: float = 0.0
    missed_visit: float = 0.0
    arms: tuple[ArmSpec, ...] = field(default=DEFAULT_ARMS)

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def schedule(self) -> tuple[float, ...]:
        """Scheduled follow-up visits (weeks after baseline), increasing."""
        if self.followup_weeks is not None:
            return (float(self.followup_weeks),)
        return tuple(float(w) for w in self.visits)

    @property
    def visit_labels(self) -> tuple[str, ...]:
        """Visit names: w24, w48, ... (weeks rounded to integers)."""
        return tuple(visit_label(w) for w in self.schedule)

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
        d["schedule"] = list(self.schedule)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        """The inverse of `to_dict` (keys of older versions that no longer exist are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        kw["arms"] = tuple(ArmSpec(**a) for a in d.get("arms", [asdict(a) for a in DEFAULT_ARMS]))
        for k in ("shape", "spacing", "visits", "prelesion_months"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        if "dawm_contrast" not in d:
            kw["dawm_contrast"] = 1.0  # written before the knob existed: rendered at the old contrast
        if "visits" not in d and kw.get("followup_weeks") is None:
            kw["followup_weeks"] = 48.0  # written before visits existed: one follow-up visit
        return cls(**kw)

    @property
    def reference_arm(self) -> str:
        return next(a.arm for a in self.arms if a.reference)


def visit_label(weeks: float) -> str:
    return f"w{int(round(float(weeks)))}"


def check_config(cfg: TrialConfig) -> None:
    """Raise ValueError naming the first knob out of range (the CLI turns it into one line, exit 2)."""
    sched = cfg.schedule
    if len(sched) == 0:
        raise ValueError("visits: at least one follow-up visit is needed")
    if any(not np.isfinite(w) or w <= 0 for w in sched):
        raise ValueError(f"visits {list(sched)}: weeks must be positive")
    if any(b <= a for a, b in zip(sched, sched[1:])):
        raise ValueError(f"visits {list(sched)}: weeks must be strictly increasing")
    if len(sched) > 1 and min(b - a for a, b in zip(sched, sched[1:])) <= 2 * cfg.visit_window_weeks:
        raise ValueError(f"visits {list(sched)}: visits closer than twice the visit window ({cfg.visit_window_weeks} weeks)")
    if sched[0] <= cfg.visit_window_weeks:
        raise ValueError(f"visits {list(sched)}: the first visit must come after the visit window ({cfg.visit_window_weeks} weeks)")
    ranges = {
        "base_rate": (0.0, 1000.0), "dispersion": (1e-6, 20.0), "response_sd": (0.0, 2.0), "gd_per_rate": (0.0, 2.0),
        "t2_count_dispersion": (0.0, 10.0), "p_enlarging": (0.0, 1.0), "prelesion_fraction": (0.0, 1.0),
        "prelesion_contrast": (0.0, 10.0), "dawm_strength": (0.0, 3.0), "dawm_fraction": (0.0, 0.3), "dawm_sd": (0.0, 2.0),
        "dawm_preference": (0.0, 20.0), "dawm_contrast": (0.0, 10.0), "spatial_strength": (0.0, 3.0), "spatial_smooth_mm": (1.0, 100.0),
        "load_preference": (0.0, 50.0), "load_smooth_mm": (1.0, 100.0),
        "p_black_hole": (0.0, 1.0), "site_gain_sd": (0.0, 0.5), "site_offset_sd": (0.0, 200.0),
        "field_3t_share": (0.0, 1.0), "small_lesion_mm3": (0.0, 1000.0), "small_lesion_contrast_1p5t": (0.0, 1.0),
        "dropout_arm_difference": (0.0, 5.0), "dropout_mar": (-5.0, 5.0), "dropout_mnar": (-5.0, 5.0),
        "age_effect": (-3.0, 3.0), "modifier": (-1.0, 1.0), "baseline_lesions_per_sqrt_rate": (0.0, 100.0),
        "new_radius_mm": (0.5, 20.0), "baseline_radius_mm": (0.5, 20.0), "visit_window_weeks": (0.0, 26.0), "n_sites": (1.0, 1000.0),
    }
    for name, (lo, hi) in ranges.items():
        v = float(getattr(cfg, name))
        if not (np.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"{name} = {v!r} is out of range [{lo}, {hi}]")
    for name in ("dropout_per_year", "missed_visit"):
        v = float(getattr(cfg, name))
        if not (np.isfinite(v) and 0.0 <= v < 1.0):
            raise ValueError(f"{name} = {v!r} must lie in [0, 1)")
    if cfg.min_lesion_voxels is not None and int(cfg.min_lesion_voxels) < 1:
        raise ValueError(f"min_lesion_voxels = {cfg.min_lesion_voxels!r} must be at least 1")
    lo, hi = cfg.prelesion_months
    if not 0.0 <= lo < hi <= 24.0:
        raise ValueError(f"prelesion_months {cfg.prelesion_months}: need 0 <= low < high <= 24")
    for a in cfg.arms:
        if not (a.rate_ratio > 0 and a.size_multiplier > 0 and a.black_hole_multiplier >= 0):
            raise ValueError(f"arm {a.arm!r}: rate_ratio and size_multiplier must be positive")


@dataclass(frozen=True)
class Scanner:
    """A site's scanner: image = gain x image + offset inside the head; field strength in tesla."""

    gain: float
    offset: float
    field_strength_t: float


def site_scanner(cfg: TrialConfig, site: str) -> Scanner:
    """The scanner of `site` (deterministic in cfg.seed and the site's name)."""
    from mseval.seeding import rng_for

    rng = rng_for(cfg.seed, "site", site)
    gain, offset = 1.0 + cfg.site_gain_sd * rng.standard_normal(), cfg.site_offset_sd * rng.standard_normal()
    field = 3.0 if rng.random() < cfg.field_3t_share else 1.5
    return Scanner(float(gain), float(offset), field)


def patient_ids(n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"P{i + 1:0{width}d}" for i in range(n)]


def effect_multiplier(age: np.ndarray, modifier: float) -> np.ndarray:
    """m_i: the patient's log rate ratio is m_i times the arm's (larger m = stronger effect)."""
    return np.clip(1.0 - modifier * (np.asarray(age, dtype=float) - AGE_CENTRE) / 10.0, 0.4, 1.6)


def response_column(arm: str) -> str:
    return f"response_{arm}"


def draw_patients(cfg: TrialConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One row per patient: covariates known at baseline, latent activity, allocation, visit weeks.

    Allocation is a random permutation of `patients_per_arm` copies of every arm (equal arms).
    Columns `visit_<k>_weeks` (k = 1..V) hold the patient's actual visit weeks; `followup_weeks` the
    last one (the trial's planned follow-up; `simulate_trial` shortens it after dropout);
    `response_<arm>` the patient's response exponent R_ia; `dawm_fraction` the share of white matter
    that is diffusely abnormal.
    """
    arms = [a.arm for a in cfg.arms]
    n = cfg.patients_per_arm * len(arms)
    age = np.clip(rng.normal(AGE_CENTRE, 9.0, n), 18.0, 60.0).round(1)
    sex = np.where(rng.random(n) < 0.7, "F", "M")
    u = rng.gamma(1.0 / cfg.dispersion, cfg.dispersion, n)
    rate = cfg.base_rate * np.exp(cfg.age_effect * (age - AGE_CENTRE) / 10.0) * u
    gd = rng.poisson(cfg.gd_per_rate * rate)
    mean_t2 = cfg.baseline_lesions_per_sqrt_rate * np.sqrt(rate)
    if cfg.t2_count_dispersion > 0:
        mean_t2 = mean_t2 * rng.gamma(1.0 / cfg.t2_count_dispersion, cfg.t2_count_dispersion, n)
    n_t2 = np.maximum(gd, 1 + rng.poisson(mean_t2))
    edss_raw = 1.0 + 0.06 * (age - 30.0) + 0.4 * np.log1p(n_t2) + rng.normal(0.0, 0.8, n)
    edss = np.clip(np.round(edss_raw * 2.0) / 2.0, 0.0, 6.5)
    arm = rng.permutation(np.repeat(arms, cfg.patients_per_arm))
    site = np.array([f"site-{k + 1}" for k in rng.integers(0, cfg.n_sites, n)])
    sched = np.asarray(cfg.schedule)
    jitter = rng.integers(-cfg.visit_window_weeks, cfg.visit_window_weeks + 1, (n, len(sched)))
    weeks = (sched[None, :] + jitter).astype(float)
    ventricle_scale = np.clip(np.round((1.0 + 0.01 * (age - AGE_CENTRE) + rng.normal(0, 0.08, n)) * 10) / 10, 0.8, 1.4)
    dawm = cfg.dawm_fraction * u ** cfg.dawm_strength * np.exp(cfg.dawm_sd * rng.normal(size=n) - 0.5 * cfg.dawm_sd ** 2)
    z_resp = rng.normal(size=(n, len(arms)))
    df = pd.DataFrame(
        {
            "patient_id": patient_ids(n),
            "arm": arm,
            "site": site,
            "followup_weeks": weeks[:, -1],
            "age": age,
            "sex": sex,
            "edss": edss,
            "gd_count": gd.astype(np.int64),
            "n_baseline_lesions": n_t2.astype(np.int64),
            "latent_activity": u,
            "placebo_rate": rate,
            "ventricle_scale": ventricle_scale,
            "dawm_fraction": np.clip(dawm, 0.0, 0.5),
        }
    )
    for k in range(len(sched)):
        df[f"visit_{k + 1}_weeks"] = weeks[:, k]
    for j, spec in enumerate(cfg.arms):
        df[response_column(spec.arm)] = 1.0 if spec.reference else np.exp(cfg.response_sd * z_resp[:, j])
    return df


def arm_rate_ratios(patients: pd.DataFrame, cfg: TrialConfig) -> dict[str, np.ndarray]:
    """rho_ia per arm: (n,) rate ratio of each patient under each arm vs the reference (1 there)."""
    m = effect_multiplier(patients["age"].to_numpy(), cfg.modifier)
    out = {}
    for spec in cfg.arms:
        if spec.reference:
            out[spec.arm] = np.ones(len(patients))
        else:
            out[spec.arm] = spec.rate_ratio ** (m * patients[response_column(spec.arm)].to_numpy(dtype=float))
    return out


def mean_lesion_volume_mm3(cfg: TrialConfig, arm: str) -> float:
    """Nominal mean volume (mm^3) of a new lesion under `arm`: the mean of the drawn ellipsoid,
    4/3 pi r^3 exp(4.5 sigma^2) (r = new_radius_mm, sigma = 0.35, axis factors U(0.7, 1.3) of mean 1),
    times the arm's size multiplier. Voxelisation, the minimum lesion size and clipping to free
    white matter change realised volumes on coarse grids."""
    spec = next(a for a in cfg.arms if a.arm == arm)
    return float(4.0 / 3.0 * np.pi * cfg.new_radius_mm ** 3 * np.exp(4.5 * 0.35 ** 2) * spec.size_multiplier)


def truth_frame(patients: pd.DataFrame, cfg: TrialConfig, realized: dict[str, int] | None = None) -> pd.DataFrame:
    """truth.csv: every patient under every arm over the patient's follow-up (`followup_weeks`,
    schema `truth`).

    realized: NET2 count drawn under the allocated arm, by patient_id (None before it is drawn;
    a patient missing from it has no observed follow-up and gets an empty cell).
    """
    rho = arm_rate_ratios(patients, cfg)
    years = patients["followup_weeks"].to_numpy() / WEEKS_PER_YEAR
    rows = []
    for spec in cfg.arms:
        rr = rho[spec.arm]
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
            if alloc and pid in realized:
                counts[k] = realized[pid]
    truth["realized_count"] = counts
    return truth


def visit_truth_frame(patients: pd.DataFrame, cfg: TrialConfig, realized: dict[tuple[str, str], int] | None = None) -> pd.DataFrame:
    """truth_visits.csv: every patient x arm x scheduled visit (schema `truth_visits`).

    Per visit k: the interval (previous scheduled visit, k] in weeks, the expected NET2 count in it
    and from baseline to k (they add up exactly), P(active) for both, and the nominal expected NET2
    volume (mm^3) of the interval. realized: observed interval count by (patient_id, visit) under the
    allocated arm (missing visits absent: empty cells).
    """
    rho = arm_rate_ratios(patients, cfg)
    labels = cfg.visit_labels
    rows = []
    lam = patients["placebo_rate"].to_numpy()
    for spec in cfg.arms:
        vol = mean_lesion_volume_mm3(cfg, spec.arm)
        prev = np.zeros(len(patients))
        for k, label in enumerate(labels):
            wk = patients[f"visit_{k + 1}_weeks"].to_numpy(dtype=float)
            mu_int = lam * rho[spec.arm] * (wk - prev) / WEEKS_PER_YEAR
            mu_cum = lam * rho[spec.arm] * wk / WEEKS_PER_YEAR
            rows.append(pd.DataFrame({
                "patient_id": patients["patient_id"].to_numpy(), "arm": spec.arm, "visit": label, "visit_index": k + 1,
                "allocated": patients["arm"].to_numpy() == spec.arm,
                "start_weeks": prev, "weeks": wk, "rate_ratio": rho[spec.arm],
                "expected_count": mu_int, "p_active": -np.expm1(-mu_int),
                "expected_cumulative_count": mu_cum, "p_active_cumulative": -np.expm1(-mu_cum),
                "expected_volume_mm3": mu_int * vol,
            }))
            prev = wk
    out = pd.concat(rows, ignore_index=True)
    order = {a.arm: k for k, a in enumerate(cfg.arms)}
    out["_o"] = out["arm"].map(order)
    out = out.sort_values(["patient_id", "_o", "visit_index"]).drop(columns="_o").reset_index(drop=True)
    counts = pd.array([None] * len(out), dtype="Int64")
    if realized is not None:
        for k, (pid, arm_alloc, v) in enumerate(zip(out["patient_id"], out["allocated"], out["visit"])):
            if arm_alloc and (pid, v) in realized:
                counts[k] = realized[(pid, v)]
    out["realized_count"] = counts
    return out
