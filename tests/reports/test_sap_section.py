"""The SAP section's primary table: n randomized / analysed, and n scanned at each visit where the cohort has visits."""

from __future__ import annotations

import pandas as pd

from reports.sap_section import _count_rows


def _row(**extra: object) -> pd.DataFrame:
    base = {"arm": "dmf", "reference": False, "n_randomized": 20, "n_analysed": 19, "events": 12, "exposure_years": 30.5,
            "adjusted_rate": 0.4, "rate_ci_low": 0.2, "rate_ci_high": 0.7, "rate_ratio": 0.3, "rr_ci_low": 0.15,
            "rr_ci_high": 0.6, "rate_difference": -0.9, "rd_ci_low": -1.4, "rd_ci_high": -0.4, "p_value": 0.001,
            "p_adjusted": 0.003, "tested": True, "estimable": True, "note": ""}
    return pd.DataFrame([{**base, **extra}])


def test_the_n_cell_lists_each_visit_scanned() -> None:
    (row,) = _count_rows(_row(n_with_w24=19, n_with_w48=17, n_with_w96=15), {"dmf": "Dimethyl fumarate"})
    assert row[0] == "Dimethyl fumarate" and row[1] == "20 / 19 (scanned: W24 19, W48 17, W96 15)"
    (single,) = _count_rows(_row(), {})
    assert single[1] == "20 / 19"
