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

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mseval.stats.count_model import CountModelFit, fit_count_model

BASELINE_FORMULA = "net2 ~ arm + np.log1p(gd_count) + np.log(t2_count) + np.log(t2_volume_mm3) + age"
"""Arm, log(1 + Gd+ count), log T2 lesion count, log T2 volume (mm^3), age (years); fixed a priori
(log link: the simulator's rate is log-linear in age and rises with the lesion counts)."""


KMAX = 5000
"""Largest count a usable predictive law may need (lesions): NET2 counts beyond a few hundred are not MS."""


def nb2_law_pmf(mu: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Tabulated NB2 laws (n, K) over 0..K-1 (tail beyond K about 1e-12) for means mu (n,) and
    dispersions alpha (scalar or (n,); variance mu + alpha mu^2). A law reaching beyond `KMAX`
    lesions, or a non-finite mean or dispersion, is not a usable law: every entry is NaN."""
    mu = np.asarray(mu, dtype=float).reshape(-1)
    a = np.broadcast_to(np.asarray(alpha, dtype=float), mu.shape)
    if not np.isfinite(mu).all() or not np.isfinite(a).all():
        return np.full((len(mu), 2), np.nan)
    n, p = 1.0 / a, 1.0 / (1.0 + a * mu)
    # A closed-form bound on the 1 - 1e-12 quantile (checked against scipy's sf over alpha in
    # [1e-10, 50], mean in [1e-8, 300]: tail <= 1.2e-16): mean + 10 sd plus the geometric tail's
    # length. (scipy's nbinom.ppf can loop for minutes at alpha near 0.)
    sd = np.sqrt(mu + a * mu**2)
    with np.errstate(divide="ignore"):
        bound = mu + 10.0 * sd + 28.0 / np.log1p(1.0 / np.maximum(a * mu, 1e-300)) + 20.0
    kmax = float(bound.max()) if len(mu) else 0.0
    if not np.isfinite(kmax) or kmax > KMAX:
        return np.full((len(mu), 2), np.nan)
    kmax = int(max(20.0, kmax))
    return stats.nbinom.pmf(np.arange(kmax + 1)[None, :], n[:, None], p[:, None])


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
        """Predictive pmf (n, K) of each row's NET2 count (tail beyond K about 1e-12).

        A fit whose law reaches beyond `KMAX` lesions for some row (a degenerate fit on too few
        patients: a mean of thousands of lesions, or a non-finite mean) is not a usable law: every
        entry is NaN, which `forecast.evaluate.unusable_references` reports as not estimable."""
        return nb2_law_pmf(self.mean(features), max(float(self.fit.alpha), 1e-10))

    def to_dict(self) -> dict:
        return {"model": "NB2 regression, offset log(follow-up years); plug-in predictive NB2", "formula": self.fit.formula,
                "alpha": self.fit.alpha, "converged": self.fit.converged, "trained_on": self.trained_on, "n_train": self.n_train,
                "coefficients": self.fit.table[["term", "coef", "se"]].to_dict("records")}


def fit_nb2_baseline(train: pd.DataFrame, *, formula: str = BASELINE_FORMULA, reference: str | None = None,
                     trained_on: str = "") -> NB2Baseline:
    """Fit the baseline on a training table (columns of `baseline_features` plus the outcome `net2`)."""
    fit = fit_count_model(train, formula, offset_years="followup_years", reference=reference, adjusted_means=False)
    return NB2Baseline(fit, trained_on, int(fit.n))


SPLINE_FORMULA = ("net2 ~ arm * age + cr(np.log1p(gd_count), df=3, constraints='center') + cr(np.log(t2_count), df=3, constraints='center') + np.log1p(gd_count):np.log(t2_count)"
                  " + np.log1p(gd_count):age + np.log(t2_count):age + np.log(t2_volume_mm3)")
"""The flexible baseline's mean until rule R14 (2026-12-07): natural cubic splines (patsy `cr`) in log(1 + Gd+) and log T2
count, their product, their interactions with age, arm x age, and log T2 volume. Chosen on tuning seeds 3000-3502."""

FLEXIBLE_FORMULA = ("net2 ~ arm * age + te(cr(np.log1p(gd_count), df=3), cr(np.log(t2_count), df=3), constraints='center')"
                    " + np.log1p(gd_count):age + np.log(t2_count):age")
"""The flexible baseline's mean: the same count features, with a tensor-product natural cubic spline (patsy `te` of two
`cr` bases, knots at the training quantiles, centred so the intercept stays identifiable) in log(1 + Gd+) and log T2
count -- each informs the same latent rate, so the Bayes mean is a surface in the two, not a sum --, their interactions
with age (the prior rate falls with age, so the weight the counts get changes with it), and an arm x age interaction
(treatment effects that shrink with age). No log T2 volume: given the counts it carries nothing on the latent rate
(volumes are drawn from laws free of it) and only adds estimation noise. Chosen on tuning seeds (3700-3702 / 3750-3752:
0.54% from the counts-only Bayes law with a 24,000-patient training trial, against 0.82% for `SPLINE_FORMULA`) and
adopted by rule R14 on fresh seeds (bench/RESULTS_world.md); fit it on a training trial of that size: at 6,000 patients
the two formulas are alike (0.85% vs 0.92%)."""

FLEXIBLE_DISPERSION = "arm + np.log1p(gd_count) + np.log(t2_count)"
"""The flexible baseline's log dispersion: one level per arm (treated arms are more overdispersed when
patients respond unequally) and falling with the baseline counts (the more lesions a scan shows, the
better the latent rate is known)."""


@dataclass(frozen=True)
class FlexibleNB2Baseline:
    """A fitted NB2 with a dispersion model on the count features (`fit_flexible_baseline`): predictive law
    NB2(mu_i, alpha_i) per row, log mu = x'beta + log(follow-up years), log alpha = z'gamma (plug-in)."""

    fit: Any  # nb2_dispersion_model.NB2DispersionResult
    mean_info: Any  # patsy DesignInfo of the mean
    dispersion_info: Any  # patsy DesignInfo of the log dispersion
    formula: str
    dispersion_formula: str
    trained_on: str
    n_train: int

    def _designs(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        import patsy

        X, Z = patsy.build_design_matrices([self.mean_info, self.dispersion_info], features, NA_action="raise")
        return np.asarray(X, dtype=float), np.asarray(Z, dtype=float)

    def mean(self, features: pd.DataFrame) -> np.ndarray:
        """Predicted mean count (n,) over each row's follow-up (`followup_years`), under the row's arm."""
        X, _ = self._designs(features)
        return np.exp(X @ self.fit.beta) * features["followup_years"].to_numpy(dtype=float)

    def alpha(self, features: pd.DataFrame) -> np.ndarray:
        """Predicted NB2 dispersion (n,) of each row (variance mu + alpha mu^2)."""
        _, Z = self._designs(features)
        return self.fit.alpha(Z)

    def pmf(self, features: pd.DataFrame) -> np.ndarray:
        """Predictive pmf (n, K) of each row's NET2 count; NaN rows as `NB2Baseline.pmf` when the fit did
        not converge or the law reaches beyond `KMAX` lesions (flagged not estimable downstream)."""
        mu = self.mean(features)
        if not self.fit.converged:
            return np.full((len(mu), 2), np.nan)
        return nb2_law_pmf(mu, np.maximum(self.alpha(features), 1e-10))

    def to_dict(self) -> dict:
        return {"model": "NB2 regression with a dispersion model (log alpha linear in the dispersion terms), offset log(follow-up "
                         "years); plug-in predictive NB2", "formula": self.formula, "dispersion_formula": self.dispersion_formula,
                "converged": self.fit.converged, "trained_on": self.trained_on, "n_train": self.n_train,
                "coefficients": [{"term": t, "coef": float(c)} for t, c in zip(self.mean_info.column_names, self.fit.beta)],
                "dispersion_coefficients": [{"term": t, "coef": float(c)} for t, c in zip(self.dispersion_info.column_names, self.fit.gamma)]}


def fit_flexible_baseline(train: pd.DataFrame, *, formula: str = FLEXIBLE_FORMULA, dispersion: str = FLEXIBLE_DISPERSION,
                          reference: str = "placebo", trained_on: str = "") -> FlexibleNB2Baseline:
    """The flexible count-feature baseline fitted by maximum likelihood (`fit_nb2_dispersion_model`) on a
    training table (columns of `baseline_features`, `arm`, `followup_years` and the outcome `net2`).
    It has about 30 parameters: fit it on thousands of patients (the world's reference uses 6,000)."""
    import patsy

    from mseval.stats.nb2_dispersion_model import fit_nb2_dispersion_model

    arm = f"C(arm, Treatment({reference!r}), levels={sorted(set(train['arm']) | {reference})!r})"
    f_mean, f_disp = (re.sub(r"\barm\b", arm, f) for f in (formula, dispersion))
    y, X = patsy.dmatrices(f_mean, train, NA_action="raise")
    Z = patsy.dmatrix(f_disp, train, NA_action="raise")
    fit = fit_nb2_dispersion_model(np.asarray(y)[:, 0], np.asarray(X), np.asarray(Z), np.log(train["followup_years"].to_numpy(dtype=float)))
    return FlexibleNB2Baseline(fit, X.design_info, Z.design_info, formula, dispersion, trained_on, len(train))
