"""Repeated count-level trials with dropout (`simulate_count_trial`): coverage of the exposure-based
NB2 under MAR dropout, and how the MNAR sensitivity moves (bench/validity_missing.py; fast checks in
tests/stats/test_missing_data.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pandas as pd

from mseval.simulate.counts_only import CountTrial, population_rate_ratios, simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.count_model import fit_count_model
from mseval.stats.missing_data import exposure_nb2, mnar_sensitivity


def _trials(n_trials: int, base: TrialConfig, seed0: int) -> Iterator[tuple[int, CountTrial, dict[str, float], str]]:
    """(k, trial k of `base` at seed seed0 + k, the population rate ratios without dropout, the reference arm)."""
    target = population_rate_ratios(replace(base, dropout_per_year=0.0, dropout_mar=0.0, dropout_mnar=0.0, missed_visit=0.0,
                                            dropout_arm_difference=0.0))
    for k in range(n_trials):
        yield k, simulate_count_trial(replace(base, seed=seed0 + k), samples=1), target, base.reference_arm


def dropout_trials(n_trials: int, base: TrialConfig, *, seed0: int = 0) -> pd.DataFrame:
    """One row per trial x active arm: the exposure-based NB2 on the observed follow-up (`exp_`), the
    same trial without dropout (`full_`: every scheduled scan) and the completers only (`cc_`: patients
    with every visit, full follow-up), each with its rate ratio, CI and whether it covers the
    superpopulation rate ratio (`population_rate_ratios`), the first two also with the patient-level
    sandwich SE (`exp_robust_`, `full_robust_`), the exposure-based NB2 with one dispersion per arm
    (`exp_by_arm_`, expected information at each arm's alpha); plus the share of patients who dropped out
    before the last visit and the share of planned exposure lost."""
    rows = []
    for k, tr, target, ref in _trials(n_trials, base, seed0):
        t = tr.table
        last = tr.visits[tr.visits["visit_index"] == tr.visits["visit_index"].max()]
        completers = set(last.loc[last["missing"] == "", "patient_id"])
        fits = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cov, tag in (("expected", ""), ("robust", "robust_")):
                fits[f"exp_{tag}"] = exposure_nb2(t, "observed_net2 ~ arm", years="observed_years", reference=ref, cov=cov).fit
                fits[f"full_{tag}"] = fit_count_model(t, "net2 ~ arm", reference=ref, adjusted_means=False, cov=cov)  # type: ignore[arg-type]
            fits["exp_by_arm_"] = exposure_nb2(t, "observed_net2 ~ arm", years="observed_years", reference=ref, dispersion="by_arm").fit
            fits["cc_"] = fit_count_model(t[t["patient_id"].isin(completers)], "net2 ~ arm", reference=ref, adjusted_means=False)
        for arm in target:
            if arm == ref:
                continue
            row = {"trial": k, "arm": arm, "target_rate_ratio": target[arm], "dropout_share": float((last["missing"] == "dropout").mean()),
                   "exposure_lost": float(1 - np.nansum(t["observed_years"]) / t["followup_years"].sum())}
            for tag, f in fits.items():
                r = f.rate_ratio(arm)
                row.update({f"{tag}rate_ratio": r.rate_ratio, f"{tag}ci_low": r.ci_low, f"{tag}ci_high": r.ci_high, f"{tag}se": r.se,
                            f"{tag}estimable": bool(r.estimable), f"{tag}covers": bool(r.ci_low <= target[arm] <= r.ci_high)})
            rows.append(row)
    return pd.DataFrame(rows)


def coverage_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per arm and overall, per analysis: estimable trials, coverage among them, its binomial SE, bias of the log rate ratio."""
    out = []
    for arm, g in [*trials.groupby("arm", sort=False), ("all arms", trials)]:
        row = {"arm": arm, "rows": len(g), "dropout_share": g["dropout_share"].mean(), "exposure_lost": g["exposure_lost"].mean()}
        for tag in [t for t in ("exp_", "exp_robust_", "exp_by_arm_", "full_", "full_robust_", "cc_") if f"{t}covers" in g]:
            e = g[g[f"{tag}estimable"]]
            p = e[f"{tag}covers"].mean()
            row.update({f"{tag}estimable": len(e), f"{tag}coverage": p, f"{tag}mc_se": float(np.sqrt(0.95 * 0.05 / max(len(e), 1))),
                        f"{tag}log_bias": float(np.mean(np.log(e[f"{tag}rate_ratio"]) - np.log(e["target_rate_ratio"])))})
        out.append(row)
    return pd.DataFrame(out)


def mnar_trials(n_trials: int, base: TrialConfig, *, deltas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0), delta_arms: str = "all",
                imputations: int = 10, seed0: int = 0) -> pd.DataFrame:
    """One row per trial x active arm: the true log rate ratio, the same trial's full-data NB2 (every
    scheduled scan, as if nobody had left: `full_log_rr`), the MAR (exposure-based) log rate ratio, the
    pooled MI log rate ratio at each delta (`mi_<delta>`), whether it moves monotonically with delta,
    and `delta_star`: the delta (linear interpolation on the grid; NaN outside it) at which the pooled
    estimate equals the trial's own full-data estimate -- the amount of MNAR (rate after dropout x
    exp(delta)) that reproduces what the dropouts' scans would have shown."""
    rows = []
    for k, tr, target, ref in _trials(n_trials, base, seed0):
        t = tr.table.assign(planned_years=tr.table["followup_years"])
        s = mnar_sensitivity(t, "observed_net2 ~ arm", years="observed_years", planned_years="planned_years", reference=ref,
                             deltas=deltas, delta_arms=delta_arms, imputations=imputations, seed=seed0 + k)
        mar = exposure_nb2(t, "observed_net2 ~ arm", years="observed_years", reference=ref).fit.table.set_index("term")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = fit_count_model(t, "net2 ~ arm", reference=ref, adjusted_means=False).table.set_index("term")
        for arm in target:
            if arm == ref:
                continue
            g = s.table[s.table["arm"] == arm].sort_values("delta")
            est = np.log(g["rate_ratio"].to_numpy())
            full_rr = float(full.loc[arm, "coef"])
            row = {"trial": k, "arm": arm, "true_log_rr": np.log(target[arm]), "full_log_rr": full_rr, "mar_log_rr": float(mar.loc[arm, "coef"]),
                   **{f"mi_{d:g}": float(v) for d, v in zip(g["delta"], est)},
                   "monotone": bool(np.all(np.diff(est) > 0)) if delta_arms == "active" else bool(np.all(np.diff(est) < 0) or np.all(np.diff(est) > 0)),
                   "delta_star": _crossing(g["delta"].to_numpy(), est, full_rr)}
            rows.append(row)
    return pd.DataFrame(rows)


def mean_curve_delta(trials: pd.DataFrame, *, boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The delta at which the mean over trials of (pooled MI log rate ratio - full-data log rate ratio)
    crosses 0 (linear interpolation on the grid), with a percentile bootstrap 95% CI over trials."""
    cols = sorted((c for c in trials.columns if c.startswith("mi_")), key=lambda c: float(c[3:]))
    x = np.array([float(c[3:]) for c in cols])
    diff = trials[cols].to_numpy() - trials[["full_log_rr"]].to_numpy()
    rng = np.random.default_rng(seed)
    reps = [_crossing(x, diff[rng.integers(0, len(diff), len(diff))].mean(axis=0), 0.0) for _ in range(boot)]
    lo, hi = np.nanpercentile(reps, [2.5, 97.5]) if np.isfinite(reps).any() else (np.nan, np.nan)
    return _crossing(x, diff.mean(axis=0), 0.0), float(lo), float(hi)


def _crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """x where the piecewise-linear y(x) crosses `level` (y monotone); NaN when it never does on the grid."""
    order = np.argsort(y)
    ys, xs = y[order], x[order]
    if not (ys[0] <= level <= ys[-1]) or not np.all(np.isfinite(ys)):
        return float("nan")
    return float(np.interp(level, ys, xs))
