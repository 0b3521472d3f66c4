"""The simple baseline a forecaster must beat: NB2 regression of the NET2 count on the arm and the
baseline features the inputs show, with its predictive negative binomial law.

Fitted on a TRAINING trial (`mseval.stats.count_model.fit_count_model`, offset log follow-up
years); for a new patient the predictive law is NB2(mu, alpha): mean mu from the fitted
coefficients (plug-in: parameter uncertainty is not carried, negligible next to the NB spread at
a few hundred training patients), variance mu + alpha mu^2, i.e. scipy's nbinom(n = 1/alpha,
p = 1 / (1 + alpha mu)). Scored with the exact CRPS (`mseval.metrics.calibration.crps_pmf`) and
P(active) = 1 - P(0), like the oracles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import CountModelFit, fit_count_model

BASELINE_FORMULA = "net2 ~ arm + np.log1p(gd_count) + np.log(t2_count) + np.log(t2_volume_mm3) + age"
"""Arm, log(1 + Gd+ count), log T2 lesion count, log T2 volume (mm^3), age (years); fixed a priori
(log link: the simulator's rate is log-linear in age and rises with the lesion counts)."""


@dataclass(frozen=True)
class NB2Baseline:
    """A fitted NB2 baseline; `fit` is the CountModelFit, `trained_on` names the training data."""

    fit: CountModelFit
    trained_on: str
    n_train: int

    def mean(self, features: pd.DataFrame) -> np.ndarray:
        """Predicted mean count (n,) over each row's follow-up, under the row's arm."""
        return self.fit.predict(features)

    def pmf(self, features: pd.DataFrame) -> np.ndarray:
        """Predictive pmf (n, K) of each row's NET2 count (tail beyond K about 1e-12)."""
        mu = self.mean(features)
        a = max(self.fit.alpha, 1e-10)
        n, p = 1.0 / a, 1.0 / (1.0 + a * mu)
        kmax = int(max(20.0, float(stats.nbinom.ppf(1.0 - 1e-12, n, p).max())))
        return stats.nbinom.pmf(np.arange(kmax + 1)[None, :], n, p[:, None])

    def to_dict(self) -> dict:
        return {"model": "NB2 regression, offset log(follow-up years); plug-in predictive NB2", "formula": self.fit.formula,
                "alpha": self.fit.alpha, "converged": self.fit.converged, "trained_on": self.trained_on, "n_train": self.n_train,
                "coefficients": self.fit.table[["term", "coef", "se"]].to_dict("records")}


def fit_nb2_baseline(train: pd.DataFrame, *, formula: str = BASELINE_FORMULA, reference: str | None = None,
                     trained_on: str = "") -> NB2Baseline:
    """Fit the baseline on a training table (columns of `baseline_features` plus the outcome `net2`)."""
    fit = fit_count_model(train, formula, offset_years="followup_years", reference=reference, adjusted_means=False)
    return NB2Baseline(fit, trained_on, int(fit.n))
