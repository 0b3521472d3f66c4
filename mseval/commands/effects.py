"""`mseval nbreg` and `mseval effects`: NB2 regression of any table, and the treatment-effect tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.commands._checks import (
    OBSERVED_COLUMNS, check_conn, check_counts_file, check_formula_syntax, check_in_file, check_min, check_out_folder, check_store_file,
    table_columns,
)
from mseval.commands._common import Connectivity, MinVolume, Wait, quiet_numerics
from mseval.errors import InputError


def nbreg(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet table, one row per patient.")],
    out: Annotated[Path, typer.Option("--out", help="Folder: rate_ratios.csv, adjusted_means.csv, model.json.")],
    formula: Annotated[str, typer.Option(help="Model formula, e.g. 'net2 ~ arm + t2_volume_mm3'.")] = "net2 ~ arm",
    offset_years: Annotated[Optional[str], typer.Option(help="Column of follow-up years (offset log(years)); '' for none.")] = "followup_years",
    reference: Annotated[Optional[str], typer.Option(help="Reference arm (default: first in sort order).")] = None,
    cov: Annotated[str, typer.Option(help="Standard errors from the 'expected' (as R's glm.nb) or 'observed' information, or 'robust' (patient-level sandwich, HC0).")] = "expected",
    arm_column: Annotated[str, typer.Option(help="Column holding the arm.")] = "arm",
    arms: Annotated[Optional[str], typer.Option(help="The arms the table may hold: a comma list ('placebo,dmf') or an arms.csv "
                                                "(its reference arm is then the default reference). Default: the arms.csv beside TABLE, "
                                                "if any; '' for none. Values that are not arms are refused with the closest arm named.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    wait: Wait = False,
) -> None:
    """Negative binomial (NB2) regression of counts on any table: rate ratios with Wald 95% CIs, and
    per arm the patients, events and exposure analysed."""
    import pandas as pd

    from mseval.io.arm_names import resolve_arms
    from mseval.nbreg import run_nbreg
    from mseval.io.lock import output_lock
    from mseval.stats.count_model import check_formula

    kind = check_in_file(table, "TABLE")
    check_out_folder(out)
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    if cov not in ("expected", "observed", "robust"):
        raise InputError(None, f"--cov must be expected, observed or robust, got {cov!r}")
    columns = table_columns(table, kind)
    check_formula_syntax(formula, columns, table)
    _, used = check_formula(formula, pd.DataFrame(columns=columns), str(table))
    if arm_column not in columns and (arm_column != "arm" or "arm" in used):
        raise InputError(table, f"--arm-column {arm_column!r} names no column (columns: {', '.join(columns)})")
    if arm_column != "arm" and arm_column not in used:
        raise InputError(None, f"--arm-column {arm_column!r} is not a term of --formula {formula!r}")
    if offset_years and offset_years not in columns:
        raise InputError(table, f"--offset-years {offset_years!r} names no column (columns: {', '.join(columns)}; '' for no offset)")
    known = resolve_arms(arms, table)
    with output_lock(out, wait=wait), quiet_numerics(lambda m: typer.echo(f"... {m}", err=True)):
        fit = run_nbreg(table, out, formula=formula, offset_years=offset_years or None, reference=reference, cov=cov, arm_col=arm_column,
                        overwrite=overwrite, arms=known)
    typer.echo(fit.summary())
    if fit.arm_categories:
        typer.echo(f"  arms checked against {known.source}" if known is not None else
                   "  arms not checked against an arms table (none given with --arms, no arms.csv beside TABLE)")


def effects(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder (with observed NET2 masks).")],
    forecasts: Annotated[Optional[Path], typer.Argument(help="Forecast store (every patient under every arm).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the effect tables (see docs/statistics.md).")] = Path("effects"),
    formula: Annotated[str, typer.Option(help="NB2 model formula for observed and forecast analyses.")] = "net2 ~ arm",
    cov: Annotated[str, typer.Option(help="Standard errors of the observed NB2 fit in rate_ratios_observed.csv (and of the primary "
                                     "endpoint with --observed-ci model): 'expected' information (as R's glm.nb), 'observed', or "
                                     "'robust' (patient-level sandwich).")] = "expected",
    observed_ci: Annotated[str, typer.Option("--observed-ci", help="Interval and p-value of the observed rate ratios in the primary endpoint: "
                                             "auto (studentized bootstrap below 1,000 patients in the smallest compared arm, sandwich Wald "
                                             "above: valid when treated arms are more overdispersed), bootstrap-t, robust, or model (the NB2 "
                                             "fit's own Wald CI with --cov, as R's glm.nb). rate_ratios_observed.csv always holds the fit's.")] = "auto",
    observed_bootstrap: Annotated[int, typer.Option("--observed-bootstrap", help="Resamples of the studentized bootstrap behind --observed-ci "
                                                    "(at least 99; its smallest two-sided p is 2/(B+1)).")] = 999,
    counts: Annotated[Optional[Path], typer.Option(help="Use this counts.parquet instead of counting the store.")] = None,
    connectivity: Connectivity = 26,
    min_volume_mm3: MinVolume = 3.0,
    power_sims: Annotated[int, typer.Option(help="Simulated trials per arm for the simulated power (0: analytic only).")] = 50,
    bootstrap: Annotated[int, typer.Option(help="Patient-level bootstrap replicates of the observed rate ratios (0: none).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the power simulations and the bootstrap.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes for counting and the bootstrap.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    wait: Wait = False,
    heldout_patients: Annotated[Optional[Path], typer.Option(help="Text file, one patient_id a line: patients with observed outcomes the "
                                                              "forecaster never trained on; the counterfactual ratio then carries the forecaster's calibration error. Patients in the "
                                                              "checkpoint's training, validation or tuning provenance are refused (exit 2).")] = None,
    min_stratum_per_arm: Annotated[int, typer.Option(help="Smallest responder stratum estimated, in patients per arm (exploratory strata).")] = 10,
    forecaster_variance: Annotated[str, typer.Option(help="auto: the two-level variance (within + between forecasters) when the store holds "
                                                     "K > 1 forecasters, conditional otherwise; two-level: required (refused with one forecaster); "
                                                     "conditional: every sample pooled as one forecaster's.")] = "auto",
    sap: Annotated[Optional[str], typer.Option("--sap", help="Statistical analysis plan to run (YAML or JSON; schema data_schemas/sap.schema.json), "
                                               "or 'default' for the built-in MS trial plan (adjusted NB2; docs/statistics.md). Writes sap_*.csv, "
                                               "sap.yaml and sap.json; recorded with its SHA-256 in effects.json.")] = None,
) -> None:
    """Treatment effects: observed, forecast (NB2 on fully synthetic outcomes) and counterfactual rate
    ratios, each with its estimand; heterogeneity test, responders, Qini, prognostic adjustment, power."""
    from mseval.effects import EffectsSettings, run_effects

    from mseval.io.cohort import read_cohort
    from mseval.io.lock import output_lock

    check_conn(connectivity)
    if cov not in ("expected", "observed", "robust"):
        raise InputError(None, f"--cov must be expected, observed or robust, got {cov!r}", field="cov")
    from mseval.stats.observed_ci import OBSERVED_CI_METHODS

    observed_key = observed_ci.replace("-", "_")
    if observed_key not in OBSERVED_CI_METHODS:
        raise InputError(None, f"--observed-ci must be one of {', '.join(m.replace('_', '-') for m in OBSERVED_CI_METHODS)}, got {observed_ci!r}",
                         field="observed-ci")
    check_min(min_volume_mm3, "--min-volume-mm3", 0)
    check_min(bootstrap, "--bootstrap", 0)
    check_min(observed_bootstrap, "--observed-bootstrap", 99)
    check_min(power_sims, "--power-sims", 0)
    check_min(workers, "--workers", 1)
    check_min(min_stratum_per_arm, "--min-stratum-per-arm", 2)
    check_out_folder(out)
    if out.exists() and not overwrite:
        raise InputError(out, "output folder exists; remove it or pass --overwrite")
    c = read_cohort(cohort)
    check_formula_syntax(formula, [*c.manifest.columns, *OBSERVED_COLUMNS], c.root / "manifest.csv")
    if counts is not None:
        check_in_file(counts, "--counts", kinds=("parquet",))
        check_counts_file(counts, c)
    elif forecasts is None:
        raise InputError(None, "give a forecast store (FORECASTS) or --counts")
    else:
        check_store_file(forecasts, c)
    _check_forecasters(forecaster_variance, forecasts, counts)
    plan = _check_sap(sap, c)
    heldout: tuple[str, ...] = ()
    if heldout_patients is not None:
        check_in_file(heldout_patients, "--heldout-patients")
        heldout = tuple(x.strip() for x in heldout_patients.read_text().splitlines() if x.strip() and x.strip() != "patient_id")
    settings = EffectsSettings(formula=formula, cov=cov, connectivity=connectivity, min_volume_mm3=min_volume_mm3, power_sims=power_sims, bootstrap=bootstrap, seed=seed,
                               heldout_patients=heldout, min_stratum_per_arm=min_stratum_per_arm,
                               forecaster_variance=forecaster_variance, observed_ci=observed_key,
                               observed_bootstrap=observed_bootstrap)
    with output_lock(out, wait=wait), quiet_numerics(lambda m: typer.echo(f"... {m}", err=True)):
        summary = run_effects(cohort, forecasts, out, settings, counts_path=counts, workers=workers, overwrite=overwrite,
                              progress=lambda m: typer.echo(f"... {m}", err=True), sap=plan)
    def num(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "NA"

    for row in summary["primary_endpoint"]:
        obs = (f"{num(row['observed_rate_ratio'])} ({num(row['observed_ci_low'])}-{num(row['observed_ci_high'])})" if row.get("observed_estimable", True)
               else "not estimable")
        typer.echo(f"{row['arm']:14s} RR observed {obs}"
                   f"  forecast {num(row['forecast_rate_ratio'])}  counterfactual {num(row['counterfactual_rate_ratio'])}"
                   + (f"  true {num(row['true_ratio_of_means'])}" if row.get("true_ratio_of_means") is not None else ""))
    gone = summary.get("not_analysed") or []
    typer.echo(f"patients randomized {summary['patients_randomized']}, analysed {summary['patients']}"
               + (f" ({len(gone)} without an observed follow-up: not_analysed.csv)" if gone else ""))

    if plan is not None:
        import pandas as pd

        from mseval.sap.text import primary_lines

        typer.echo("\n".join(primary_lines(pd.read_csv(out / "sap_primary.csv"), summary["sap"])))
    typer.echo(f"observed CIs and p-values: {((summary.get('observed_model') or {}).get('primary_interval') or {}).get('ci_method', 'NB2 Wald')}")
    fm = summary.get("forecast_model") or {}
    typer.echo(f"forecast-derived CIs: {fm.get('variance', 'conditional on the forecaster')} ({fm.get('forecasters', 1)} forecasters)")
    typer.echo(f"tables in {out}")


def _check_sap(sap: Optional[str], cohort: object) -> object:
    """The analysis plan of --sap read, validated and checked against the cohort before any work (None without)."""
    if sap is None:
        return None
    from mseval.lesions.observed import MANIFEST_COVARIATES
    from mseval.sap.schema import check_against, load_sap
    from mseval.sap.secondary import several_visits

    plan = load_sap(sap)
    columns = [col for col in MANIFEST_COVARIATES if col in cohort.manifest.columns] + list(OBSERVED_COLUMNS)  # type: ignore[attr-defined]
    check_against(plan, columns, list(cohort.arms["arm"]), cohort.reference_arm, has_visits=several_visits(cohort.visits))  # type: ignore[attr-defined]
    return plan


def _check_forecasters(mode: str, forecasts: Optional[Path], counts: Optional[Path]) -> None:
    """Before any work: the store's forecasters are recorded with provenance, and a two-level variance
    asked for has at least 2 forecasters (InputError otherwise)."""
    import pandas as pd

    from mseval.effects import attach_forecasters, use_two_level

    if counts is not None:
        cols = pd.read_parquet(counts, columns=None).columns
        frame = pd.read_parquet(counts, columns=[c for c in ("patient_id", "arm", "sample", "forecaster") if c in cols])
    else:
        frame = pd.DataFrame(columns=["patient_id", "arm", "sample"])
    if counts is None and forecasts is not None:
        from mseval.io.store import store_forecasters

        use_two_level(mode, store_forecasters(forecasts).count)
        return
    _, info = attach_forecasters(frame, forecasts)
    use_two_level(mode, len(info["ids"]))
