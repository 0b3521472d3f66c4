"""From a cohort folder to an image count checkpoint, and from a checkpoint to each patient's forecast count law under
every arm at every scheduled visit, or to sampled trajectories of lesions (what `mseval forecast image-train`,
`image-laws` and `image-sample` run).

The law table: one row per patient, arm and follow-up visit, with the model's NB2 law of the cumulative NET2 count
from baseline to that visit (`expected_net2` = mu, lesions; `dispersion` = alpha, variance mu + alpha mu^2;
`p_active` = P(at least one NET2 lesion) = 1 - (1 + alpha mu)^(-1/alpha)) and `log_rate_ratio` against the reference
arm for the same patient and visit (the counterfactual contrast; 0 on the reference arm); a law whose expected count
is not finite or exceeds `MAX_EXPECTED` (a degenerate fit) is `estimable` False with a `note`, its numbers empty; a
rate ratio outside the project's estimability rule (`mseval.stats.estimability.assess_ratio`: [0.001, 1000], a boundary
estimate such as an arm term fitted to an arm without lesions) is `estimable` False with a `note`, `log_rate_ratio`
empty and the arm's law kept. Every number is conditional
on the patient's baseline inputs *and on the checkpoint*: it carries no uncertainty of the model's own training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecast.data import split_patients
from forecast.image_count import ImageCountNet, TrainingStateError, collate, fit_image_count, multiscale_geometry
from forecast.image_count_checkpoint import ImageCountMeta, check_cohort, load_image_count, save_image_count
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, READ_CHUNK, check_spacing, cohort_spacing, load_arrays, visit_schedule
from forecast.image_count_sampling import MIN_DISTANCE_MM, exclusion_radius
from mseval.simulate.anatomy import default_spacing
from mseval.errors import InputError
from mseval.stats.estimability import assess_ratio
from mseval.io.cohort import Cohort, read_cohort
from mseval.units import WEEKS_PER_YEAR

LAW_COLUMNS = ("patient_id", "arm", "allocated_arm", "visit", "scheduled_weeks", "expected_net2", "dispersion", "p_active", "log_rate_ratio",
               "reference_arm", "checkpoint", "estimable", "note")
MAX_EXPECTED = 1e4
"""Largest expected cumulative count (lesions) a trajectory is drawn from; beyond it the fit is degenerate."""
TRAINING_STATE = "training_state.pt"
"""File in the output folder holding an unfinished training run's state (`fit_image_count(state_file=...)`): a run started
again into the same folder continues after its last finished epoch; removed once the checkpoint is written."""
SAMPLE_COUNT_COLUMNS = ("patient_id", "arm", "member", "visit", "scheduled_weeks", "net2", "placed", "seed", "checkpoint")
LESION_COLUMNS = ("patient_id", "arm", "member", "lesion", "birth_visit", "x", "y", "z")


def train_image_count(cohort_dir: str | Path, out: str | Path, *, epochs: int = 40, seed: int = 0, val_fraction: float = 0.1,
                      normalization: str = "brain_z", net_options: dict | None = None, workers: int = 1, cache: str | Path | None = None,
                      min_distance_mm: float | None = None, progress: Callable[[str, int, int], None] | None = None) -> ImageCountMeta:
    """Split the cohort's patients (stratified by arm, seeded), read them (`load_arrays`: observed outcomes only), fit
    `ImageCountNet` (each pathway keeps its best held-out epoch) and save the checkpoint into `out` with the training
    and validation patients' fingerprints. progress(stage, done, total): stage "read" per patient, "fit" per epoch.
    workers: processes reading the patients (the same arrays for any number); cache: a folder where each patient's
    arrays are kept once read (`forecast.image_count_cache`: a stopped run does not read them again, and training holds
    a batch in memory, not the training set); the same checkpoint with or without it. Training resumes: every finished
    epoch's state is kept in `out/TRAINING_STATE`, and a run started again into `out` continues from it (the same
    checkpoint as a run never stopped). The multiscale centre trunk's
    smoothing and margin are set in mm from the cohort's voxel size (`forecast.image_count.multiscale_geometry`), and the
    checkpoint records that voxel size and `min_distance_mm` (default `MIN_DISTANCE_MM`), the sampler's default distance
    between lesion centres."""
    from mseval.provenance import training_provenance

    cohort = read_cohort(cohort_dir)
    visits, weeks = visit_schedule(cohort)
    arms = list(cohort.arms["arm"])
    ids = cohort.patient_ids
    fit_ids, val_ids = split_patients(ids, [str(cohort.row(p)["arm"]) for p in ids], val_fraction, seed)
    if not val_ids:
        raise InputError(cohort.root / "manifest.csv", f"--val-fraction {val_fraction:g} leaves no validation patient; the epoch is chosen on them", field="arm")
    inputs = IMAGE_CHANNELS + MASK_CHANNELS
    spacing = cohort_spacing(cohort, ids[0])
    for pid in ids[1:]:  # one grid in mm (the trunk's scales, the checkpoint's voxel size), checked before any patient is read
        check_spacing(cohort, pid, cohort_spacing(cohort, pid), spacing, f"one model trains on one voxel size (resample the cohort); patient {ids[0]!r} has")
    read = (lambda d, n: progress("read", d, n)) if progress else None
    arrays = load_arrays(cohort, list(fit_ids) + list(val_ids), arms, inputs=inputs, normalization=normalization, progress=read, workers=workers,
                         cache=cache)
    train, val = arrays[: len(fit_ids)], arrays[len(fit_ids):]
    options = dict(net_options or {})
    if options.get("centre_trunk", "multiscale") == "multiscale":
        options = multiscale_geometry(spacing) | options
    net = ImageCountNet(len(inputs), len(arms), len(visits), **options)
    state = Path(out) / TRAINING_STATE
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        fit = fit_image_count(net, train, val, epochs=epochs, seed=seed, state_file=state,
                              progress=(lambda e, n, _v: progress("fit", e, n)) if progress else None)
    except TrainingStateError as exc:
        raise InputError(exc.path, exc.reason) from None
    meta = save_image_count(out, net, inputs=inputs, normalization=normalization, arms=arms, visits=visits, weeks=weeks,
                            shape=arrays[0].brain.shape, fit=fit, spacing=spacing,
                            min_distance_mm=MIN_DISTANCE_MM if min_distance_mm is None else min_distance_mm,
                            provenance=training_provenance(cohort, list(fit_ids), list(val_ids)) | {"seed": int(seed), "epochs": int(epochs)})
    state.unlink(missing_ok=True)
    return meta


def _open(cohort_dir: str | Path, checkpoint: str | Path, patients: Sequence[str] | None
          ) -> tuple[ImageCountNet, ImageCountMeta, str, Cohort, list[str], torch.Tensor]:
    """(net, metadata, digest, cohort, patient ids, the trained visit times (V,) in years) after every check."""
    net, meta, digest = load_image_count(checkpoint)
    cohort = read_cohort(cohort_dir)
    ids = list(cohort.patient_ids if patients is None else patients)
    check_cohort(meta, cohort, ids)
    return net, meta, digest, cohort, ids, torch.tensor([w / WEEKS_PER_YEAR for w in meta.weeks], dtype=torch.float32)


def forecast_laws(cohort_dir: str | Path, checkpoint: str | Path, *, patients: Sequence[str] | None = None, reference_arm: str | None = None,
                  progress: Callable[[int, int], None] | None = None, workers: int = 1, cache: str | Path | None = None) -> pd.DataFrame:
    """The law table (`LAW_COLUMNS`, module docstring) for every (given) patient of the cohort under every arm the
    checkpoint knows, at its scheduled visits. Every check (`check_cohort`) runs before any forecast."""
    net, meta, digest, cohort, ids, years = _open(cohort_dir, checkpoint, patients)
    ref = reference_arm or meta.arms[0]
    if ref not in meta.arms:
        raise InputError(None, f"--reference-arm {ref!r} was never seen by the checkpoint (arms: {', '.join(meta.arms)})", field="reference_arm")
    arrays = load_arrays(cohort, ids, list(meta.arms), inputs=meta.inputs, with_targets=False, normalization=meta.normalization, progress=progress,
                         workers=workers, cache=cache)
    rows = []
    with torch.no_grad():
        for lo in range(0, len(arrays), 8):
            part = arrays[lo: lo + 8]
            b = collate(part)
            yrs = years.expand(len(part), -1)
            laws = [net(b["cond"], b["brain"], b["tab"], torch.full_like(b["arm"], k), yrs, centres=False)[:2] for k in range(len(meta.arms))]
            log_ref = laws[meta.arms.index(ref)][0]
            for k, arm in enumerate(meta.arms):
                mu, alpha = laws[k][0].exp().numpy(), laws[k][1].exp().numpy()
                lrr = (laws[k][0] - log_ref).numpy()
                for j, p in enumerate(part):
                    for v, name in enumerate(meta.visits):
                        m, a = float(mu[j, v]), float(alpha[j, v])
                        ok = bool(np.isfinite(m) and m <= MAX_EXPECTED and np.isfinite(lrr[j, v]))
                        law = (m, a, 1.0 - (1.0 + a * m) ** (-1.0 / a), float(lrr[j, v])) if ok else (np.nan,) * 4
                        note = "" if ok else f"degenerate count law (expected count {m:.3g}); not estimable"
                        if ok and arm != ref:
                            ratio_ok, why = assess_ratio(float(np.exp(lrr[j, v])))
                            if not ratio_ok:
                                ok, law, note = False, (*law[:3], np.nan), f"rate ratio vs {ref} not estimable: {why}"
                        rows.append((ids[lo + j], arm, meta.arms[p.arm], name, meta.weeks[v], *law, ref, digest[:12], ok, note))
    return pd.DataFrame(rows, columns=list(LAW_COLUMNS))


def forecast_trajectories(cohort_dir: str | Path, checkpoint: str | Path, *, samples: int, seed: int = 0, min_distance_mm: float | None = None,
                          patients: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None,
                          arrays: Sequence | None = None, workers: int = 1, cache: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`samples` members per patient and arm, each one coherent trajectory (`forecast.image_count_sampling.draw_trajectory`:
    one gamma frailty, Poisson increments per interval, the lesions' centres drawn in birth order from the arm's centre
    law, kept `min_distance_mm` apart per axis: by default the checkpoint's, else `MIN_DISTANCE_MM`). Returns (counts: `SAMPLE_COUNT_COLUMNS`, one row per member and visit, net2
    the cumulative count drawn and placed how many of them found room; lesions: `LESION_COLUMNS`, one row per placed
    lesion with its voxel centre and the first visit it is present at). Member m of (patient, arm) uses the seed
    `mseval.seeding.derive_seed(seed, patient, arm, m)`: the same numbers for any patient subset, order or batch.
    arrays: the patients' inputs already read (`load_arrays` with the checkpoint's inputs and normalization, in the
    order of `patients`), so that a bench reading them once does not read them again. workers > 1: the patients are read
    `workers x READ_CHUNK` at a time in that many processes (memory holds one such block, never the cohort); the same
    numbers for any number of workers. cache: as `load_arrays`'."""
    from forecast.image_count import logits_for
    from forecast.image_count_sampling import draw_trajectory
    from mseval.seeding import derive_seed

    if samples < 1:
        raise InputError(None, "--samples must be at least 1", field="samples")
    net, meta, digest, cohort, ids, years = _open(cohort_dir, checkpoint, patients)
    distance = min_distance_mm if min_distance_mm is not None else meta.min_distance_mm if meta.min_distance_mm is not None else MIN_DISTANCE_MM
    if not (np.isfinite(distance) and distance >= 0):
        raise InputError(None, f"--min-distance-mm must be a finite distance >= 0 (mm), got {distance!r}", field="min_distance_mm")
    radius = exclusion_radius(distance, meta.spacing if meta.spacing is not None else default_spacing(meta.shape))  # None: the 32^3 MNI grid
    counts, lesions = [], []
    if arrays is not None and len(arrays) != len(ids):
        raise ValueError(f"{len(arrays)} preloaded patients for {len(ids)} patient ids")
    def patients_in_order():  # noqa: ANN202 - the preloaded arrays, or one block of patients read at a time
        if arrays is not None:
            yield from arrays
            return
        block = workers * READ_CHUNK if workers > 1 else 1
        for lo in range(0, len(ids), block):
            yield from load_arrays(cohort, ids[lo: lo + block], list(meta.arms), inputs=meta.inputs, with_targets=False,
                                   normalization=meta.normalization, workers=workers, cache=cache)

    for n, (pid, p) in enumerate(zip(ids, patients_in_order())):
        b = collate([p])
        with torch.no_grad():
            for k, arm in enumerate(meta.arms):
                a = torch.full_like(b["arm"], k)
                log_mu, log_alpha, logits = net(b["cond"], b["brain"], b["tab"], a, years[None])
                lg = logits_for(logits, a)[0].numpy()
                mu, alpha = log_mu[0].exp().numpy(), float(log_alpha[0, 0].exp())
                if not (np.isfinite(mu).all() and mu[-1] <= MAX_EXPECTED):
                    raise InputError(Path(checkpoint) / "weights.pt", f"the count law gives {mu[-1]:.3g} expected lesions for patient {pid!r} under "
                                     f"arm {arm!r} by {meta.visits[-1]}: a degenerate fit (too few training patients for its inputs?)", field="count_law")
                for m in range(samples):
                    s = derive_seed(seed, pid, arm, m)
                    tr = draw_trajectory(mu, alpha, lg, s, min_distance=radius)
                    for v, name in enumerate(meta.visits):
                        counts.append((pid, arm, m, name, meta.weeks[v], int(tr.counts[v]), int(min(tr.placed, tr.counts[v])), s, digest[:12]))
                    lesions += [(pid, arm, m, j, meta.visits[int(tr.birth[j])], *map(int, tr.centres[j])) for j in range(tr.placed)]
        if progress:
            progress(n + 1, len(ids))
    return pd.DataFrame(counts, columns=list(SAMPLE_COUNT_COLUMNS)), pd.DataFrame(lesions, columns=list(LESION_COLUMNS))


def write_trajectories(out: str | Path, counts: pd.DataFrame, lesions: pd.DataFrame, checkpoint: str | Path) -> None:
    """An `image-sample` folder: counts.csv, lesions.csv (`forecast_trajectories`' tables, each written atomically) and
    provenance.json (`mseval.provenance`: the checkpoint's training and validation patients under its short digest, which
    `image-render` copies into every visit's store so that a report can tell held-out from in-sample)."""
    from mseval.io.atomic import write_csv_atomic, write_json_atomic
    from mseval.provenance import PROVENANCE_FILE

    _, meta, digest = load_image_count(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(counts, out / "counts.csv")
    write_csv_atomic(lesions, out / "lesions.csv")
    # a fresh document (not added to one a previous sampling into this folder left): only this checkpoint drew these
    write_json_atomic({"format": "mseval-forecast-provenance", "checkpoints": {digest[:12]: dict(meta.provenance)}}, out / PROVENANCE_FILE)


__all__ = ["LAW_COLUMNS", "LESION_COLUMNS", "SAMPLE_COUNT_COLUMNS", "forecast_laws", "forecast_trajectories", "train_image_count", "write_trajectories"]
