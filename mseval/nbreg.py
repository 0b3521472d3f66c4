"""`mseval nbreg`: the NB2 model (`mseval.stats.count_model`) on any table, with its arms checked.

Writes to OUT (atomically):
    rate_ratios.csv     term, rate_ratio, ci_low, ci_high, p_value, coef, se, estimable, note; a term
                        that is not estimable keeps its note and empty number fields (never 0, inf or
                        the optimiser's 1e-21)
    adjusted_means.csv  adjusted annualised rate per arm and % reduction (empty where not estimable)
    arm_counts.csv      per arm of the analysed rows: n, events, exposure_years
    model.json          model information, the table as given, the arms checked and where they came from

Before the fit the arm column is checked (`mseval.io.arm_names`): against the arms table when one
is given (`arms`) and otherwise for case variants and one-edit typos; the arms table's reference
arm is the default reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mseval import __version__
from mseval.errors import InputError
from mseval.io.arm_names import KnownArms, check_arm_values
from mseval.io.atomic import atomic_dir, write_csv_atomic, write_json_atomic
from mseval.stats.count_model import CountModelFit, check_formula, fit_count_model

RATE_RATIO_COLUMNS = ["term", "rate_ratio", "ci_low", "ci_high", "p_value", "coef", "se", "estimable", "note"]
_NUMBERS = ["rate_ratio", "ci_low", "ci_high", "p_value", "coef", "se"]


def blank_not_estimable(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A copy of `table` with `columns` emptied (NaN, written as an empty CSV field) where `estimable` is False."""
    out = table.copy()
    bad = ~out["estimable"].astype(bool)
    for c in columns:
        out[c] = out[c].astype(float).where(~bad, np.nan)
    return out


def read_any_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet table (by suffix); InputError naming the file when it cannot be read."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read table ({type(exc).__name__}: {exc})") from None


def run_nbreg(
    table_path: str | Path, out: str | Path, *, formula: str, offset_years: str | None, reference: str | None,
    cov: str = "expected", arm_col: str = "arm", overwrite: bool = False, arms: KnownArms | None = None,
) -> CountModelFit:
    """Fit NB2 `formula` on the table at `table_path` and write OUT (module docstring). `arms`: the
    arms the arm column may hold (None: none known; case variants and rare one-edit typos are still
    refused). Returns the fit."""
    table_path, out = Path(table_path), Path(out)
    if not table_path.is_file():
        raise InputError(table_path, "file not found")
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    if cov not in ("expected", "observed", "robust"):
        raise InputError(None, f"--cov must be expected, observed or robust, got {cov!r}", field="cov")
    data = read_any_table(table_path)
    _, used = check_formula(formula, data, str(table_path))
    if arm_col in used:
        check_arm_values(data[arm_col], arms, file=table_path, field=arm_col)
        if reference is not None and arms is not None and reference not in arms.arms:
            from mseval.io.arm_names import closest

            near = closest(reference, arms.arms)
            raise InputError(None, f"--reference {reference!r} is not an arm" + (f"; did you mean {near!r}?" if near else "")
                             + f" (arms from {arms.source})", field="reference")
        present = set(data[arm_col].dropna().astype(str))
        if reference is None and arms is not None and arms.reference in present:
            reference = arms.reference
    fit = fit_count_model(data, formula, offset_years=offset_years, reference=reference, cov=cov, arm_col=arm_col,  # type: ignore[arg-type]
                          file=str(table_path))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_csv_atomic(blank_not_estimable(fit.table[RATE_RATIO_COLUMNS], _NUMBERS), tmp / "rate_ratios.csv")
        if not fit.arm_means.empty:
            write_csv_atomic(blank_not_estimable(fit.arm_means, ["adjusted_rate_per_year", "reduction_pct"]), tmp / "adjusted_means.csv")
        if not fit.arm_counts.empty:
            write_csv_atomic(fit.arm_counts, tmp / "arm_counts.csv")
        write_json_atomic({**fit.model_info(), "table": str(table_path), "offset_years": offset_years, "mseval_version": __version__,
                           "arms_checked_against": arms.source if arms is not None else None}, tmp / "model.json")
    return fit
