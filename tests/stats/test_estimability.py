"""The one estimability rule: absurd ratios, infinite or huge CIs and failed fits are flagged."""

import json

import numpy as np
import pandas as pd

from mseval.io.atomic import write_json_atomic
from mseval.stats.estimability import assess_additive, assess_ratio, flag_table


def test_ratio_rule_flags_boundary_and_wide_intervals():
    assert assess_ratio(0.47, 0.24, 0.90) == (True, "")
    assert not assess_ratio(7e-16, 0.0, np.inf)[0]
    assert not assess_ratio(2085272832.47)[0]
    assert not assess_ratio(0.5, 1e-4, 0.9)[0]  # spans a factor 9000
    assert not assess_ratio(0.5, 0.2, 0.9, converged=False)[0]
    ok, note = assess_ratio(0.5, 0.2, 0.9, reasons=["separation"])
    assert not ok and "separation" in note


def test_additive_rule_flags_huge_interval():
    assert assess_additive(6.323, -10789.6, 10802.3)[0] is False
    assert assess_additive(1.02, 0.8, 1.3) == (True, "")
    assert not assess_additive(float("nan"))[0]


def test_flag_table_keeps_prior_flags_and_notes():
    df = pd.DataFrame({"rr": [0.5, 1e5, 0.6], "lo": [0.3, 1.0, 0.4], "hi": [0.9, 1e9, 0.9],
                       "estimable": [True, True, False], "note": ["", "", "arm has no events"]})
    out = flag_table(df, "rr", "lo", "hi")
    assert out["estimable"].tolist() == [True, False, False]
    assert out.loc[2, "note"] == "arm has no events"
    assert "outside" in out.loc[1, "note"]


def test_json_never_holds_nan(tmp_path):
    path = write_json_atomic({"a": float("nan"), "b": [np.inf, 1.0], "c": np.float64(-np.inf)}, tmp_path / "x.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.0], "c": None}
