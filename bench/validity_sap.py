"""Monte Carlo check of the analysis plan's adjusted primary analysis (issue 23, "power gain of adjustment").

    python bench/validity_sap.py power-gain --trials 500 --patients-per-arm 20 --seed 2023

Draws `trials` trials of the default world (`TrialConfig()` with `patients_per_arm`; count-level draws:
patients from `mseval.simulate.model.draw_patients`, NET2 counts from their event law,
`mseval.simulate.counts_only.simulate_count_trial`; no images), runs the default SAP's primary analysis
(NB2 on arm + site + Gd+ 0 vs >= 1 + log(1 + T2 volume) + EDSS >= 4, offset log(years)) and its unadjusted
sensitivity analysis (`net2 ~ arm`) through `mseval.sap.runner.run_sap`, and reports per arm:

- the ratio of the SEs of the log rate ratio, adjusted / unadjusted (mean over trials, and the ratio of
  the Monte Carlo SDs of the estimates), and the implied sample-size saving 1 - ratio^2;
- coverage of the true rate ratio by each 95% CI (target: the superpopulation ratio of mean rates,
  `population_rate_ratios`, what a randomized trial's rate ratio estimates), with its Monte Carlo SE;
- coverage of the superpopulation rate difference (lesions per patient-year) by the adjusted
  standardised rate-difference CI (which conditions on the trial's covariates).
Prints a Markdown table; `--json PATH` writes the numbers.
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


def power_gain(trials: int, patients_per_arm: int, seed: int) -> pd.DataFrame:
    cfg0 = TrialConfig(patients_per_arm=patients_per_arm)
    arms = [a.arm for a in cfg0.arms]
    ref = cfg0.reference_arm
    text = default_sap_text().replace("procedure: holm", "procedure: none")
    text = text[: text.index("  - name: robust_se")] + text[text.index("secondary:"):].replace(
        "secondary:\n  - name: lesion_free\n    endpoint: lesion_free\n    covariates: primary\n", "")
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
                    "not_estimable": int((~raw[(raw["arm"] == arm)]["estimable"]).sum())})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pg = sub.add_parser("power-gain")
    pg.add_argument("--trials", type=int, default=500)
    pg.add_argument("--patients-per-arm", type=int, default=20)
    pg.add_argument("--seed", type=int, default=2023)
    pg.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    raw = power_gain(args.trials, args.patients_per_arm, args.seed)
    s = summarise(raw)
    print(f"{args.trials} trials of the default world, {args.patients_per_arm} patients per arm, seed {args.seed} ({time.time() - t0:.0f} s)\n")
    print("| arm | SE log RR adjusted | unadjusted | SE ratio | SD ratio | sample-size saving | coverage adjusted | coverage unadjusted "
          "| coverage of the rate difference (adjusted) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in s.itertuples():
        print(f"| {r.arm} | {r.se_adjusted:.3f} | {r.se_unadjusted:.3f} | {r.se_ratio:.3f} | {r.sd_ratio:.3f} | {r.sample_size_saving_pct:.0f}% "
              f"| {100 * r.coverage_adjusted:.1f}% | {100 * r.coverage_unadjusted:.1f}% | {100 * r.coverage_rd_adjusted:.1f}% |")
    print(f"\nMonte Carlo SE of a coverage near 95%: {100 * s['mc_se'].iloc[0]:.1f} points; not estimable fits: {int(s['not_estimable'].sum())}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "summary": s.to_dict("records")}, indent=1))


if __name__ == "__main__":
    main()
