"""Monte Carlo check of the analysis plan's adjusted primary analysis (issue 23, "power gain of adjustment").

    python bench/validity_sap.py power-gain --trials 500 --patients-per-arm 20 --seed 2023

Draws `trials` trials of the default world (`TrialConfig()` with `patients_per_arm`; count-level draws:
patients from `mseval.simulate.model.draw_patients`, NET2 counts from their event law,
`mseval.simulate.counts_only.simulate_count_trial`; no images), runs the default SAP's primary analysis
(NB2 on arm + site + Gd+ 0 vs >= 1 + log(1 + T2 volume) + EDSS >= 4, offset log(years)) and its unadjusted
sensitivity analysis (`net2 ~ arm`), its robust-SE sensitivity analysis (patient-level sandwich) and the adjusted model
without site (3 parameters fewer; site carries no prognostic information in the simulated world) through
`mseval.sap.runner.run_sap`, and reports per arm:

- the ratio of the SEs of the log rate ratio, adjusted / unadjusted (mean over trials, and the ratio of
  the Monte Carlo SDs of the estimates), and the implied sample-size saving 1 - ratio^2;
- coverage of the true rate ratio by each 95% CI (target: the superpopulation ratio of mean rates,
  `population_rate_ratios`, what a randomized trial's rate ratio estimates), with its Monte Carlo SE;
- coverage of the superpopulation rate difference (lesions per patient-year) by the adjusted
  standardised rate-difference CI (which conditions on the trial's covariates).
and per analysis the mean model SE, the Monte Carlo SD and the bias of the log rate ratio.
`--world homogeneous` switches off effect modification (modifier 0, response_sd 0): every patient has the
arm's rate ratio, so conditional and marginal ratios coincide. Prints Markdown tables; `--json PATH` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mseval.sap.default import default_sap_text  # noqa: E402
from mseval.sap.runner import run_sap  # noqa: E402
from mseval.sap.schema import parse_sap  # noqa: E402
from mseval.simulate.counts_only import population_rate_ratios, simulate_count_trial  # noqa: E402
from mseval.simulate.model import TrialConfig, draw_patients, truth_frame  # noqa: E402


def population_rate_differences(cfg: TrialConfig, n: int = 400_000, seed: int = 12345) -> dict[str, float]:
    """E[annual rate under arm] - E[annual rate under the reference] over the patient model (lesions per patient-year)."""
    big = replace(cfg, patients_per_arm=max(n // len(cfg.arms), 1))
    truth = truth_frame(draw_patients(big, np.random.default_rng(seed)), big)
    m = truth.groupby("arm")["annual_rate"].mean()
    return {a: float(m[a] - m[big.reference_arm]) for a in m.index}


def power_gain(trials: int, patients_per_arm: int, seed: int, *, world: str = "default") -> pd.DataFrame:
    cfg0 = TrialConfig(patients_per_arm=patients_per_arm)
    if world == "homogeneous":  # every patient the arm's rate ratio: no effect modification by age, no individual response
        cfg0 = replace(cfg0, modifier=0.0, response_sd=0.0)
    arms = [a.arm for a in cfg0.arms]
    ref = cfg0.reference_arm
    text = default_sap_text().replace("procedure: holm", "procedure: none").replace("test: auto", "test: wald")  # SEs from the Wald CI
    text = text[: text.index("secondary:")] + """  - name: without_site
    description: the primary model without site (a covariate with no prognostic value in the simulated world)
    covariates:
      - {column: gd_count, transform: any_vs_none}
      - {column: t2_volume_mm3, transform: log1p}
      - {column: edss, transform: at_least, cut: 4.0}
"""
    sap = parse_sap(text.encode(), "validity_sap")
    true_rr = population_rate_ratios(cfg0)
    true_rd = population_rate_differences(cfg0)
    rows = []
    for t in range(trials):
        cfg = replace(cfg0, seed=seed * 100_000 + t)
        table = simulate_count_trial(cfg, samples=1).table
        res = run_sap(sap, table, arms=arms, reference=ref)
        for r in (res.primary, *res.sensitivity):
            for row in r.table[~r.table["reference"]].itertuples():
                se = (np.log(row.rr_ci_high) - np.log(row.rr_ci_low)) / (2 * 1.959963984540054)
                rows.append({"trial": t, "analysis": r.name, "arm": row.arm, "log_rr": np.log(row.rate_ratio), "se": se,
                             "log_true": np.log(true_rr[row.arm]),
                             "covers_rr": row.rr_ci_low <= true_rr[row.arm] <= row.rr_ci_high, "estimable": row.estimable,
                             "covers_rd": row.rd_ci_low <= true_rd[row.arm] <= row.rd_ci_high})
    return pd.DataFrame(rows)


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    ok = raw[raw["estimable"]]
    out = []
    for arm, g in ok.groupby("arm", sort=False):
        a, u = g[g["analysis"] == "primary"], g[g["analysis"] == "unadjusted"]
        n = len(a)
        ratio = float(a["se"].mean() / u["se"].mean())
        out.append({"arm": arm, "trials": n, "se_adjusted": a["se"].mean(), "se_unadjusted": u["se"].mean(), "se_ratio": ratio,
                    "sd_ratio": float(a["log_rr"].std() / u["log_rr"].std()), "sample_size_saving_pct": 100 * (1 - ratio ** 2),
                    "coverage_adjusted": a["covers_rr"].mean(), "coverage_unadjusted": u["covers_rr"].mean(),
                    "mc_se": float(np.sqrt(0.95 * 0.05 / n)), "coverage_rd_adjusted": a["covers_rd"].mean(),
                    "coverage_robust": g[g["analysis"] == "robust_se"]["covers_rr"].mean(),
                    "not_estimable": int((~raw[(raw["arm"] == arm)]["estimable"]).sum())})
    return pd.DataFrame(out)


def by_analysis(raw: pd.DataFrame) -> pd.DataFrame:
    """Per analysis x arm: mean model SE, Monte Carlo SD and bias of the log rate ratio, coverage."""
    ok = raw[raw["estimable"]]
    g = ok.groupby(["analysis", "arm"], sort=False)
    return pd.DataFrame({"mean_se": g["se"].mean(), "sd": g["log_rr"].std(), "bias": g.apply(lambda d: (d["log_rr"] - d["log_true"]).mean()),
                         "coverage": g["covers_rr"].mean()}).reset_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pg = sub.add_parser("power-gain")
    pg.add_argument("--trials", type=int, default=500)
    pg.add_argument("--patients-per-arm", type=int, default=20)
    pg.add_argument("--seed", type=int, default=2023)
    pg.add_argument("--world", choices=("default", "homogeneous"), default="default")
    pg.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    raw = power_gain(args.trials, args.patients_per_arm, args.seed, world=args.world)
    s = summarise(raw)
    print(f"{args.trials} trials of the {args.world} world, {args.patients_per_arm} patients per arm, seed {args.seed} ({time.time() - t0:.0f} s)\n")
    print("| arm | SE log RR adjusted | unadjusted | SE ratio | SD ratio | sample-size saving | coverage adjusted | coverage unadjusted "
          "| coverage of the rate difference (adjusted) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in s.itertuples():
        print(f"| {r.arm} | {r.se_adjusted:.3f} | {r.se_unadjusted:.3f} | {r.se_ratio:.3f} | {r.sd_ratio:.3f} | {r.sample_size_saving_pct:.0f}% "
              f"| {100 * r.coverage_adjusted:.1f}% | {100 * r.coverage_unadjusted:.1f}% | {100 * r.coverage_rd_adjusted:.1f}% |")
    print(f"\nMonte Carlo SE of a coverage near 95%: {100 * s['mc_se'].iloc[0]:.1f} points; not estimable fits: {int(s['not_estimable'].sum())}\n")
    ba = by_analysis(raw)
    print("| analysis | arm | mean SE log RR | SD of log RR | bias of log RR | coverage |\n|---|---|---|---|---|---|")
    for r in ba.itertuples():
        print(f"| {r.analysis} | {r.arm} | {r.mean_se:.3f} | {r.sd:.3f} | {r.bias:+.3f} | {100 * r.coverage:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "summary": s.to_dict("records"),
                                         "by_analysis": ba.to_dict("records")}, indent=1))


if __name__ == "__main__":
    main()
