"""The second half of `make checkpoint`: build the shipped image forecaster (`forecast/checkpoints/image_count`) from
scratch, after `forecast.release` has rebuilt the shape decoder `tiny_centre` it renders with.

What it is, in words: an image count model (`forecast.image_count.ImageCountNet`: an NB2 count law per scheduled
interval on learned image summaries, the tabular count features, the arm and arm x age; an arm-specific lesion-centre
intensity from multiscale image features) whose sampled trajectories (count, centres, birth visits) are rendered into
masks by the centre-conditioned diffusion decoder `tiny_centre` (shapes only: it neither moves lesions nor sets their
number). The recipe is r13's of `bench/RESULTS_forecast.md` (issue 21), observed outcomes only:

1. TRAIN: its own trial of 100 patients per arm (600, seed 2032, 32^3); N4 + WhiteStripe intensity normalisation
   (per patient, hence per site); `train_image_count` with 10% of each arm held out to choose each pathway's epoch
   (40 epochs; centre trunk multiscale, 12 channels; count trunk gated, 8 detector maps; linear NB2 head with flexible count terms; seed 0);
2. VALIDATION: the trial `forecast.release` tunes on (seed 2028, 40 per arm); 60 of its patients (10 per arm), 8
   trajectories each under the allocated arm (`forecast_trajectories`, seed 1), rendered once with the decoder's
   probabilities kept; the decoder's voxel threshold is chosen from `forecast.evaluate.THRESHOLD_GRID` as the one
   whose rendered lesions' mean volume at the last visit is closest to the observed NET2 lesions'
   (`forecast.image_count_tuning.select_render_threshold`; the threshold sets the size, nothing else);
3. export: the image count checkpoint with `render.json` (the decoder's id, the chosen threshold, the labels, the
   tuning table and what it was tuned on). `mseval forecast image-render --forecaster OUT` takes its threshold and
   labels from there.

Steps already done in `--work` are reused (the trials, each patient's preprocessed arrays in `work/arrays`, the trained
model, the rendered validation members), so a stopped build resumes. Nothing here reads truth.csv or a test trial.

    .venv/bin/python -m forecast.image_release --work build/checkpoint
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forecast.release import SHIPPED_CHECKPOINT, VALIDATION_PER_ARM, VALIDATION_SEED, _simulate, _stratified

SHIPPED_IMAGE_CHECKPOINT = Path(__file__).parent / "checkpoints" / "image_count"
"""The shipped image forecaster (a folder; `make checkpoint` rebuilds it)."""

RENDER_FILE = "render.json"
"""In an image count checkpoint: how its trajectories are rendered (decoder id, tuned threshold, labels)."""

TRAIN_SEED, TRAIN_PER_ARM = 2032, 100
RECIPE: dict[str, Any] = {"epochs": 40, "seed": 0, "normalization": "n4_whitestripe",
                          "net": {"hidden": 12, "count_hidden": 8, "count_trunk": "gated", "count_head": "linear", "centre_trunk": "multiscale",
                          "count_terms": "flexible"}}
"""r13's recipe (bench/RESULTS_forecast.md, issue 21), with the flexible count terms since r20 (chosen by the held-out count
likelihood on TRAIN's 60 held-out patients, the criterion that chooses the epochs: 1.3127 vs 1.3184 nats per visit)."""


def _log(t0: float, what: str) -> None:
    print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {what}", flush=True)


def build_image(out: Path, work: Path, *, renderer: Path = SHIPPED_CHECKPOINT, train_per_arm: int = TRAIN_PER_ARM,
                train_seed: int = TRAIN_SEED, validation_per_arm: int = VALIDATION_PER_ARM, validation_seed: int = VALIDATION_SEED,
                shape: tuple[int, int, int] = (32, 32, 32), epochs: int = RECIPE["epochs"], net: dict[str, Any] | None = None,
                normalization: str = RECIPE["normalization"], val_fraction: float = 0.1,
                tune_patients: int = 60, tune_samples: int = 8, labels: str = "arm-count", grid: Sequence[float] | None = None,
                workers: int = 2, threads: int = 2) -> dict[str, Any]:
    """Run the recipe (module docstring; its arguments are the recipe's, smaller in the tests) and return render.json's
    content. OUT is replaced only at the end, whole; a stopped build resumes from what `work` holds."""
    import torch

    from forecast.checkpoint import load_checkpoint
    from forecast.evaluate import THRESHOLD_GRID
    from forecast.image_count_checkpoint import META, load_image_count
    from forecast.image_count_pipeline import forecast_trajectories, train_image_count
    from forecast.image_count_render import render_trajectories
    from forecast.image_count_tuning import select_render_threshold
    from mseval.io.atomic import write_csv_atomic, write_json_atomic
    from mseval.io.cohort import read_cohort

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_dir, val_dir, model_dir = work / "image_train", work / "validation", work / "image_count"
    _simulate(train_dir, train_per_arm, train_seed, workers, shape)
    _simulate(val_dir, validation_per_arm, validation_seed, workers, shape)
    if not (model_dir / META).is_file():
        _log(t0, f"training the image count model on {train_dir} ({epochs} epochs)")
        train_image_count(train_dir, model_dir, epochs=epochs, seed=RECIPE["seed"], normalization=normalization, val_fraction=val_fraction,
                          net_options=net or RECIPE["net"], workers=workers, cache=work / "arrays",
                          progress=lambda stage, d, n: _log(t0, f"{stage} {d}/{n}") if stage == "fit" or d % 60 == 0 or d == n else None)
    _, meta, digest = load_image_count(model_dir)
    _log(t0, f"image count model {digest[:12]}: count epoch {meta.fit.get('best_count_epoch')}, centre epoch {meta.fit.get('best_centre_epoch')}")
    decoder = load_checkpoint(renderer)
    vc = read_cohort(val_dir)
    ids = _stratified(vc, tune_patients)
    samples_dir = work / f"image_tune_{digest[:12]}_{len(ids)}x{tune_samples}"  # the model and the tuning draws it was made with
    render_dir = samples_dir / f"render_{decoder.id.replace(':', '_')}_{labels}"
    if not (samples_dir / "lesions.csv").is_file():
        counts, lesions = forecast_trajectories(val_dir, model_dir, samples=tune_samples, seed=1, patients=ids, workers=workers,
                                                cache=work / "arrays")
        allocated = {p: str(vc.row(p)["arm"]) for p in ids}
        samples_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(counts[counts["arm"] == counts["patient_id"].map(allocated)], samples_dir / "counts.csv")
        write_csv_atomic(lesions[lesions["arm"] == lesions["patient_id"].map(allocated)], samples_dir / "lesions.csv")
    _log(t0, f"rendering {len(ids)} validation patients x {tune_samples} members with {decoder.id}")
    render_trajectories(val_dir, samples_dir, renderer, render_dir, save_prob=True, labels=labels,
                        progress=lambda d, n: _log(t0, f"rendered {d}/{n}") if d % 10 == 0 or d == n else None)
    tuning = select_render_threshold(val_dir, render_dir, grid or THRESHOLD_GRID)
    print(tuning.summary(), flush=True)
    terms = " (quadratic terms, a dispersion model)" if meta.net.get("count_terms", "linear") == "flexible" else ""
    render = {"description": f"image count model {digest[:12]} (NB2 count law on learned image summaries + tabular features{terms} + arm; "
                             f"arm-specific image centre intensity) + centre-conditioned diffusion shape decoder {decoder.id}",
              "renderer": decoder.id, "mask_threshold": tuning.chosen, "labels": labels, "steps": int(decoder.config.sample_steps),
              "trajectories_checkpoint": digest[:12],
              "tuned_on": {"cohort": f"simulated trial seed {validation_seed}, {len(ids)} of its patients ({tune_samples} trajectories each, "
                                     "allocated arm, trajectory seed 1)", "patients": list(ids), **tuning.to_dict()},
              "trained_on": f"simulated trial seed {train_seed}, {6 * train_per_arm} patients at {'x'.join(map(str, shape))} "
                            f"({meta.fit.get('n_train')} training, {meta.fit.get('n_val')} held out to choose the epochs)",
              "build_minutes": round((time.perf_counter() - t0) / 60, 1)}
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(model_dir, staged)
    write_json_atomic(render, staged / RENDER_FILE)
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)
    _log(t0, f"exported to {out}")
    return render


def read_render_settings(checkpoint: str | Path) -> dict[str, Any] | None:
    """render.json of an image count checkpoint, or None when it has none (a bare `image-train` output)."""
    path = Path(checkpoint) / RENDER_FILE
    if not path.is_file():
        return None
    from mseval.errors import InputError

    try:
        doc = json.loads(path.read_text())
        float(doc["mask_threshold"]), str(doc["renderer"]), str(doc["labels"]), str(doc["trajectories_checkpoint"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"not a render settings file written by `make checkpoint` ({e.__class__.__name__}: {e})") from None
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=SHIPPED_IMAGE_CHECKPOINT)
    ap.add_argument("--work", type=Path, default=Path("build/checkpoint"))
    ap.add_argument("--renderer", type=Path, default=SHIPPED_CHECKPOINT, help="the centre-conditioned decoder (default: the shipped tiny_centre, "
                    "which `make checkpoint` rebuilds first)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    build_image(a.out, a.work, renderer=a.renderer, workers=a.workers, threads=a.threads)


if __name__ == "__main__":
    main()
