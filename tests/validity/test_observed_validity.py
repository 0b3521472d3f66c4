"""Fast versions of the validity checks (the full 500-trial runs are in bench/validity.py).

With 100 trials, an observed coverage or rejection rate has a Monte Carlo SE of
sqrt(0.95 x 0.05 / 100) = 0.022 around the nominal; the bounds below are nominal -/+ 3 SE, so a
correct method fails them with probability under 0.2%, and a broken one (e.g. Poisson SEs that
ignore overdispersion: coverage near 0.6) fails them."""

from __future__ import annotations

import numpy as np

from mseval.validity.observed import NULL, repeated_trials, summarize

SE = float(np.sqrt(0.95 * 0.05 / 100))


def test_rate_ratio_ci_covers_the_truth() -> None:
    s = summarize(repeated_trials(100, patients_per_arm=100, seed0=1000))
    assert s["coverage"] >= 0.95 - 3 * SE, s
    # The adjusted rate ratio is conditional on the prognostic score; with the simulator's effect
    # modifier (age) it targets a different quantity than the marginal ratio of means, so its
    # coverage of the marginal target is reported in bench/validity.py, not asserted here.
    assert s["rejection_rate"] > 0.9  # DMF (RR 0.15) at 100 per arm is detected nearly always
    assert s["se_ratio_adjusted_vs_unadjusted"] < 0.97  # the oracle prognostic score shrinks the SE


def test_null_arm_keeps_type_one_error() -> None:
    s = summarize(repeated_trials(100, patients_per_arm=100, drug=NULL, seed0=5000))
    assert s["rejection_rate"] <= 0.05 + 3 * SE, s
    assert s["adjusted_rejection_rate"] <= 0.05 + 3 * SE, s
    assert s["coverage"] >= 0.95 - 3 * SE, s
