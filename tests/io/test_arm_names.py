"""Arm names: the closest arm (difflib, case ignored), one-edit typos, and where the arms come from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mseval.errors import InputError
from mseval.io.arm_names import KnownArms, _one_edit, check_arm_values, closest, resolve_arms


def test_closest_ignores_case_and_names_nothing_far() -> None:
    arms = ["placebo", "dmf", "ocrelizumab"]
    assert closest("dfm", arms) == "dmf" and closest("Placebo", arms) == "placebo" and closest("OCRELIZUMAB ", arms) == "ocrelizumab"
    assert closest("aspirin", arms) is None


def test_one_edit() -> None:
    assert _one_edit("dfm", "dmf") and _one_edit("placbo", "placebo") and _one_edit("dose1", "dose2") and _one_edit("dmff", "dmf")
    assert not _one_edit("dmf", "dmf") and not _one_edit("ifnb1a_im", "ifnb1a_sc") and not _one_edit("fdm", "dmf")


def test_resolve_arms_from_a_list_a_file_or_beside_the_table(tmp_path: Path) -> None:
    assert resolve_arms("placebo, dmf", tmp_path / "t.csv") == KnownArms(("placebo", "dmf"), None, "--arms")
    assert resolve_arms(None, tmp_path / "t.csv") is None
    pd.DataFrame({"arm": ["placebo", "dmf"], "label": ["P", "D"], "efficacy": ["none", "high"], "reference": [True, False]}).to_csv(
        tmp_path / "arms.csv", index=False)
    found = resolve_arms(None, tmp_path / "t.csv")
    assert found is not None and found.arms == ("placebo", "dmf") and found.reference == "placebo"
    assert resolve_arms(str(tmp_path / "arms.csv"), tmp_path / "elsewhere" / "t.csv") == found
    assert resolve_arms("", tmp_path / "t.csv") is None  # '' turns the look-up off
    for bad, words in [("placebo,,dmf", "empty name"), ("placebo,Placebo", "twice"), (str(tmp_path / "nope.csv"), "not found")]:
        with pytest.raises(InputError, match=words):
            resolve_arms(bad, tmp_path / "t.csv")


def test_missing_values_are_not_arms_to_check() -> None:
    check_arm_values(pd.Series(["placebo", None, "dmf"]), KnownArms(("placebo", "dmf"), None, "--arms"), file="t.csv", field="arm")
    with pytest.raises(InputError, match=r"row 2.*'placebo ' is not an arm; did you mean 'placebo'"):
        check_arm_values(pd.Series(["placebo", "placebo ", "dmf"]), None, file="t.csv", field="arm")


def test_without_arms_only_a_rare_one_letter_variant_of_a_name_is_refused() -> None:
    common = ["dmf"] * 10 + ["placebo"] * 10
    with pytest.raises(InputError, match=r"\(row 21, field 'arm'\): 'dfm' is not an arm; did you mean 'dmf'\?"):
        check_arm_values(pd.Series(common + ["dfm"]), None, file="t.csv", field="arm")
    check_arm_values(pd.Series(common + ["dfm"] * 3), None, file="t.csv", field="arm")  # 10 vs 3: two arms, perhaps
    check_arm_values(pd.Series([1] * 10 + [2]), None, file="t.csv", field="arm")  # arm codes are not names
