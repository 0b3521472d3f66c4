"""A count-level forecaster and its family: NB2 regressions trained on a trial, K of them on
bootstrap resamples of the training patients.

One forecaster: NB2 of the NET2 count on `FORMULA` (arm + log(1 + Gd+ count) + age, offset log
follow-up years) fitted on a training table; for a patient under arm a it forecasts
NB2(mu_ia, alpha): mean mu_ia = exp(x_ia' beta + log years_i) over the patient's follow-up,
variance mu + alpha mu^2 (the plug-in predictive law of `mseval.stats.baseline_nb2`).

The family (`fit_forecaster_family`): forecaster 0..K-1, each fitted on a resample of the training
patients drawn with replacement within each arm (arm sizes fixed, as the trial randomized them).
The spread of their effects is the training trial's estimation error, what the two-level variance
(`mseval.stats.forecaster_variance`) carries. A resample whose fit fails is redrawn and counted
(`redrawn` in each forecaster's provenance); never dropped silently. An arm with no event in a
resample has an infinite MLE (`mseval.stats.event_free`): that forecaster forecasts no lesion under
it (listed in `event_free_terms`), and the effects of that arm read "not estimable". K = 1 with `bootstrap=False`
is the forecaster fitted on the training patients as they are.

Every draw is seeded by (seed, forecaster, patient, arm), so results do not depend on order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mseval.errors import InputError
from mseval.seeding import derive_seed, rng_for
from mseval.stats.event_free import event_free_terms
from mseval.stats.nb2_mle import fit_nb2

FORMULA = "net2 ~ arm + np.log1p(gd_count) + age"
"""The count-level forecaster's model (fixed a priori; the issue's 'honestly trained' forecaster)."""
MAX_REDRAWS = 20
"""Resamples redrawn per forecaster before giving up (a fit that fails on 20 resamples in a row is an error)."""


def _design(table: pd.DataFrame, rhs: str, levels: list[str], arm_col: str = "arm") -> np.ndarray:
    """(n, p) patsy design of `rhs` with the arm a Categorical of the fixed `levels` (reference first),
    so that the columns are the same whichever arms the rows hold."""
    import patsy

    d = table.reset_index(drop=True).copy()
    d[arm_col] = pd.Categorical(d[arm_col].astype(str), categories=levels)
    return patsy.dmatrix(rhs, d, return_type="dataframe", NA_action="raise").to_numpy(dtype=float)


@dataclass(frozen=True)
class NB2Forecaster:
    """One trained forecaster: coefficients `coef` (p,) for the columns `names` of `rhs` with arm
    levels `levels` (reference first), dispersion `alpha`, and its `provenance` (dict: forecaster id,
    trained_on, training patients, resample seed, redrawn)."""

    coef: np.ndarray
    names: list[str]
    alpha: float
    rhs: str
    levels: list[str]
    provenance: dict = field(default_factory=dict)

    @property
    def forecaster(self) -> int:
        return int(self.provenance.get("forecaster", 0))

    def mean(self, table: pd.DataFrame, arm: str, *, years: str = "followup_years") -> np.ndarray:
        """Expected NET2 count (n,) of every row of `table` under `arm`, over the row's follow-up."""
        if arm not in self.levels:
            raise InputError(None, f"arm {arm!r} was not in the forecaster's training trial (arms: {', '.join(self.levels)})", field="arm")
        X = _design(table.assign(arm=arm), self.rhs, self.levels)
        fin = np.isfinite(self.coef)
        eta = X[:, fin] @ self.coef[fin]
        eta[(X[:, ~fin] != 0).any(axis=1)] = -np.inf  # an event-free arm of the training resample: no lesion forecast
        return np.exp(eta + np.log(table[years].to_numpy(dtype=float)))

    def draw(self, table: pd.DataFrame, arms: list[str], samples: int, seed: int) -> pd.DataFrame:
        """Ensemble counts (patient_id, arm, sample, count, forecaster): `samples` draws of NB2(mu, alpha)
        per row of `table` and arm; seeded by (seed, forecaster, patient, arm)."""
        out = []
        pids = table["patient_id"].astype(str).to_numpy()
        for arm in arms:
            mu = self.mean(table, arm)
            draws = np.empty((len(pids), samples), dtype=np.int64)
            for i, (pid, m) in enumerate(zip(pids, mu)):
                rng = np.random.default_rng(derive_seed(seed, "nb2-forecaster", self.forecaster, pid, arm))
                lam = m * rng.gamma(1.0 / self.alpha, self.alpha, samples) if self.alpha > 0 else np.full(samples, m)
                draws[i] = rng.poisson(lam)
            out.append(pd.DataFrame({"patient_id": np.repeat(pids, samples), "arm": arm, "sample": np.tile(np.arange(samples, dtype=np.int64), len(pids)),
                                     "count": draws.reshape(-1), "forecaster": self.forecaster}))
        return pd.concat(out, ignore_index=True)

    def to_dict(self) -> dict:
        return {**self.provenance, "model": "NB2 regression, offset log(follow-up years); plug-in predictive NB2", "formula": f"net2 ~ {self.rhs}",
                "alpha": float(self.alpha), "coefficients": {n: float(c) if np.isfinite(c) else None for n, c in zip(self.names, self.coef)}}


def fit_forecaster_family(train: pd.DataFrame, forecasters: int, *, reference: str, seed: int = 0, formula: str = FORMULA,
                          bootstrap: bool = True, trained_on: str = "") -> list[NB2Forecaster]:
    """K NB2 forecasters from the training table `train` (one row per patient: arm, the formula's
    covariates, net2, followup_years): on bootstrap resamples within arms (`bootstrap`) or, for K = 1
    without bootstrap, on the training patients as they are."""
    if forecasters < 1:
        raise InputError(None, f"forecasters must be at least 1, got {forecasters}", field="forecasters")
    if not bootstrap and forecasters != 1:
        raise InputError(None, "several forecasters need bootstrap resamples (identical fits carry no training error)", field="forecasters")
    rhs = formula.split("~", 1)[1].strip()
    arms = sorted(train["arm"].astype(str).unique())
    if reference not in arms:
        raise InputError(None, f"the training trial has no patient on the reference arm {reference!r}", field="arm")
    levels = [reference, *[a for a in arms if a != reference]]
    import patsy

    names = list(patsy.dmatrix(rhs, train.assign(arm=pd.Categorical(train["arm"].astype(str), categories=levels)).head(1),
                               return_type="dataframe").columns)
    names = [n.replace("arm[T.", "").replace("]", "") for n in names]
    X = _design(train, rhs, levels)
    y = train["net2"].to_numpy(dtype=float)
    off = np.log(train["followup_years"].to_numpy(dtype=float))
    groups = [np.flatnonzero(train["arm"].astype(str).to_numpy() == a) for a in levels]
    family = []
    for k in range(forecasters):
        rng = rng_for(seed, "nb2-forecaster-bootstrap", k)
        for attempt in range(MAX_REDRAWS + 1):
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups]) if bootstrap else np.arange(len(train))
            red = event_free_terms(y[idx], X[idx])  # an arm without events: its MLE is -inf (forecasts 0), the rest from the reduced model
            keep = red.keep_rows
            fit = fit_nb2(y[idx][keep], X[idx][keep][:, red.keep_cols], off[idx][keep])
            if fit.converged and np.all(np.isfinite(fit.beta)) and not red.empty.any():
                beta = np.full(X.shape[1], -np.inf)
                beta[red.keep_cols] = fit.beta
                break
            if not bootstrap:
                raise InputError(None, f"the NB2 forecaster ({formula}) did not converge on the training trial {trained_on}".rstrip(), field="train_cohort")
        else:
            raise InputError(None, f"forecaster {k}: the NB2 fit failed on {MAX_REDRAWS + 1} bootstrap resamples of the training trial", field="train_cohort")
        prov = {"forecaster": k, "trained_on": trained_on, "training_patients": int(len(train)),
                "resample": "bootstrap within arms" if bootstrap else "none (the training patients as they are)",
                "resample_seed": int(seed) if bootstrap else None, "redrawn": attempt,
                "event_free_terms": [n for n, inf in zip(names, red.infinite) if inf]}
        family.append(NB2Forecaster(beta, names, float(fit.alpha), rhs, levels, prov))
    return family


def draw_family(family: list[NB2Forecaster], table: pd.DataFrame, arms: list[str], samples: int, seed: int) -> pd.DataFrame:
    """Counts of every forecaster of the family (`forecaster` column), `samples` per forecaster."""
    return pd.concat([f.draw(table, arms, samples, seed) for f in family], ignore_index=True)
