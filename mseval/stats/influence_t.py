"""t critical values for delta-method intervals whose variance is an average of heavy-tailed influence values.

A delta-method interval est +/- z se with se^2 = var(psi) / n (psi_i the influence value of patient i) treats
se as known. When psi is heavy-tailed (patients' rates: gamma activity x lognormal treatment response), se^2 is
itself noisy and the interval is short on average: in issue 20's world the counterfactual ratio's delta-method
CI covers about 93.3-94.3% at 200 patients (bench/RESULTS.md, rule R13). Satterthwaite's approximation treats
se^2 as a scaled chi-square whose degrees of freedom match its variance: for the mean of n values,
Var(s^2) ~= (mu_4 - sigma^4) / n, so

    df = 2 sigma^4 / Var(s^2) = 2 n / (kurtosis - 1),     kurtosis = m_4 / m_2^2 of psi (sample moments),

which is n for normal psi (kurtosis 3) and falls as the tails grow (kurtosis 17-20 at 200 patients in issue
20's world: df about 20-30). The interval is est +/- t_{df}(0.975) se; df is capped at n - 1 (never wider-tailed
than the usual t) and floored at 1.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def kurtosis_df(psi: np.ndarray) -> float:
    """Satterthwaite degrees of freedom 2 n / (kurtosis - 1) of var(psi) / n, in [1, n - 1]; psi (n,) influence values."""
    psi = np.asarray(psi, dtype=float)
    n = psi.size
    if n < 3:
        return 1.0
    c = psi - psi.mean()
    m2 = float(np.mean(c**2))
    if m2 <= 0:
        return float(n - 1)
    kappa = float(np.mean(c**4)) / m2**2
    return float(np.clip(2.0 * n / max(kappa - 1.0, 1e-12), 1.0, n - 1))


def t_critical(psi: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(critical value, df) of the two-sided `level` t interval with `kurtosis_df(psi)` degrees of freedom."""
    df = kurtosis_df(psi)
    return float(stats.t.ppf(0.5 + level / 2, df)), df
