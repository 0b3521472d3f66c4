"""`mseval simulate` and `mseval simulate-forecasts`: a synthetic trial with known truth, and forecasts drawn from its law."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mseval.errors import InputError
from mseval.commands._checks import check_min, check_out_folder
from mseval.commands._common import Wait, store_run
from mseval.commands._progress import progress


def _knob(text: str) -> object:
    """The type of an optional world knob: None (not given) keeps TrialConfig's default, which `text` states."""
    return Annotated[Optional[float], typer.Option(help=text, show_default=False)]


def simulate(
    out: Annotated[Path, typer.Argument(help="Cohort folder to create.")],
    patients_per_arm: Annotated[int, typer.Option(help="Patients randomized to each arm.")] = 20,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape X Y Z (voxels), 16..182 each.")] = (64, 76, 64),
    spacing: Annotated[Optional[tuple[float, float, float]], typer.Option(help="Voxel size X Y Z in mm (default: the 182x218x182 mm MNI field of view).")] = None,
    visits: Annotated[Optional[str], typer.Option(help="Follow-up visit schedule, weeks after baseline, increasing, comma-separated "
                      "(default 24,48,96); each visit varies by +/- 2 weeks per patient.", show_default=False)] = None,
    followup_weeks: _knob("A single follow-up visit at this week (the single-visit trial of "
                      "earlier versions); not together with --visits.") = None,
    dropout_per_year: _knob("Dropout hazard per year of follow-up, in [0, 1) (default 0: "
                      "nobody drops out); a dropout's later visits are absent rows.") = None,
    dropout_mar: _knob("Log hazard ratio of dropout after an interval with observed NET2 "
                      "activity (missing at random), -5..5 (default 0).") = None,
    dropout_mnar: _knob("Log hazard ratio of dropout per unit log latent activity (missing "
                      "not at random), -5..5 (default 0).") = None,
    missed_visit: _knob("Probability that a scheduled visit is missed at random, in [0, 1) "
                      "(default 0).") = None,
    prelesion_fraction: _knob("Share of future lesions whose pre-lesional change is visible "
                      "at baseline, 0..1 (default 0.15; 0 switches the channel off).") = None,
    prelesion_contrast: _knob("Contrast of the pre-lesional change in PD/FLAIR/T1, in units of "
                      "the image noise SD, 0..10 (default 0.5).") = None,
    dawm_strength: _knob("Exponent tying the extent of diffusely abnormal white matter to the "
                      "latent activity, 0..3 (default 0.5; 0: DAWM says nothing of it).") = None,
    spatial_strength: _knob("Strength of the patient's own lesion-prone regions in the law of "
                      "new lesion centres, 0..3 (default 1.5; 0: one law for everyone).") = None,
    mtr: Annotated[Optional[bool], typer.Option("--mtr/--no-mtr", help="Also write a baseline magnetization transfer ratio map "
                      "(mtr.nii.gz; default: no).", show_default=False)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KNOB=VALUE", help="Any other TrialConfig knob (mseval/simulate/model.py "
                      "documents each), e.g. --set base_rate=4 --set ocrelizumab.size_multiplier=0.7 (ARM.FIELD: "
                      "rate_ratio, size_multiplier, black_hole_multiplier). Repeatable. The knobs above have "
                      "their own options because most users set them; --set reaches the rest of the model "
                      "without an option per parameter, checked against TrialConfig's fields and ranges.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives a byte-identical cohort.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    wait: Wait = False,
) -> None:
    """Simulate a six-arm RRMS trial with known truth: baseline and follow-up visits (images, lesion
    masks, visits.csv), truth tables (docs/cohort_format.md)."""
    from mseval.commands._world_options import build_config
    from mseval.io.cohort import read_cohort
    from mseval.io.lock import output_lock
    from mseval.simulate.summary import trial_summary
    from mseval.simulate.trial import simulate_trial

    check_min(workers, "--workers", 1)
    check_out_folder(out)
    if patients_per_arm < 1:
        raise InputError(None, "--patients-per-arm must be at least 1", field="patients_per_arm")
    if not all(16 <= s <= 512 for s in shape):
        raise InputError(None, f"--shape {shape}: each axis must be between 16 and 512 voxels", field="shape")
    if spacing is not None and not all(s > 0 for s in spacing):
        raise InputError(None, f"--spacing {spacing}: must be positive", field="spacing")
    named = {"dropout_per_year": dropout_per_year, "dropout_mar": dropout_mar, "dropout_mnar": dropout_mnar, "missed_visit": missed_visit,
             "prelesion_fraction": prelesion_fraction, "prelesion_contrast": prelesion_contrast, "dawm_strength": dawm_strength,
             "spatial_strength": spatial_strength, "mtr": mtr}
    cfg = build_config(patients_per_arm=patients_per_arm, shape=tuple(shape), spacing=spacing, seed=seed, visits=visits,
                       followup_weeks=followup_weeks, named=named, sets=list(set_ or []))
    prog, update = progress("simulating patients")
    with output_lock(out, wait=wait), prog:
        simulate_trial(out, cfg, workers=workers, overwrite=overwrite, progress=update)
    _print_summary(trial_summary(read_cohort(out)), "Simulated trial", f"{out}\nvisits: {', '.join(cfg.visit_labels)}")


def _print_summary(df, title: str, header: str = "") -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption="NET2: new/enlarging T2 lesions at follow-up; RR: rate ratio vs the reference arm")
    names = {
        "label": "Arm", "patients": "N", "age_mean": "Age", "female_pct": "Female %", "gd_mean": "Gd+ lesions",
        "true_expected_mean": "True NET2", "observed_mean": "Observed NET2", "active_pct": "Active %",
        "true_rate_ratio": "True RR",
    }
    cols = [c for c in names if c in df.columns]
    for c in cols:
        table.add_column(names[c], justify="left" if c == "label" else "right")
    for rec in df.to_dict("records"):
        table.add_row(*[str(rec[c]) if isinstance(rec[c], (str, int)) else f"{rec[c]:.2f}" for c in cols])
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    if header:
        console.print(header, soft_wrap=True)  # a long path is never cut
    console.print(table)


def simulate_forecasts_cmd(
    cohort: Annotated[Path, typer.Argument(help="A cohort made by `mseval simulate`.")],
    out: Annotated[Path, typer.Option("--out", help="Forecast store folder (created, or resumed).")],
    samples: Annotated[int, typer.Option(help="Ensemble members per patient and arm.")] = 20,
    kind: Annotated[str, typer.Option(help="oracle | overdispersed | biased | nb2-bootstrap (NB2 forecasters trained on --train-cohort)")] = "oracle",
    arms: Annotated[str, typer.Option(help="'all' or a comma-separated list of arms.")] = "all",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (results do not depend on it).")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store at OUT (instead of resuming it with the same settings).")] = False,
    wait: Wait = False,
    forecasters: Annotated[int, typer.Option(help="nb2-bootstrap: K forecasters, each an NB2 (arm + log1p(gd_count) + age) on a bootstrap "
                      "resample of the training patients (K = 1: fitted on them as they are); --samples per forecaster.")] = 1,
    train_cohort: Annotated[Optional[Path], typer.Option(help="nb2-bootstrap: the cohort whose observed NET2 counts train the forecasters.")] = None,
) -> None:
    """Write a forecast store drawn from the simulator's true (or a deliberately wrong) law, or from K
    NB2 forecasters trained on another cohort (`--kind nb2-bootstrap --forecasters K --train-cohort DIR`)."""
    from mseval.io.lock import output_lock
    from mseval.simulate.forecasters import KINDS, ForecasterSpec, simulate_forecasts

    check_min(samples, "--samples", 1)
    check_min(workers, "--workers", 1)
    check_min(forecasters, "--forecasters", 1)
    if kind == "nb2-bootstrap":
        _nb2_family(cohort, out, samples, forecasters, train_cohort, arms, seed, workers, overwrite, wait)
        return
    if kind not in KINDS:
        raise InputError(None, f"--kind {kind!r}: choose one of {', '.join((*KINDS, 'nb2-bootstrap'))}")
    if forecasters != 1 or train_cohort is not None:
        raise InputError(None, f"--forecasters and --train-cohort are for --kind nb2-bootstrap; the {kind} forecaster is not trained", field="forecasters")
    check_out_folder(out)
    spec = ForecasterSpec(kind=kind, samples=samples, seed=seed)
    arm_list = None if arms == "all" else [a.strip() for a in arms.split(",") if a.strip()]
    prog, update = progress(f"{kind} forecasts")
    settings = {"checkpoint": f"simulated-{kind}", "samples": samples, "seed": seed}
    names = {"checkpoint": "--kind", "samples": "--samples", "seed": "--seed"}
    with output_lock(out, wait=wait), store_run(out, settings, names, overwrite=overwrite), prog:
        store = simulate_forecasts(cohort, out, spec, arms=arm_list, workers=workers, progress=update)
    typer.echo(f"{len(store)} blocks ({len(store.patients)} patients x {len(store.arms)} arms, {samples} samples each) in {out}")


def _nb2_family(cohort: Path, out: Path, samples: int, forecasters: int, train_cohort: Optional[Path], arms: str, seed: int, workers: int,
                overwrite: bool, wait: bool) -> None:
    """`--kind nb2-bootstrap`: K NB2 forecasters trained on `train_cohort` (mseval/nb2_forecasts.py)."""
    from mseval.io.cohort import read_cohort
    from mseval.io.lock import output_lock
    from mseval.nb2_forecasts import family_summary, write_nb2_family_store
    from mseval.provenance import cohort_fingerprint

    if train_cohort is None:
        raise InputError(None, "--kind nb2-bootstrap needs --train-cohort DIR (the cohort whose observed counts train the forecasters)",
                         field="train_cohort")
    check_out_folder(out)
    fp = cohort_fingerprint(read_cohort(train_cohort).manifest)
    read_cohort(cohort)
    arm_list = None if arms == "all" else [a.strip() for a in arms.split(",") if a.strip()]
    settings = {"checkpoint": "nb2-bootstrap", "samples": samples, "seed": seed, "forecasters": forecasters, "train_cohort": fp}
    names = {"checkpoint": "--kind", "samples": "--samples", "seed": "--seed", "forecasters": "--forecasters", "train_cohort": "--train-cohort"}
    prog, update = progress(f"nb2-bootstrap forecasts ({forecasters} forecasters)")
    with output_lock(out, wait=wait), store_run(out, settings, names, overwrite=overwrite), prog:
        store = write_nb2_family_store(cohort, train_cohort, out, forecasters=forecasters, samples=samples, seed=seed, arms=arm_list,
                                       workers=workers, progress=update)
    fam = family_summary(out)
    rr = [c for c in fam.columns if c.startswith("rr_")]
    spread = "; ".join(f"{c[3:]} RR {fam[c].min():.3f}-{fam[c].max():.3f}" for c in rr)
    typer.echo(f"{len(store)} blocks ({len(store.patients)} patients x {len(store.arms)} arms, {forecasters} forecasters x {samples} samples each) "
               f"in {out}; forecasters' rate ratios: {spread}")
