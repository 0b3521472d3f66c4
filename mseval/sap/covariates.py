"""Named covariate transforms of an analysis plan: each covariate is a column and a transform, never
free code. `derive` adds the derived columns to the analysis table and returns the model terms, with a
deviation recorded (not an error) for a covariate the analysed patients leave constant, or one that
makes the design singular, which is then dropped.

Transforms (derived column name in brackets):
    identity      the value as is                           [cov_<column>]
    factor        categories; the first in sort order is the baseline  [C(cov_<column>)]
    any_vs_none   1 if value >= 1 else 0 (e.g. baseline Gd+ lesions 0 vs >= 1)  [cov_<column>_any]
    log           natural log; every analysed value must be > 0          [cov_<column>_log]
    log1p         log(1 + value), defined at 0                          [cov_<column>_log1p]
    at_least      1 if value >= cut else 0 (e.g. EDSS stratum < 4 vs >= 4)  [cov_<column>_ge<cut>]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mseval.errors import InputError, row_hint

NUMERIC = ("identity", "any_vs_none", "log", "log1p", "at_least")


@dataclass(frozen=True)
class Covariates:
    """data: the analysis table with the derived columns; terms: formula terms in plan order;
    kept: the covariates used (column, transform, term, label); deviations: words for each one dropped."""

    data: pd.DataFrame
    terms: list[str]
    kept: list[dict[str, Any]]
    deviations: list[str] = field(default_factory=list)


def describe(cov: dict[str, Any]) -> str:
    """Words for one covariate, e.g. "gd_count (0 vs >= 1)"."""
    if cov.get("label"):
        return str(cov["label"])
    t = cov["transform"]
    words = {"identity": "", "factor": " (categories)", "any_vs_none": " (0 vs >= 1)", "log": " (log)", "log1p": " (log(1 + x))",
             "at_least": f" (< {cov.get('cut'):g} vs >= {cov.get('cut'):g})" if t == "at_least" else ""}
    return f"{cov['column']}{words[t]}"


def _name(cov: dict[str, Any]) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", str(cov["column"]))
    t = cov["transform"]
    suffix = {"identity": "", "factor": "", "any_vs_none": "_any", "log": "_log", "log1p": "_log1p",
              "at_least": "_ge" + re.sub(r"[^A-Za-z0-9]", "p", f"{cov.get('cut', 0):g}")}[t]
    return f"cov_{safe}{suffix}"


def _numeric(data: pd.DataFrame, column: str, file: str | None) -> np.ndarray:
    raw = data[column]
    x = pd.to_numeric(raw, errors="coerce")
    bad = x.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(file, f"covariate '{column}' must be numeric for its transform (got {raw.iloc[i]!r}){row_hint(file, i + 1)}",
                         row=i + 1, field=column)
    return x.to_numpy(dtype=float)


def _transform(data: pd.DataFrame, cov: dict[str, Any], file: str | None) -> pd.Series:
    col, t = cov["column"], cov["transform"]
    if t == "factor":
        return data[col].astype("string").astype(object).where(data[col].notna(), None)
    x = _numeric(data, col, file)
    with np.errstate(divide="ignore", invalid="ignore"):
        if t in ("log", "log1p"):
            low = (x <= 0) if t == "log" else (x < 0)
            if np.any(low & np.isfinite(x)):
                i = int(np.flatnonzero(low & np.isfinite(x))[0])
                need = "> 0" if t == "log" else ">= 0"
                raise InputError(file, f"covariate '{col}' must be {need} for its {t} transform (got {x[i]:g}){row_hint(file, i + 1)}",
                                 row=i + 1, field=col)
            y = np.log(x) if t == "log" else np.log1p(x)
        elif t == "any_vs_none":
            y = np.where(np.isnan(x), np.nan, (x >= 1).astype(float))
        elif t == "at_least":
            y = np.where(np.isnan(x), np.nan, (x >= float(cov["cut"])).astype(float))
        else:
            y = x
    return pd.Series(y, index=data.index)


def derive(data: pd.DataFrame, covariates: Sequence[dict[str, Any]], *, analysed: np.ndarray | None = None,
           file: str | None = None) -> Covariates:
    """Add each covariate's derived column to a copy of `data` and return the model terms.

    analysed: (n,) bool, the rows the analysis will use (default: all); a covariate constant over
    them (one category, one value) is dropped with a deviation."""
    df = data.copy()
    rows = np.ones(len(df), bool) if analysed is None else np.asarray(analysed, bool)
    terms, kept, deviations = [], [], []
    for cov in covariates:
        name = _name(cov)
        df[name] = _transform(df, cov, file)
        values = df.loc[rows, name].dropna()
        if values.nunique() < 2:
            shown = values.iloc[0] if len(values) else "missing"
            deviations.append(f"covariate {describe(cov)} dropped: constant over the analysed patients (every one {shown!r})")
            continue
        term = f"C({name})" if cov["transform"] == "factor" else name
        terms.append(term)
        kept.append({**cov, "term": term, "derived_column": name, "description": describe(cov)})
    return Covariates(df, terms, kept, deviations)


def full_rank_terms(data: pd.DataFrame, response: str, fixed: Sequence[str], cov: Covariates, *, file: str | None = None) -> Covariates:
    """Add the covariates in plan order to `response ~ fixed`, keeping each only when the design over the
    rows without missing values stays full rank; a covariate collinear with the terms before it is
    dropped with a deviation."""
    from mseval.stats.count_model import design

    terms: list[str] = []
    kept: list[dict[str, Any]] = []
    devs = list(cov.deviations)
    for term, k in zip(cov.terms, cov.kept):
        trial_terms, trial_kept = [*terms, term], [*kept, k]
        used = [response, *[c["derived_column"] for c in trial_kept], *[f for f in fixed if f in data.columns]]
        sub = data.dropna(subset=used)
        _, X, _ = design(f"{response} ~ {' + '.join([*fixed, *trial_terms])}", sub, file)
        if np.linalg.matrix_rank(X) == X.shape[1]:
            terms, kept = trial_terms, trial_kept
        else:
            devs.append(f"covariate {k['description']} dropped: collinear with the terms before it over the analysed patients (singular design)")
    return Covariates(cov.data, terms, kept, devs)
