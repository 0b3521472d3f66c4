"""Coverage of forecast effects with a TRAINED forecaster and K bootstrap forecasters (issue 22, item 1).

    PYTHONPATH=. nice .venv/bin/python bench/validity_forecasters.py [--pairs 1000] [--forecasters 10] [--samples 10]
                                                                     [--seed0 800000] [--csv PAIRS.csv]

Train/test pairs (`mseval.validity.forecasters.trained_forecaster_pairs`): an independent
200-patient training trial and a 2 x 100 test trial (placebo vs dimethyl fumarate, 48 weeks), the
NB2 forecaster (arm + log1p(gd_count) + age) fitted once (conditional CIs) and on K bootstrap
resamples (two-level variance), the oracle alone and as K seeded copies. Prints per method the
coverage of the true rate ratio with its binomial SE, mean reported SE vs empirical SD, bias, and
whether the acceptance band 93.5-96.5% holds for the two-level and oracle CIs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import pandas as pd

from mseval.validity.forecasters import summarize_pairs, trained_forecaster_pairs

ACCEPT = ("family_fc", "family_cf", "oracle_fc", "oracle_cf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--forecasters", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed0", type=int, default=800_000)
    ap.add_argument("--csv", default="")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.time()
    d = trained_forecaster_pairs(a.pairs, forecasters=a.forecasters, samples=a.samples, seed0=a.seed0)
    wall = time.time() - t0
    if a.csv:
        d.to_csv(a.csv, index=False)
    s = summarize_pairs(d)
    print(f"== {a.pairs} pairs, K = {a.forecasters} forecasters, {a.samples} samples each, seed0 {a.seed0}: {wall:.0f} s "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"true rate ratio {d['true_rate_ratio'].iloc[0]:.4f}")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(s.round(4).to_string(index=False))
    for m in ACCEPT:
        c = float(s.set_index("method").loc[m, "coverage"])
        print(f"{m:18s} coverage {c:.3f}: {'inside' if 0.935 <= c <= 0.965 else 'OUTSIDE'} 93.5-96.5%")


if __name__ == "__main__":
    main()
