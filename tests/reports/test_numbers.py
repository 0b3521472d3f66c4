"""The one formatter of printed numbers (reports/numbers.py, reports/metric_cells.py): plain
notation, CIs at the estimate's precision, p < 0.001, proportions in [0, 1], one spelling of
'not estimable', and bounded quantities flagged outside their range."""

from __future__ import annotations

import math
import re

import pytest

from reports import metric_cells as MC
from reports import numbers as N


@pytest.mark.parametrize("x, digits, text", [
    (0.0, 2, "0.00"), (1.234, 2, "1.23"), (0.0047, 2, "0.0047"), (2.2e-16, 2, "< 0.0001"), (-3e-9, 2, "> -0.0001"),
    (-0.0001, 3, "-0.00010"), (1234.5, 1, "1234.5"), (2.5e6, 2, "not estimable (beyond one million)"), (math.nan, 2, "not estimable"),
    (math.inf, 2, "not estimable"), (None, 2, "not estimable"), (-0.001, 2, "-0.0010"), (-0.0, 2, "0.00"),
])
def test_num_is_plain(x, digits, text):
    assert N.num(x, digits) == text
    assert not re.search(r"\de[-+]?\d", N.num(x, digits))


def test_ci_takes_the_estimates_precision():
    assert N.ratio_text(0.04, 0.0047, 0.32) == "0.04 (< 0.01 to 0.32)"
    assert N.additive_text(-1.2, -2.891, -1.756) == "-1.20 (-2.89 to -1.76)"


@pytest.mark.parametrize("p, text", [(0.0123, "0.012"), (2.2e-20, "< 0.001"), (0.001, "0.001"), (1.0, "1.000"), (math.nan, "not estimable"),
                                     (1.2, "not estimable")])
def test_p_values(p, text):
    assert N.p_text(p) == text


def test_proportion_bounds_are_clipped():
    assert N.proportion_text(0.96, 0.81, 1.04) == "0.96 (0.81 to 1.00)"
    assert N.proportion_text(0.0, -1.4e-17, 0.2) == "0.00 (0.00 to 0.20)"


def test_bounded_quantities_are_flagged_not_printed_bare():
    assert MC.qini_cell(0.42) == "0.42"
    assert MC.qini_cell(1.09).startswith("not estimable (1.09 is outside the meaningful range")
    assert MC.metric_cell("calibration_slope", -11.8).startswith("not estimable (-11.80 is outside")
    assert MC.metric_cell("calibration_slope", 2.2e-16) == "< 0.0001"
    assert MC.metric_cell("calibration_slope", 0.9, n_patients=8, samples=20, per_arm=True) == "withheld (n = 8 < 20)"
    assert MC.metric_cell("pit_chi2_p", 2.2e-20, samples=20) == "< 0.001"
    assert MC.metric_cell("pit_chi2_p", 0.4, samples=2) == "withheld (2 samples per patient < 10)"
    assert MC.metric_cell("specificity@0.5", 1.0, 0.6, 1.0000001) == "1.00 (0.60 to 1.00)"
