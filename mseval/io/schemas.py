"""Validate tables against the JSON Schemas in `data_schemas/`, column by column.

The schemas describe one row (a JSON object). Checking a 255,720-row table row by row with a
generic validator takes seconds, so the rules a table uses (type, enum, bounds, pattern,
multipleOf, required, additionalProperties, `x-table.unique`) are applied here to whole columns
at once; `tests/io/test_schemas.py` checks that these verdicts agree with `jsonschema` on rows.
Every failure is an `InputError` naming the file, the first bad (1-based) row and the field.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.common import infer_compression

import data_schemas
from mseval.errors import InputError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def schema(name: str) -> dict[str, Any]:
    return data_schemas.load(name)


def _types(prop: dict[str, Any]) -> tuple[set[str], bool]:
    t = prop.get("type", "string")
    types = {t} if isinstance(t, str) else set(t)
    nullable = "null" in types
    return types - {"null"}, nullable


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def _is_missing(values: pd.Series) -> np.ndarray:
    missing = values.isna().to_numpy().copy()
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        missing |= values.map(lambda v: isinstance(v, str) and v.strip() == "").to_numpy(dtype=bool)
    return missing


def _coerce(values: pd.Series, types: set[str], file: Path, field: str) -> pd.Series:
    """Convert one column to the schema's type (text from CSV, or native from Parquet)."""
    missing = _is_missing(values)
    present = ~missing
    if "array" in types:
        bad = present & ~values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).to_numpy(dtype=bool)
        if bad.any():
            raise InputError(file, "expected a list", row=_first_row(bad), field=field)
        return values
    if "boolean" in types:
        if pd.api.types.is_bool_dtype(values.dtype):
            return values.astype("boolean")
        text = values.astype("string").str.strip().str.lower()
        is_true = text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)
        is_false = text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)
        bad = present & ~(is_true | is_false)
        if bad.any():
            row = _first_row(bad)
            raise InputError(file, f"expected true or false, got {values.iloc[row - 1]!r}", row=row, field=field)
        out = pd.Series(pd.array([None] * len(values), dtype="boolean"), index=values.index)
        out[is_true] = True
        out[is_false] = False
        return out
    if types & {"integer", "number"}:
        if pd.api.types.is_bool_dtype(values.dtype):
            raise InputError(file, "expected a number, got a boolean", row=1, field=field)
        numeric = pd.to_numeric(values.where(present), errors="coerce")
        bad = present & numeric.isna().to_numpy()
        if bad.any():
            row = _first_row(bad)
            raise InputError(file, f"expected a number, got {values.iloc[row - 1]!r}", row=row, field=field)
        finite = np.isfinite(numeric.to_numpy(dtype=float, na_value=np.nan))
        bad = present & ~finite
        if bad.any():
            raise InputError(file, "expected a finite number", row=_first_row(bad), field=field)
        if "number" not in types:  # integer only
            arr = numeric.to_numpy(dtype=float, na_value=np.nan)
            bad = present & (np.floor(arr) != arr)
            if bad.any():
                row = _first_row(bad)
                raise InputError(file, f"expected an integer, got {values.iloc[row - 1]!r}", row=row, field=field)
            return numeric.astype("Int64") if missing.any() else numeric.astype("int64")
        return numeric.astype("float64")
    # string
    if pd.api.types.is_numeric_dtype(values.dtype) and present.any():
        raise InputError(file, f"expected text, got a number ({values[present].iloc[0]!r})", row=_first_row(present), field=field)
    return values.astype(object).where(present, None).map(lambda v: v.strip() if isinstance(v, str) else v)


def _check_rules(values: pd.Series, prop: dict[str, Any], file: Path, field: str) -> None:
    present = ~values.isna().to_numpy().copy()
    if not present.any():
        return
    if "enum" in prop:
        allowed = set(prop["enum"])
        bad = present & ~values.map(lambda v: v in allowed).to_numpy(dtype=bool)
        if bad.any():
            row = _first_row(bad)
            raise InputError(file, f"{values.iloc[row - 1]!r} is not one of {sorted(allowed)}", row=row, field=field)
    if "pattern" in prop:
        rx = re.compile(prop["pattern"])
        bad = present & ~values.map(lambda v: isinstance(v, str) and rx.search(v) is not None).to_numpy(dtype=bool)
        if bad.any():
            row = _first_row(bad)
            raise InputError(file, f"{values.iloc[row - 1]!r} does not match {prop['pattern']}", row=row, field=field)
    if "minLength" in prop:
        bad = present & (values.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy() < prop["minLength"])
        if bad.any():
            raise InputError(file, "must not be empty", row=_first_row(bad), field=field)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        arr = values.to_numpy(dtype=float, na_value=np.nan)
        checks = [
            ("minimum", lambda a, b: a < b, "must be >= {}"),
            ("exclusiveMinimum", lambda a, b: a <= b, "must be > {}"),
            ("maximum", lambda a, b: a > b, "must be <= {}"),
            ("exclusiveMaximum", lambda a, b: a >= b, "must be < {}"),
        ]
        for key, fails, text in checks:
            if key in prop:
                with np.errstate(invalid="ignore"):
                    bad = present & fails(arr, prop[key])
                if bad.any():
                    row = _first_row(bad)
                    raise InputError(file, f"{text.format(prop[key])}, got {arr[row - 1]:g}", row=row, field=field)
        if "multipleOf" in prop:
            q = arr / prop["multipleOf"]
            bad = present & ~np.isclose(q, np.round(q))
            if bad.any():
                row = _first_row(bad)
                raise InputError(file, f"must be a multiple of {prop['multipleOf']}, got {arr[row - 1]:g}", row=row, field=field)


def validate_frame(df: pd.DataFrame, schema_name: str, file: str | Path) -> pd.DataFrame:
    """Check `df` against schema `schema_name` and return it with columns coerced to the schema's types.

    Raises InputError(file, row, field) on: a missing required column, an unknown column (when the
    schema forbids extra ones), a wrong type, a value outside its enum/bounds/pattern, a missing
    required value, or a duplicate of a unique key.
    """
    file = Path(file)
    spec = schema(schema_name)
    props: dict[str, Any] = spec["properties"]
    required: list[str] = spec.get("required", [])
    columns = [str(c) for c in df.columns]
    for col in required:
        if col not in columns:
            raise InputError(file, f"missing required column '{col}'", field=col)
    if spec.get("additionalProperties", True) is False:
        unknown = [c for c in columns if c not in props]
        if unknown:
            raise InputError(file, f"unknown column '{unknown[0]}' (expected columns: {', '.join(props)})", field=unknown[0])
    out = df.copy()
    for col in columns:
        if col not in props:
            continue
        prop = props[col]
        types, nullable = _types(prop)
        values = _coerce(out[col], types, file, col)
        missing = values.isna().to_numpy() if "array" not in types else _is_missing(values)
        if missing.any() and not nullable:
            raise InputError(file, "value is missing", row=_first_row(missing), field=col)
        if "array" not in types:
            _check_rules(values, prop, file, col)
        out[col] = values
    for key in spec.get("x-table", {}).get("unique", []):
        if all(k in out.columns for k in key):
            dup = out.duplicated(subset=key, keep="first").to_numpy()
            if dup.any():
                row = _first_row(dup)
                what = ", ".join(f"{k}={out[k].iloc[row - 1]!r}" for k in key)
                raise InputError(file, f"duplicate {what}", row=row, field=key[0] if len(key) == 1 else "+".join(key))
    return out


_VALIDATED: OrderedDict[tuple[str, str, bytes], pd.DataFrame] = OrderedDict()
_VALIDATED_MAX = 32
_VALIDATED_LOCK = threading.Lock()
"""Tables that passed validation, by (schema, file suffix, SHA-1 of the file's bytes): a pipeline reads
the same unchanged cohort tables many times (every stage opens the cohort), and the validated frame
depends only on those bytes and the schema. A file whose bytes changed is read and checked anew."""


def read_table(path: str | Path, schema_name: str) -> pd.DataFrame:
    """Read a CSV (all columns as text, then typed by the schema) or Parquet table and validate it.
    Returns a fresh frame each time (the same bytes read before are not parsed and checked again)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    data = path.read_bytes()  # hashed and parsed from this one read
    key = (schema_name, path.suffix, hashlib.sha1(data).digest())
    with _VALIDATED_LOCK:
        if key in _VALIDATED:
            _VALIDATED.move_to_end(key)
            return _VALIDATED[key].copy()
    out = _read_and_validate(path, data, schema_name)
    with _VALIDATED_LOCK:
        _VALIDATED[key] = out.copy()
        while len(_VALIDATED) > _VALIDATED_MAX:
            _VALIDATED.popitem(last=False)
    return out


def _read_and_validate(path: Path, data: bytes, schema_name: str) -> pd.DataFrame:
    """Parse `data` (the bytes of `path`) and validate it; errors name `path`."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(io.BytesIO(data))
        else:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True,
                             compression=infer_compression(str(path), "infer"))  # as from the path: .csv.gz etc.
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise InputError(path, f"cannot read table ({type(exc).__name__}: {exc})") from None
    if len(df) == 0:
        raise InputError(path, "table has no rows")
    return validate_frame(df, schema_name, path)
