"""`mseval forecast image-train`, `image-laws` and `image-sample`: the image count model (forecast/image_count.py) from
the command line. Thin: parse, check, call `forecast.image_count_pipeline`, print. torch loads inside the commands."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer


def image_train(
    cohort: Annotated[Path, typer.Argument(help="Multi-visit cohort folder (visits.csv with cumulative NET2 masks).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder (image_count.json, weights.pt).")],
    epochs: Annotated[int, typer.Option(help="Epochs; each pathway keeps its best held-out epoch.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the batch order.")] = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of each arm's patients held out to choose the epochs.")] = 0.1,
    normalization: Annotated[str, typer.Option(help="brain_z or n4_whitestripe (forecast.preprocess).")] = "brain_z",
    count_trunk: Annotated[str, typer.Option("--count-trunk", help="conv or gated (forecast.image_count.COUNT_TRUNKS).")] = "conv",
    count_head: Annotated[str, typer.Option("--count-head", help="mlp or linear (forecast.image_count.COUNT_HEADS).")] = "mlp",
    count_terms: Annotated[str, typer.Option("--count-terms", help="The linear head's count-feature terms: linear, or flexible (quadratic terms and a dispersion model; forecast.image_count.COUNT_TERMS).")] = "linear",
    centre_trunk: Annotated[str, typer.Option("--centre-trunk", help="multiscale or shallow (forecast.image_count.CENTRE_TRUNKS).")] = "multiscale",
    hidden: Annotated[int, typer.Option(help="Channels of the centre pathway's features.")] = 12,
    count_hidden: Annotated[int, typer.Option("--count-hidden", help="Detector maps of the count pathway.")] = 8,
    workers: Annotated[int, typer.Option(help="Processes reading the patients (N4 costs about 2 s a patient); the same checkpoint for any number.")] = 1,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder keeping each patient's preprocessed arrays once read (reused by later runs and resumes; memory-mapped).")] = None,
    min_distance_mm: Annotated[Optional[float], typer.Option("--min-distance-mm", help="Recorded in the checkpoint: the sampler's default smallest distance (mm, per axis) between a member's lesion centres (default 22: 4 voxels of the 32^3 grid; a finer grid's lesions are smaller).")] = None,
) -> None:
    """Train the image count model (an NB2 count law per scheduled visit and an arm-specific lesion-centre intensity,
    both read from the baseline images) on a multi-visit cohort's observed outcomes; the truth is never read."""
    from forecast.image_count import CENTRE_TRUNKS, COUNT_HEADS, COUNT_TERMS, COUNT_TRUNKS
    from forecast.image_count_pipeline import train_image_count
    from forecast.preprocess import NORMALIZATIONS
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.commands._progress import progress
    from mseval.errors import InputError

    check_min(epochs, "--epochs", 1)
    check_min(hidden, "--hidden", 1)
    check_min(count_hidden, "--count-hidden", 1)
    check_min(workers, "--workers", 1)
    if not 0 < val_fraction < 1:
        raise InputError(None, "--val-fraction must lie strictly between 0 and 1", field="val_fraction")
    for option, value, allowed in (("--normalization", normalization, NORMALIZATIONS), ("--count-trunk", count_trunk, COUNT_TRUNKS),
                                   ("--count-head", count_head, COUNT_HEADS), ("--centre-trunk", centre_trunk, CENTRE_TRUNKS),
                                   ("--count-terms", count_terms, COUNT_TERMS)):
        if value not in allowed:
            raise InputError(None, f"{option} {value!r}: choose one of {', '.join(allowed)}", field=option.lstrip("-").replace("-", "_"))
    if count_terms != "linear" and count_head != "linear":
        raise InputError(None, f"--count-terms {count_terms} is the linear head's; add --count-head linear (an MLP forms its own terms)", field="count_terms")
    if min_distance_mm is not None and not (math.isfinite(min_distance_mm) and min_distance_mm >= 0):
        raise InputError(None, f"--min-distance-mm must be a finite distance >= 0 (mm), got {min_distance_mm!r}", field="min_distance_mm")
    check_out_folder(out)
    (read_bar, read), (fit_bar, fit_epoch) = progress("reading patients"), progress("fitting (epochs)")
    with read_bar, fit_bar:
        meta = train_image_count(cohort, out, epochs=epochs, seed=seed, val_fraction=val_fraction, normalization=normalization,
                                 net_options={"hidden": hidden, "count_hidden": count_hidden, "count_trunk": count_trunk,
                                              "count_head": count_head, "centre_trunk": centre_trunk}
                                 | ({"count_terms": count_terms} if count_terms != "linear" else {}), workers=workers, cache=cache,
                                 min_distance_mm=min_distance_mm, progress=lambda stage, done, total: (read if stage == "read" else fit_epoch)(done, total))
    from forecast.image_count import describe

    f = meta.fit
    typer.echo(f"model: {describe(meta.net)}")
    typer.echo(f"trained on {f['n_train']} patients, epochs chosen on {f['n_val']}: count epoch {f['best_count_epoch']} "
               f"(held-out NLL {f['val_count_nll']:.4f} nats per visit), centre epoch {f['best_centre_epoch']} "
               f"({f['val_centre_nll']:.4f} nats per lesion) -> {out}")


def image_laws(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder whose patients to forecast (baseline files and visits.csv's schedule).")],
    checkpoint: Annotated[Path, typer.Argument(help="Folder written by `mseval forecast image-train`.")],
    out: Annotated[Path, typer.Option("--out", help="CSV: one row per patient, arm and visit (forecast.image_count_pipeline.LAW_COLUMNS).")],
    reference_arm: Annotated[Optional[str], typer.Option("--reference-arm", help="Arm the log rate ratios contrast against (default: the checkpoint's first).")] = None,
    workers: Annotated[int, typer.Option(help="Processes reading the patients; the same table for any number.")] = 1,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder keeping each patient's preprocessed arrays once read (reused by later runs and resumes; memory-mapped).")] = None,
) -> None:
    """Each patient's forecast NB2 law of the cumulative NET2 count under every arm at every scheduled visit: expected
    count, dispersion, P(active) and the per-patient log rate ratio against the reference arm. Conditional on the
    baseline inputs and on the checkpoint (no training uncertainty)."""
    from forecast.image_count_pipeline import forecast_laws
    from mseval.commands._checks import check_min, check_out_file
    from mseval.commands._progress import progress
    from mseval.io.atomic import write_csv_atomic

    check_min(workers, "--workers", 1)
    check_out_file(out)
    bar, update = progress("reading patients")
    with bar:
        table = forecast_laws(cohort, checkpoint, reference_arm=reference_arm, progress=update, workers=workers, cache=cache)
    write_csv_atomic(table, out)
    typer.echo(f"{table['patient_id'].nunique()} patients x {table['arm'].nunique()} arms x {table['visit'].nunique()} visits "
               f"(conditional on the baseline inputs and checkpoint {table['checkpoint'].iloc[0]}; no training uncertainty) -> {out}")


def image_sample(
    cohort: Annotated[Path, typer.Argument(help="Cohort folder whose patients to forecast (baseline files and visits.csv's schedule).")],
    checkpoint: Annotated[Path, typer.Argument(help="Folder written by `mseval forecast image-train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for counts.csv (member x visit) and lesions.csv (member x lesion centre).")],
    samples: Annotated[int, typer.Option(help="Members per patient and arm.")] = 32,
    seed: Annotated[int, typer.Option(help="Base seed; member m of (patient, arm) draws from derive_seed(seed, patient, arm, m).")] = 0,
    min_distance_mm: Annotated[Optional[float], typer.Option("--min-distance-mm", help="Smallest distance (mm, per axis) kept between a member's lesion centres (default: the checkpoint's; 22 mm for one that records none).")] = None,
    workers: Annotated[int, typer.Option(help="Processes reading the patients; the same samples for any number.")] = 1,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder keeping each patient's preprocessed arrays once read (reused by later runs and resumes; memory-mapped).")] = None,
) -> None:
    """Sample coherent lesion trajectories: per member, the cumulative NET2 count at every scheduled visit (one frailty,
    Poisson increments) and each lesion's centre and first visit (a W48 member holds its own W24 lesions). Lesion masks
    are not rendered here."""
    from forecast.image_count_pipeline import forecast_trajectories, write_trajectories
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.commands._progress import progress

    check_min(samples, "--samples", 1)
    check_min(workers, "--workers", 1)
    check_out_folder(out)
    bar, update = progress("sampling patients")
    with bar:
        counts, lesions = forecast_trajectories(cohort, checkpoint, samples=samples, seed=seed, min_distance_mm=min_distance_mm, progress=update,
                                               workers=workers, cache=cache)
    write_trajectories(out, counts, lesions, checkpoint)
    short = int((counts["placed"] < counts["net2"]).sum())
    typer.echo(f"{counts['patient_id'].nunique()} patients x {counts['arm'].nunique()} arms x {samples} members, {len(lesions)} lesions"
               + (f"; {short} member-visits drew more lesions than the brain had room for (placed < net2)" if short else "") + f" -> {out}")


def image_render(
    cohort: Annotated[Path, typer.Argument(help="The cohort the trajectories were sampled for (baseline images).")],
    samples: Annotated[Path, typer.Argument(help="Folder written by `mseval forecast image-sample` (counts.csv, lesions.csv).")],
    renderer: Annotated[Path, typer.Option("--renderer", help="A centre-conditioned diffusion checkpoint (centre_map; e.g. forecast/checkpoints/tiny_centre).")],
    out: Annotated[Path, typer.Option("--out", help="Folder: one forecast store per visit (OUT/<visit>/) and lesions.csv.")],
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the renderer config's).")] = None,
    mask_threshold: Annotated[Optional[float], typer.Option("--mask-threshold", help="Voxel probability above which a voxel is lesion (default: the --forecaster's, tuned on validation for these trajectories; else the renderer's own, tuned for its own count law).")] = None,
    batch_size: Annotated[int, typer.Option(help="Members per network batch; results do not depend on it.")] = 8,
    prob: Annotated[bool, typer.Option("--prob", help="Also keep each member's rendered voxel probability in the last visit's store.")] = False,
    labels: Annotated[Optional[str], typer.Option(help="What the decoder is told besides images and centres: arm-count (the member's arm and lesion count) or none (arm-blind shapes); default: the forecaster's, else arm-count.")] = None,
    forecaster: Annotated[Optional[Path], typer.Option("--forecaster", help="The image count checkpoint the samples came from, as `make checkpoint` exports it (render.json): its threshold and labels, tuned on validation with this decoder, become the defaults.")] = None,
) -> None:
    """Render each sampled trajectory's lesions into masks: the decoder draws shapes around the drawn centres (patient's
    baseline images, arm and lesion count as conditions), the mask is split by each lesion's first visit, and the mask of
    visit k holds the lesions born by k (one coherent trajectory per member). Resumes: blocks already written are kept."""
    from forecast.image_count_render import render_trajectories
    from mseval.commands._checks import check_min, check_out_folder
    from mseval.commands._progress import progress
    from mseval.errors import InputError

    check_min(batch_size, "--batch-size", 1)
    if steps is not None:
        check_min(steps, "--steps", 1)
    if mask_threshold is not None and not 0 < mask_threshold < 1:
        raise InputError(None, "--mask-threshold must lie strictly between 0 and 1", field="mask_threshold")
    tuned = None
    if forecaster is not None:
        from forecast.image_release import RENDER_FILE, read_render_settings

        tuned = read_render_settings(forecaster)
        if tuned is None:
            raise InputError(forecaster / RENDER_FILE, "not found: --forecaster takes a checkpoint exported by `make checkpoint` "
                             "(an `image-train` folder has no tuned render settings; give --mask-threshold instead)")
    check_out_folder(out)
    bar, update = progress("rendering (patient x arm)")
    with bar:
        table = render_trajectories(cohort, samples, renderer, out, steps=steps, threshold=mask_threshold, batch_size=batch_size, save_prob=prob,
                                    labels=labels, tuned=tuned, progress=update)
    lost, merged, owned = int(table["lost"].sum()), int((table["merged_into"] >= 0).sum()), table.loc[table["volume_mm3"] > 0, "volume_mm3"]
    typer.echo(f"{len(table)} lesions rendered ({lost} lost: nothing drawn at the centre; {merged} merged)"
               + (f", mean volume {owned.mean():.1f} mm^3" if len(owned) else "") + f" -> {out}")
