"""`make checkpoint`: rebuild the shipped demo checkpoint (`forecast/checkpoints/tiny_centre`) from scratch.

The recipe (issue 13's leak-free protocol; every trial from `mseval simulate`, 32^3):
1. TRAIN: a pool trial of 400 patients per arm (2,400 patients, seed 2030); the checkpoint holds out
   10% of it (its `val_ids`) to choose the count head's epoch on observed counts;
2. train `forecast/configs/tiny_centre.json` for its `steps` on TRAIN (the count head and the location
   network are fitted at step 0, on observed NET2 counts and lesion centres);
3. VALIDATION: a separate trial (seed 2028, 40 per arm); the sampler's guidance is chosen on 60 of its
   patients (10 per arm, 6 samples each, DDIM-6) from `--guidance-grid` (`default_guidance_grid`: only 1 for tiny_centre, whose
   count the guidance cannot change; 1, 2, 3 otherwise) by the lowest mean fair CRPS of the allocated-arm forecasts against the observed
   NET2 counts (`forecast.evaluate.select_settings`; truth.csv is never read); then, with that sampler, the
   mask threshold from (0.5 ... 0.95) by the lowest mean fair CRPS of the forecast NET2 lesion volume against
   the observed NET2 volume (`forecast.evaluate.select_threshold`; observed masks only);
4. export the EMA weights with the chosen guidance and threshold as the config's defaults, the tuning table
   (`tuning.json`: the exported checkpoint's id, the training run's id it was tuned with, the validation
   trial by its seed, never a path) and the provenance (training and validation patients) to OUT.

Nothing here reads a test trial: the figures of bench/RESULTS_forecast.md come from a third trial
(seed 2027) sampled once with the exported checkpoint. Steps already done in `--work` are reused
(the pool, the validation trial, a training checkpoint at the configured steps).

    .venv/bin/python -m forecast.release --work build/checkpoint

(`--config tiny_count --guidance-grid 2,3,4 --out DIR` rebuilds the earlier count-only model.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHIPPED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "tiny_centre"
"""The shipped demo checkpoint (a folder; `make checkpoint` rebuilds it)."""

POOL_SEED, POOL_PER_ARM = 2030, 400
VALIDATION_SEED, VALIDATION_PER_ARM = 2028, 40


def _simulate(folder: Path, per_arm: int, seed: int, workers: int, shape: tuple[int, int, int] = (32, 32, 32)) -> None:
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    if (folder / "manifest.csv").is_file():
        return
    print(f"simulating {folder} ({6 * per_arm} patients, seed {seed})", flush=True)
    simulate_trial(folder, TrialConfig(patients_per_arm=per_arm, shape=shape, seed=seed), workers=workers)


def default_guidance_grid(config: str) -> tuple[float, ...]:
    """The guidances `build` chooses from: only 1 (the conditional model) for a centre-conditioned config, whose count
    comes from its count head, so that the count criterion cannot tell guidance values apart (the shipped tiny_centre's
    tuning.json: guidance 1, 2 and 3 gave bit-identical rows, and ties go to the first: a knob that changes nothing is
    not tuned); (1, 2, 3) otherwise."""
    from forecast.config import ForecastConfig

    return (1.0,) if ForecastConfig.load(config).centre_map else (1.0, 2.0, 3.0)


def build(out: Path, work: Path, *, config: str = "tiny_centre", guidance_grid: tuple[float, ...] | None = None,
          tune_patients: int = 60, tune_samples: int = 6, sample_steps: int = 6, workers: int = 2, threads: int = 2,
          threshold_grid: tuple[float, ...] | None = None) -> Path:
    """Run the recipe (module docstring); returns OUT. threshold_grid: default `forecast.evaluate.THRESHOLD_GRID`."""
    import torch

    from forecast.checkpoint import export_checkpoint, load_checkpoint, weights_path
    from forecast.config import ForecastConfig
    from forecast.evaluate import THRESHOLD_GRID, select_settings, select_threshold, tuning_for_checkpoint
    from forecast.train import train
    from mseval.io.atomic import write_json_atomic
    from mseval.io.cohort import read_cohort

    torch.set_num_threads(threads)
    cfg = ForecastConfig.load(config)
    pool, val, run = work / "pool", work / "validation", work / "train"
    _simulate(pool, POOL_PER_ARM, POOL_SEED, workers)
    _simulate(val, VALIDATION_PER_ARM, VALIDATION_SEED, workers)
    t0 = time.perf_counter()
    def progress(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)

    if weights_path(run).is_file():
        ck = load_checkpoint(run)
        if ck.step < cfg.steps:
            train(pool, cfg, run, resume=True, device="cpu", progress=progress)
    else:
        train(pool, cfg, run, device="cpu", progress=progress)
    ckpt = load_checkpoint(run)
    print(f"trained {ckpt.step} steps ({(time.perf_counter() - t0) / 60:.1f} min this call)", flush=True)
    vc = read_cohort(val)
    ids = _stratified(vc, tune_patients)
    tuning = select_settings(ckpt, val, work / "tuning", patients=ids, guidance=list(guidance_grid or default_guidance_grid(config)), steps=[sample_steps],
                             samples=tune_samples, seed=1, device="cpu")
    print(tuning.summary(), flush=True)
    c = tuning.chosen
    settings = tuning.settings()
    thr = select_threshold(ckpt, val, work / "tuning_threshold", settings=settings, patients=ids, grid=threshold_grid or THRESHOLD_GRID,
                           samples=tune_samples, seed=1, device="cpu")
    print(thr.summary(), flush=True)
    tuned_on = f"simulated trial seed {VALIDATION_SEED}, {len(ids)} of its patients"
    exported = export_checkpoint(ckpt, out, config=ckpt.config.with_(guidance=settings.guidance, sample_steps=settings.steps,
                                                                     sampler=settings.sampler, count_tries=settings.count_tries,
                                                                     mask_threshold=float(thr.chosen)),
                                 provenance={"tuned_on": {"cohort": tuned_on,
                                                          "patients": list(ids), "criterion": tuning.criterion, "chosen": c,
                                                          "mask_threshold": {"criterion": thr.criterion, "chosen": float(thr.chosen)}},
                                             "trained_on": f"simulated trial seed {POOL_SEED}, {6 * POOL_PER_ARM} patients at 32^3 "
                                                           f"({len(ckpt.train_ids)} training, {len(ckpt.val_ids)} held out to choose the count head's and the location network's epochs)"})
    # tuning.json names the exported checkpoint (tuned with the training run's, same EMA weights) and no path of this machine
    write_json_atomic(tuning_for_checkpoint({**tuning.to_dict(), "mask_threshold": thr.to_dict()}, exported.id, tuned_on), out / "tuning.json")
    print(f"exported {exported.id} to {out}", flush=True)
    return out


def _stratified(cohort, n: int) -> list[str]:  # noqa: ANN001 - a Cohort
    """The first n // arms patients of each arm, in cohort order (all when n covers them)."""
    arms = list(cohort.manifest["arm"])
    k = max(1, n // max(1, len(set(arms))))
    seen: dict[str, int] = {}
    out = []
    for pid, a in zip(cohort.patient_ids, arms):
        if seen.get(a, 0) < k:
            out.append(pid)
            seen[a] = seen.get(a, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=SHIPPED_CHECKPOINT)
    ap.add_argument("--work", type=Path, default=Path("build/checkpoint"))
    ap.add_argument("--config", default="tiny_centre")
    ap.add_argument("--guidance-grid", default=None, help="guidances to choose from on the validation trial (default: 1 for a centre-conditioned "
                    "config, 1,2,3 otherwise: default_guidance_grid; tiny_count: 2,3,4; at guidance 1 its half-trained samples held 1.5 "
                    "lesions where 0 were asked for)")
    ap.add_argument("--tune-patients", type=int, default=60)
    ap.add_argument("--tune-samples", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    build(a.out, a.work, config=a.config, guidance_grid=tuple(float(g) for g in a.guidance_grid.split(",")) if a.guidance_grid else None,
          tune_patients=a.tune_patients, tune_samples=a.tune_samples, workers=a.workers, threads=a.threads)


if __name__ == "__main__":
    main()
