"""`mseval simulate-forecasts --kind nb2-bootstrap`: a forecast store of K count-level NB2 forecasters.

The forecasters (`mseval.stats.nb2_forecaster`): NB2 regressions of the NET2 count on arm +
log1p(gd_count) + age, trained on the OBSERVED counts of a training cohort (`--train-cohort`), K of
them on bootstrap resamples of its patients within arms (K = 1: the training patients as they are).
Every patient of the cohort gets, under every arm, `samples` draws from each forecaster's predictive
NB2 law, placed as lesions the way the simulator places them (so a simulated cohort is needed, as for
the other simulated forecasters); the block holds K x samples masks, forecaster k's at positions
k*samples .. (k+1)*samples - 1, and the index's `forecaster` column says so.

Provenance: store.json `forecasters` holds each forecaster's record (training cohort, fingerprint,
resample, coefficients); provenance.json records the training patients under the store's one
checkpoint id, so `mseval effects` finds the training trial (projections) and refuses its patients as
held-out ones. Seeds derive from (seed, forecaster, patient, arm, sample): results do not depend on
worker count or order, and a rerun resumes where the store stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mseval.errors import InputError, SimulationError
from mseval.io.cohort import read_cohort
from mseval.io.store import ForecastStore, record_forecasters
from mseval.parallel import run_jobs
from mseval.seeding import derive_seed
from mseval.stats.nb2_forecaster import FORMULA, NB2Forecaster, fit_forecaster_family

KIND = "nb2-bootstrap"


def checkpoint_id(train_fingerprint: str, forecasters: int, seed: int) -> str:
    """The store's checkpoint id: the family, its training cohort and its resample seed."""
    return f"{KIND}-{train_fingerprint}-k{forecasters}-s{seed}"


def train_family(train_dir: str | Path, forecasters: int, *, reference: str, seed: int, connectivity: int = 26,
                 min_volume_mm3: float = 3.0) -> tuple[list[NB2Forecaster], dict]:
    """The K forecasters fitted on the observed counts of the training cohort, and its provenance
    record (`mseval.provenance.training_provenance`: cohort fingerprint, name, training patients)."""
    from mseval.lesions.observed import analysis_table
    from mseval.provenance import cohort_fingerprint, training_provenance

    tc = read_cohort(train_dir)
    table = analysis_table(tc, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
    fp = cohort_fingerprint(tc.manifest)
    family = fit_forecaster_family(table, forecasters, reference=reference, seed=seed, bootstrap=forecasters > 1,
                                   trained_on=f"{Path(train_dir).name} (cohort fingerprint {fp})")
    return family, training_provenance(tc, list(table["patient_id"].astype(str)), [])


def _forecast_patient(args: tuple) -> int:
    from mseval.simulate.forecasters import _baseline_field
    from mseval.simulate.lesions import add_net2_lesions

    out, family, feats, arms, samples, seed, ck, placement, paths = args
    pid = str(feats["patient_id"].iloc[0])
    base, base_ids, affine = _baseline_field(paths)
    store = ForecastStore.appender(out)
    for arm in arms:
        masks = np.zeros((len(family) * samples, *base.labels.shape), dtype=np.uint8)
        seeds, who = [], []
        for f in family:
            mu = float(f.mean(feats, arm)[0])
            for s in range(samples):
                sd = derive_seed(seed, KIND, f.forecaster, pid, arm, s)
                rng = np.random.default_rng(sd)
                lam = mu * rng.gamma(1.0 / f.alpha, f.alpha) if f.alpha > 0 else mu
                n = int(rng.poisson(lam))
                lf = base.copy()
                try:
                    added = add_net2_lesions(lf, n, rng, baseline_ids=base_ids, **placement)
                except RuntimeError as exc:
                    raise SimulationError(None, f"patient {pid}, arm {arm}, forecaster {f.forecaster}, sample {s}: {exc}; the volume is too small "
                                                "for this forecast") from None
                masks[len(seeds)] = lf.mask([lid for lid, _ in added])
                seeds.append(sd)
                who.append(f.forecaster)
        sampler = {"forecaster": KIND, "forecasters": len(family), "samples_per_forecaster": samples, "seed": seed, "formula": FORMULA}
        store.write_block(pid, arm, masks, affine, seeds, checkpoint=ck, sampler=sampler, forecaster=who)
    return len(arms)


def write_nb2_family_store(cohort_dir: str | Path, train_dir: str | Path, out: str | Path, *, forecasters: int, samples: int, seed: int = 0,
                           arms: Sequence[str] | None = None, workers: int = 1,
                           progress: Callable[[int, int], None] | None = None) -> ForecastStore:
    """Write (or resume) a store of K NB2 forecasters' samples for every patient x arm of a simulated cohort."""
    from mseval.lesions.observed import analysis_table
    from mseval.provenance import write_store_provenance
    from mseval.simulate.forecasters import _baseline_paths, _placement, _simulation_params

    if forecasters < 1 or samples < 1:
        raise InputError(None, "--forecasters and --samples must be at least 1", field="forecasters")
    cohort = read_cohort(cohort_dir)
    sim = _simulation_params(cohort)
    all_arms = list(cohort.arms["arm"])
    arms = list(arms) if arms else all_arms
    unknown = [a for a in arms if a not in all_arms]
    if unknown:
        raise InputError(Path(cohort_dir) / "arms.csv", f"unknown arm {unknown[0]!r} (arms: {', '.join(all_arms)})", field="arm")
    family, prov = train_family(train_dir, forecasters, reference=cohort.reference_arm, seed=seed)
    missing = [a for a in arms if a not in family[0].levels]
    if missing:
        raise InputError(Path(train_dir) / "arms.csv", f"the training cohort has no patient on arm {missing[0]!r}: its forecasters cannot "
                                                       "forecast it", field="arm")
    feats = analysis_table(cohort, require_observed=False)
    ck = checkpoint_id(prov["cohort_fingerprint"], forecasters, seed)
    store = ForecastStore.create(out)
    record_forecasters(out, {f.forecaster: f.to_dict() for f in family})
    write_store_provenance(out, ck, prov)
    todo = []
    for pid in cohort.patient_ids:
        miss = [a for a in arms if (pid, a) not in store]
        if miss:
            todo.append((str(out), family, feats[feats["patient_id"] == pid].reset_index(drop=True), miss, samples, seed, ck, _placement(sim),
                         _baseline_paths(cohort, sim, pid)))
    try:
        run_jobs(_forecast_patient, todo, workers, progress)
    finally:
        ForecastStore.create(out).flush()
    return ForecastStore.open(out)


def family_summary(out: str | Path) -> pd.DataFrame:
    """One row per forecaster of a store written here: id, resample, its arm coefficients' rate ratios."""
    meta = json.loads((Path(out) / "store.json").read_text())
    rows = []
    for k, rec in (meta.get("forecasters") or {}).items():
        co = rec.get("coefficients", {})
        rows.append({"forecaster": int(k), "resample": rec.get("resample"), "alpha": rec.get("alpha"),
                     **{f"rr_{n}": float(np.exp(v)) if v is not None else 0.0 for n, v in co.items() if n not in ("Intercept", "np.log1p(gd_count)", "age")}})
    return pd.DataFrame(rows)
