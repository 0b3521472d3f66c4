"""Coverage of the true rate ratio by the multi-visit analyses of issue 23 (cumulative NB2 with offset
log(observed years); NB-GEE of the per-visit counts, exchangeable working correlation, robust SE) on
count-level trials of the world's defaults (`simulate_count_trial(TrialConfig(seed=s))`: 20 patients per
arm, 6 arms, visits at weeks 24, 48, 96, no dropout).

Each analysis with the model-based or uncorrected sandwich SE and with Mancl and DeRouen's bias-reduced
sandwich (the default of `fit_cumulative_nb2` and `fit_gee`). All analyses here are arm-only (no covariates), so both target the ratio of the arms' mean NET2 rates
over the trial population, E[lambda_i rho_ia] / E[lambda_i] = `population_rate_ratios` (the NB2 with arm
only estimates each arm's mean rate, the GEE's marginal mean is that mean by construction). An analysis
adjusted for age would target a conditional rate ratio, which differs under the world's heterogeneous
response (the effect depends on age and on a patient-level response): its truth is not this one.

    PYTHONPATH=. nice -n 10 python bench/validity_visits.py --trials 500 --corr exchangeable,ar1 --out validity_visits.csv

prints the markdown table of bench/RESULTS.md ("Several visits: coverage ...") and writes one row per
trial, analysis and arm to --out.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial
from mseval.simulate.model import TrialConfig
from mseval.stats.gee import fit_gee
from mseval.stats.gee_permutation import gee_permutation_tests
from mseval.stats.visits import fit_cumulative_nb2

Z = 1.959963984540054


def _row(seed: int, name: str, arm: str, truth: dict[str, float], rr: float, se: float, estimable: bool, crit: float = Z) -> dict:
    lo, hi = rr * np.exp(-crit * se), rr * np.exp(crit * se)
    return {"seed": seed, "analysis": name, "arm": arm, "true_rr": truth[arm], "rate_ratio": rr, "ci_low": lo, "ci_high": hi,
            "estimable": bool(estimable), "covered": bool(lo <= truth[arm] <= hi)}


def one_trial(seed: int, truth: dict[str, float], corrs: tuple[str, ...], permutations: int = 0) -> list[dict]:
    """One trial: every analysis's Wald CI for every active arm (the GEE fits give both sandwiches); with
    `permutations` > 0 also the NB-GEE's inverted permutation test (`gee_permutation_tests`, B = permutations,
    seed = the trial's)."""
    tr = simulate_count_trial(TrialConfig(seed=seed), samples=1)
    rows = []
    fits = {"cumulative NB2, model-based SE": fit_cumulative_nb2(tr.visits, tr.table, reference="placebo", cov="expected"),
            "cumulative NB2, Mancl-DeRouen SE": fit_cumulative_nb2(tr.visits, tr.table, reference="placebo"),
            "cumulative NB2, dispersion by arm (model-based SE)": fit_cumulative_nb2(tr.visits, tr.table, reference="placebo", cov="expected",
                                                                                      dispersion="by_arm")}
    for name, fit in fits.items():
        rows += [_row(seed, name, r.term, truth, r.rate_ratio, r.se, r.estimable) for r in fit.table.itertuples()]
    for corr in corrs:
        # one fit: its table holds the t_arms CI (`fit_gee(ci_reference="t_arms")`); the other references from its SE
        g = fit_gee(tr.visits, tr.table, corr=corr, family="nb", reference="placebo", ci_reference="t_arms")
        t_crit = float(stats.t.ppf(0.975, g.n_patients - len(g.params)))
        for r in g.table.itertuples():
            rows.append(_row(seed, f"NB-GEE {corr}, Liang-Zeger SE", r.term, truth, r.rate_ratio,
                             float(np.sqrt(g.vcov_liang_zeger.loc[r.term, r.term])), r.estimable))
            rows.append(_row(seed, f"NB-GEE {corr}, Mancl-DeRouen SE", r.term, truth, r.rate_ratio, r.se, r.estimable))
            rows.append(_row(seed, f"NB-GEE {corr}, Mancl-DeRouen SE, t(patients - coefficients)", r.term, truth, r.rate_ratio, r.se,
                             r.estimable, crit=t_crit))
            row = _row(seed, f"NB-GEE {corr}, Mancl-DeRouen SE, t(arm + reference patients - 2)", r.term, truth, r.rate_ratio, r.se, r.estimable)
            row.update(ci_low=r.ci_low, ci_high=r.ci_high, covered=bool(r.ci_low <= truth[r.term] <= r.ci_high))
            rows.append(row)
        if permutations:
            for r in gee_permutation_tests(tr.visits, tr.table, corr=corr, reference="placebo", n_permutations=permutations, seed=seed).itertuples():
                rows.append({"seed": seed, "analysis": f"NB-GEE {corr}, inverted permutation test", "arm": r.arm, "true_rr": truth[r.arm],
                             "rate_ratio": r.rate_ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "estimable": bool(r.estimable),
                             "covered": bool(r.ci_low <= truth[r.arm] <= r.ci_high)})
    return rows


def table(df: pd.DataFrame) -> str:
    """Markdown: coverage per analysis and arm (and all arms), with its Monte Carlo SE and the mean
    log-RR bias; non-estimable fits counted as not covering."""
    lines = ["| analysis | arm | true RR | trials | coverage | MC SE | mean log(RR) bias | median CI ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, arm), g in df.groupby(["analysis", "arm"], sort=False):
        cov = float((g["covered"] & g["estimable"]).mean())
        se = float(np.sqrt(cov * (1 - cov) / len(g)))
        bias = float(np.mean(np.log(g["rate_ratio"]) - np.log(g["true_rr"])))
        lines.append(f"| {name} | {arm} | {g['true_rr'].iloc[0]:.3f} | {len(g)} | {100 * cov:.1f}% | {100 * se:.1f} | {bias:+.3f} | "
                     f"{float(np.median(g['ci_high'] / g['ci_low'])):.2f} |")
    for name, g in df.groupby("analysis", sort=False):
        cov = float((g["covered"] & g["estimable"]).mean())
        lines.append(f"| {name} | **all arms** | | {len(g)} | **{100 * cov:.1f}%** | {100 * np.sqrt(cov * (1 - cov) / len(g)):.1f} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--seed0", type=int, default=230_000)
    ap.add_argument("--corr", default="exchangeable,ar1", help="comma-separated working correlations of the NB-GEE")
    ap.add_argument("--permutation", type=int, default=0, help="B > 0: add the NB-GEE's inverted permutation test with B permutations")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    truth = population_rate_ratios(TrialConfig())
    t0 = time.perf_counter()
    rows = [r for s in range(a.seed0, a.seed0 + a.trials) for r in one_trial(s, truth, tuple(a.corr.split(",")), a.permutation)]
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    print(table(df))
    print(f"\n{a.trials} trials in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
