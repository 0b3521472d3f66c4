"""Schemas are valid JSON Schema, and the column-wise validator agrees with jsonschema on rows."""

from __future__ import annotations

import jsonschema
import numpy as np
import pandas as pd
import pytest

import data_schemas
from mseval.errors import InputError
from mseval.io.schemas import read_table, validate_frame


@pytest.mark.parametrize("name", data_schemas.SCHEMAS)
def test_schema_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(data_schemas.load(name))


def _arms() -> pd.DataFrame:
    return pd.DataFrame({"arm": ["placebo", "dmf"], "label": ["Placebo", "DMF"], "efficacy": ["none", "moderate"], "reference": ["true", "false"]})


def test_read_table_checks_changed_bytes_anew_and_returns_independent_frames(tmp_path) -> None:
    """read_table keeps the tables it validated by their bytes: a second read of the same bytes gives an
    equal frame that the caller may change freely, and a file rewritten with a bad value fails."""
    path = tmp_path / "arms.csv"
    _arms().to_csv(path, index=False)
    first = read_table(path, "arms")
    first.loc[0, "arm"] = "changed"
    again = read_table(path, "arms")
    assert again["arm"].tolist() == ["placebo", "dmf"] and again["reference"].tolist() == [True, False]
    _arms().assign(reference=["true", "maybe"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="expected true or false"):
        read_table(path, "arms")
    _arms().to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table(path, "arms"), again)


def test_a_compressed_csv_reads_as_its_plain_form(tmp_path) -> None:
    """read_table parses the bytes it hashed, with the compression the file name says (.csv.gz): the same frame."""
    plain, packed = tmp_path / "arms.csv", tmp_path / "arms.csv.gz"
    _arms().to_csv(plain, index=False)
    _arms().to_csv(packed, index=False, compression="gzip")
    pd.testing.assert_frame_equal(read_table(packed, "arms"), read_table(plain, "arms"))


def test_good_table_passes_and_is_typed() -> None:
    out = validate_frame(_arms(), "arms", "arms.csv")
    assert out["reference"].tolist() == [True, False]
    for rec in out.to_dict("records"):
        jsonschema.validate({**rec, "reference": bool(rec["reference"])}, data_schemas.load("arms"))


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("efficacy", "huge", "is not one of"),
        ("reference", "maybe", "expected true or false"),
        ("arm", "bad arm!", "does not match"),
        ("label", "", "missing"),
    ],
)
def test_bad_value_names_row_and_field(column: str, value: str, needle: str) -> None:
    df = _arms()
    df.loc[1, column] = value
    with pytest.raises(InputError) as err:
        validate_frame(df, "arms", "arms.csv")
    assert err.value.row == 2 and err.value.field == column and needle in str(err.value)
    assert str(err.value).startswith("arms.csv (row 2, field")
    row = {**_arms().iloc[1].to_dict(), "reference": False, column: value}
    if column == "reference":
        row["reference"] = value
    assert not jsonschema.Draft202012Validator(data_schemas.load("arms")).is_valid(row)


def test_missing_and_unknown_columns() -> None:
    with pytest.raises(InputError, match="missing required column 'label'"):
        validate_frame(_arms().drop(columns="label"), "arms", "arms.csv")
    with pytest.raises(InputError, match="unknown column 'colour'"):
        validate_frame(_arms().assign(colour="red"), "arms", "arms.csv")


def test_numbers_bounds_integers_and_duplicates() -> None:
    counts = pd.DataFrame({"patient_id": ["a", "a"], "arm": ["x", "x"], "sample": [0, 1], "count": [1, 2], "volume_mm3": [1.0, 2.0]})
    validate_frame(counts, "counts", "c.parquet")
    with pytest.raises(InputError, match="must be >= 0") as err:
        validate_frame(counts.assign(count=[1, -1]), "counts", "c.parquet")
    assert err.value.row == 2
    with pytest.raises(InputError, match="expected an integer"):
        validate_frame(counts.assign(count=[1, 2.5]), "counts", "c.parquet")
    with pytest.raises(InputError, match="expected a finite number"):
        validate_frame(counts.assign(volume_mm3=[1.0, np.inf]), "counts", "c.parquet")
    with pytest.raises(InputError, match="duplicate") as err:
        validate_frame(counts.assign(sample=[0, 0]), "counts", "c.parquet")
    assert err.value.row == 2


def test_multiple_of_for_edss() -> None:
    from mseval.io.schemas import _check_rules

    prop = data_schemas.load("manifest")["properties"]["edss"]
    _check_rules(pd.Series([0.0, 1.5, 6.5]), prop, "m.csv", "edss")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="multiple of 0.5"):
        _check_rules(pd.Series([1.5, 2.3]), prop, "m.csv", "edss")  # type: ignore[arg-type]
