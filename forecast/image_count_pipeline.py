"""From a cohort folder to an image count checkpoint, and from a checkpoint to each patient's forecast count law under
every arm at every scheduled visit (what `mseval forecast image-train` and `image-laws` run).

The law table: one row per patient, arm and follow-up visit, with the model's NB2 law of the cumulative NET2 count
from baseline to that visit (`expected_net2` = mu, lesions; `dispersion` = alpha, variance mu + alpha mu^2;
`p_active` = P(at least one NET2 lesion) = 1 - (1 + alpha mu)^(-1/alpha)) and `log_rate_ratio` against the reference
arm for the same patient and visit (the counterfactual contrast; 0 on the reference arm). Every number is conditional
on the patient's baseline inputs *and on the checkpoint*: it carries no uncertainty of the model's own training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecast.data import split_patients
from forecast.image_count import ImageCountNet, collate, fit_image_count
from forecast.image_count_checkpoint import ImageCountMeta, check_cohort, load_image_count, save_image_count
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays, visit_horizons
from mseval.errors import InputError
from mseval.io.cohort import Cohort, read_cohort
from mseval.units import WEEKS_PER_YEAR

LAW_COLUMNS = ("patient_id", "arm", "allocated_arm", "visit", "scheduled_weeks", "expected_net2", "dispersion", "p_active", "log_rate_ratio",
               "reference_arm", "checkpoint")


def schedule(cohort: Cohort) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(follow-up visit names, their scheduled weeks) in schedule order; InputError without visits.csv."""
    names = visit_horizons(cohort)
    v = cohort.visits[cohort.visits["visit_index"] > 0].drop_duplicates("visit").set_index("visit")["scheduled_weeks"]
    return names, tuple(float(v[n]) for n in names)


def train_image_count(cohort_dir: str | Path, out: str | Path, *, epochs: int = 40, seed: int = 0, val_fraction: float = 0.1,
                      normalization: str = "brain_z", net_options: dict | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> ImageCountMeta:
    """Split the cohort's patients (stratified by arm, seeded), read them (`load_arrays`: observed outcomes only), fit
    `ImageCountNet` (each pathway keeps its best held-out epoch) and save the checkpoint into `out` with the training
    and validation patients' fingerprints. progress(stage, done, total): stage "read" per patient, "fit" per epoch."""
    from mseval.provenance import training_provenance

    cohort = read_cohort(cohort_dir)
    visits, weeks = schedule(cohort)
    arms = list(cohort.arms["arm"])
    ids = cohort.patient_ids
    fit_ids, val_ids = split_patients(ids, [str(cohort.row(p)["arm"]) for p in ids], val_fraction, seed)
    if not val_ids:
        raise InputError(cohort.root / "manifest.csv", f"--val-fraction {val_fraction:g} leaves no validation patient; the epoch is chosen on them", field="arm")
    inputs = IMAGE_CHANNELS + MASK_CHANNELS
    read = (lambda d, n: progress("read", d, n)) if progress else None
    arrays = load_arrays(cohort, list(fit_ids) + list(val_ids), arms, inputs=inputs, normalization=normalization, progress=read)
    train, val = arrays[: len(fit_ids)], arrays[len(fit_ids):]
    net = ImageCountNet(len(inputs), len(arms), len(visits), **(net_options or {}))
    fit = fit_image_count(net, train, val, epochs=epochs, seed=seed,
                          progress=(lambda e, n, _v: progress("fit", e, n)) if progress else None)
    return save_image_count(out, net, inputs=inputs, normalization=normalization, arms=arms, visits=visits, weeks=weeks,
                            shape=arrays[0].brain.shape, fit=fit,
                            provenance=training_provenance(cohort, list(fit_ids), list(val_ids)) | {"seed": int(seed), "epochs": int(epochs)})


def forecast_laws(cohort_dir: str | Path, checkpoint: str | Path, *, patients: Sequence[str] | None = None, reference_arm: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The law table (`LAW_COLUMNS`, module docstring) for every (given) patient of the cohort under every arm the
    checkpoint knows, at its scheduled visits. Every check (`check_cohort`) runs before any forecast."""
    net, meta, digest = load_image_count(checkpoint)
    cohort = read_cohort(cohort_dir)
    ids = list(cohort.patient_ids if patients is None else patients)
    check_cohort(meta, cohort, ids)
    ref = reference_arm or meta.arms[0]
    if ref not in meta.arms:
        raise InputError(None, f"--reference-arm {ref!r} was never seen by the checkpoint (arms: {', '.join(meta.arms)})", field="reference_arm")
    arrays = load_arrays(cohort, ids, list(meta.arms), inputs=meta.inputs, with_targets=False, normalization=meta.normalization, progress=progress)
    years = torch.tensor([w / WEEKS_PER_YEAR for w in meta.weeks], dtype=torch.float32)
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
                        rows.append((ids[lo + j], arm, meta.arms[p.arm], name, meta.weeks[v], m, a, 1.0 - (1.0 + a * m) ** (-1.0 / a),
                                     float(lrr[j, v]), ref, digest[:12]))
    return pd.DataFrame(rows, columns=list(LAW_COLUMNS))


__all__ = ["LAW_COLUMNS", "forecast_laws", "schedule", "train_image_count"]
