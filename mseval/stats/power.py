"""Power and sample size for a two-arm NB2 comparison of NET2 counts.

Analytic: statsmodels' `power_negbin_ratio_2indep` (Zhu and Lakkis 2014 variance, 'alt') with the
estimated dispersion, solved for the patients per arm that reach a target power.
Simulated from forecasts: resample patients, randomize them 1:1 to the arm or the reference,
take one ensemble sample under the assigned arm as the outcome, fit the NB2 model (with and
without the prognostic score), and count rejections at two-sided 0.05.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

from mseval.stats.count_model import fit_count_model


def analytic_power(rate_ref: float, rate_arm: float, n_per_arm: float, *, years: float = 1.0, dispersion: float = 1.0, alpha: float = 0.05) -> float:
    """Power of the two-sided Wald test of the rate ratio (rates per year, `years` of follow-up)."""
    from statsmodels.stats.rates import power_negbin_ratio_2indep

    res = power_negbin_ratio_2indep(rate_arm, rate_ref, n_per_arm, exposure=years, dispersion=dispersion, alpha=alpha)
    return float(res.power)


def sample_size(rate_ref: float, rate_arm: float, *, power: float = 0.8, years: float = 1.0, dispersion: float = 1.0, alpha: float = 0.05) -> float:
    """Patients per arm (continuous; round up) for `power`."""
    f = lambda n: analytic_power(rate_ref, rate_arm, n, years=years, dispersion=dispersion, alpha=alpha) - power  # noqa: E731
    if f(2.0) >= 0:
        return 2.0
    hi = 10.0
    while f(hi) < 0 and hi < 1e7:
        hi *= 4
    return float(optimize.brentq(f, 2.0, hi, xtol=1e-3))


@dataclass(frozen=True)
class PowerTable:
    """analytic: per arm, patients per arm for 80% and 90% power; simulated: per (arm, n per arm,
    adjusted) the simulated power with its Monte Carlo standard error."""

    analytic: pd.DataFrame
    simulated: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.analytic


def power_table(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    means: pd.DataFrame,
    reference: str,
    *,
    arms: list[str] | None = None,
    dispersion: float,
    n_grid: tuple[int, ...] = (),
    sims: int = 100,
    seed: int = 0,
) -> PowerTable:
    """Analytic sample sizes from the forecast mean rates, and simulated power from the forecasts.

    rates per year = mean over patients of ensemble mean / follow-up years; `n_grid` empty: the
    analytic 80%-power n only (where simulated and analytic power can be compared).
    """
    from mseval.stats.prognostic import prognostic_score

    years = float(table["followup_years"].mean())
    wide = means.pivot(index="patient_id", columns="arm", values="expected")
    rates = (wide.div(table.set_index("patient_id").loc[wide.index, "followup_years"], axis=0)).mean()
    arms = arms or [a for a in wide.columns if a != reference]
    analytic, simulated = [], []
    score = prognostic_score(means, reference)
    by_block = {k: g["count"].to_numpy() for k, g in counts.groupby(["patient_id", "arm"])}
    rng = np.random.default_rng(seed)
    pids = np.asarray(table["patient_id"])
    yrs = table.set_index("patient_id")["followup_years"]
    for arm in arms:
        r0, r1 = float(rates[reference]), float(rates[arm])
        if not (r0 > 0 and r1 > 0) or abs(r1 - r0) < 1e-12:
            analytic.append({"arm": arm, "rate_reference": r0, "rate_arm": r1, "rate_ratio": r1 / r0 if r0 > 0 else np.nan, "dispersion": dispersion,
                             "years": years, "n_per_arm_80": np.nan, "n_per_arm_90": np.nan,
                             "note": "not estimable: a forecast rate is zero or the rates are equal"})
            continue
        n80 = sample_size(r0, r1, power=0.8, years=years, dispersion=dispersion)
        n90 = sample_size(r0, r1, power=0.9, years=years, dispersion=dispersion)
        analytic.append({"arm": arm, "rate_reference": r0, "rate_arm": r1, "rate_ratio": r1 / r0, "dispersion": dispersion,
                         "years": years, "n_per_arm_80": int(np.ceil(n80)), "n_per_arm_90": int(np.ceil(n90)), "note": ""})
        grid = n_grid or (max(int(np.ceil(n80)), 4),)
        for n in grid:
            hits = {False: 0, True: 0}
            for _ in range(sims):
                chosen = rng.choice(pids, size=2 * n, replace=True)
                assign = np.where(rng.permutation(2 * n) < n, arm, reference)
                y = np.array([by_block[(p, a)][rng.integers(len(by_block[(p, a)]))] for p, a in zip(chosen, assign)])
                d = pd.DataFrame({"arm": assign, "net2": y, "followup_years": yrs.loc[chosen].to_numpy(),
                                  "prognostic_score": score.loc[chosen].to_numpy()})
                for adjusted in (False, True):
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            fit = fit_count_model(d, "net2 ~ arm + prognostic_score" if adjusted else "net2 ~ arm", reference=reference, adjusted_means=False)
                        hits[adjusted] += int(fit.rate_ratio(arm).p_value < 0.05)
                    except Exception:  # noqa: BLE001 - an all-zero simulated trial: no rejection
                        pass
            for adjusted in (False, True):
                p = hits[adjusted] / sims if sims else np.nan
                simulated.append({"arm": arm, "n_per_arm": n, "adjusted": adjusted, "power": p,
                                  "mc_se": np.sqrt(p * (1 - p) / sims) if sims else np.nan, "simulations": sims})
    sim_cols = ["arm", "n_per_arm", "adjusted", "power", "mc_se", "simulations"]
    return PowerTable(pd.DataFrame(analytic), pd.DataFrame(simulated, columns=sim_cols))
