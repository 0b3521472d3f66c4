"""Forecast quality of the `tiny` model on the CPU, end to end (issues 4 and 13).

Leak-free protocol (`--protocol`, issue 13):
1. three simulated trials at 32^3: TRAIN (seed 2026), VALIDATION (seed --val-seed) and TEST
   (seed --heldout-seed), each --patients-per-arm per arm (simulated when missing);
2. train a config on TRAIN for at most N minutes (or its steps), checkpointing into OUT/ckpt;
3. choose the sampler settings on VALIDATION from --guidance-grid x --steps-grid x --sampler-grid by
   the lowest mean fair count CRPS against the observed NET2 counts (allocated arm; truth.csv is
   not used: `forecast.evaluate.select_settings`);
4. sample TEST once with the choice (allocated arm, S samples) and score it beside the true-law
   oracle, the observable oracle and the NB2 baseline fitted on TRAIN; OUT/EVAL/summary.json holds
   the scores, the references, the tuning table and what each step used (`protocol`).

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_quality.py --protocol --out /tmp/quality/p1 \
        --config forecast/configs/tiny_quality.json --minutes 60 --samples 12 \
        --guidance-grid 1,2,3 --steps-grid 6 --tune-samples 12

The older modes (issue 4; their figures in bench/RESULTS_forecast.md are in-sample/leaky, see there):
without --protocol, sample the checkpoint's validation patients of TRAIN under every arm and score
against the truth; `--heldout-patients-per-arm` scores a new trial under the allocated arms with
fixed settings. `--skip-train` re-evaluates an existing OUT/ckpt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def simulate(cohort: Path, patients_per_arm: int, seed: int, workers: int) -> None:
    if (cohort / "manifest.csv").is_file():
        return
    exe = Path(sys.executable).with_name("mseval")
    subprocess.run([str(exe), "simulate", str(cohort), "--patients-per-arm", str(patients_per_arm),
                    "--shape", "32", "32", "32", "--seed", str(seed), "--workers", str(workers)], check=True)


def train_for(cohort: Path, cfg_path: str, ckpt_dir: Path, minutes: float | None, steps: int | None, resume: bool) -> dict:
    from forecast.config import ForecastConfig
    from forecast.train import train

    cfg = ForecastConfig.load(cfg_path)
    if steps:
        cfg = cfg.with_(steps=steps)
    t0 = time.perf_counter()
    last = [0.0]
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        now = time.perf_counter() - t0
        if step % 25 == 0 or now - last[0] > 60:
            last[0] = now
            print(f"  step {step:5d}  loss(25) {np.mean(losses[-25:]):.4f}  {now / 60:.1f} min", flush=True)
        if minutes is not None and now > minutes * 60:
            raise KeyboardInterrupt  # train() saves the checkpoint of this step, then re-raises

    try:
        train(cohort, cfg, ckpt_dir, resume=resume, device="cpu", on_step=on_step)
    except KeyboardInterrupt:
        pass
    from forecast.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt_dir)
    return {"steps": ck.step, "train_seconds": ck.log[-1]["seconds"] if ck.log else 0.0}


ALLOCATED_KEYS = ("samples", "auc_p_active", "auc_p_active_ci", "oracle_auc_p_active", "oracle_auc_p_active_ci",
                  "crps_count", "crps_count_se", "oracle_crps_count", "observed_active_share", "white_matter_share")
"""What the allocated-arm scores report (from `score_store`'s summary)."""


def sample_allocated(cohort, ckpt, out: Path, ids, *, samples: int, settings, batch_size: int, seed: int):  # noqa: ANN001, ANN201
    """Sample each of `ids` under its allocated arm only (S samples) into the store `out`; returns the store."""
    from forecast.evaluate import sample_allocated as _sample

    return _sample(cohort.root, ckpt, out, ids, samples=samples, settings=settings, batch_size=batch_size, seed=seed, device="cpu")


def evaluate(cohort_dir: Path, ckpt_dir: Path, out: Path, *, samples: int, sample_steps: int, guidance: float | None,
             sampler: str | None, batch_size: int, patients: int | None, arms: str, seed: int, allocated_samples: int = 0) -> dict:
    from forecast.checkpoint import load_checkpoint
    from forecast.ensemble import forecast_cohort
    from forecast.evaluate import score_store, split_ids
    from forecast.sampler import SamplerSettings
    from mseval.io.atomic import write_csv_atomic, write_json_atomic
    from mseval.io.cohort import read_cohort

    ckpt = load_checkpoint(ckpt_dir)
    cfg = ckpt.config
    cohort = read_cohort(cohort_dir)
    ids = split_ids(cohort, ckpt.train_ids, ckpt.val_ids, "validation")
    if patients:
        ids = ids[:patients]
    settings = SamplerSettings(sampler or cfg.sampler, sample_steps, cfg.guidance if guidance is None else guidance, cfg.clip_x0, cfg.count_tries)
    t0 = time.perf_counter()
    store = forecast_cohort(cohort.root, ckpt, out / "forecasts", samples=samples, arms=arms, settings=settings,
                            batch_size=batch_size, seed=seed, patients=ids, device="cpu")
    sample_s = time.perf_counter() - t0
    per, per_arm, summary = score_store(cohort, store, seed=seed)
    summary.update({"checkpoint": ckpt.id, "split": "validation", "sampler": settings.to_dict(), "train_steps": ckpt.step,
                    "train_seconds": ckpt.log[-1]["seconds"] if ckpt.log else 0.0, "sample_seconds": sample_s,
                    "config": cfg.to_dict()})
    if allocated_samples:
        # P(active) AUC and count CRPS from a larger ensemble under each patient's allocated arm only:
        # with 3 samples P(active) takes 4 values, which ties most patients.
        t1 = time.perf_counter()
        alloc_store = sample_allocated(cohort, ckpt, out / "forecasts_allocated", ids, samples=allocated_samples, settings=settings,
                                       batch_size=batch_size, seed=seed + 1)
        per_alloc, _, s_alloc = score_store(cohort, alloc_store, seed=seed)
        write_csv_atomic(per_alloc, out / "evaluation_allocated.csv")
        summary["allocated"] = {k: s_alloc.get(k) for k in ALLOCATED_KEYS}
        summary["allocated"]["sample_seconds"] = time.perf_counter() - t1
    write_csv_atomic(per, out / "evaluation.csv")
    write_csv_atomic(per_arm, out / "per_arm.csv")
    write_json_atomic(summary, out / "summary.json")
    return summary


def score_heldout(cohort_dir: Path, ckpt_dir: Path, out: Path, *, samples: int, sample_steps: int, guidance: float | None,
                  batch_size: int, seed: int, train_cohort: Path | None = None) -> dict:
    """Sample every patient of a trial the model never saw under the allocated arm and score it
    (fixed settings: not tuned here), beside the references (NB2 baseline fitted on `train_cohort`)."""
    from forecast.checkpoint import load_checkpoint
    from forecast.evaluate import fit_baseline_on, score_store
    from forecast.sampler import SamplerSettings
    from mseval.io.atomic import write_csv_atomic, write_json_atomic
    from mseval.io.cohort import read_cohort

    ckpt = load_checkpoint(ckpt_dir)
    cfg = ckpt.config
    cohort = read_cohort(cohort_dir)
    settings = SamplerSettings(cfg.sampler, sample_steps, cfg.guidance if guidance is None else guidance, cfg.clip_x0, cfg.count_tries)
    t0 = time.perf_counter()
    store = sample_allocated(cohort, ckpt, out / "forecasts", cohort.patient_ids, samples=samples, settings=settings,
                             batch_size=batch_size, seed=seed)
    baseline = None
    if train_cohort is not None:
        tc = read_cohort(train_cohort)
        baseline = fit_baseline_on(tc, [p for p in tc.patient_ids if p in set(ckpt.train_ids)], f"{train_cohort} (training patients)")
    per, _, s = score_store(cohort, store, seed=seed, baseline=baseline)
    summary = {k: s.get(k) for k in ("patients", *ALLOCATED_KEYS, "references", "pit_chi2_p", "calibration_slope")}
    alloc = per[per["allocated"]]
    summary["forecast_mean"] = float(alloc["forecast_mean"].mean())
    summary["true_mean"] = float(alloc["true_expected"].mean())
    summary["observed_mean"] = float(alloc["observed_count"].mean())
    summary.update({"checkpoint": ckpt.id, "cohort": str(cohort_dir), "sampler": settings.to_dict(), "sample_seconds": time.perf_counter() - t0})
    write_csv_atomic(per, out / "evaluation.csv")
    write_json_atomic(summary, out / "summary.json")
    return summary


def protocol(a: argparse.Namespace) -> dict:
    """Train on TRAIN, tune on VALIDATION (observed counts only), report once on TEST (see the module docstring)."""
    from forecast.evaluate import evaluate_checkpoint, parse_grid

    train_c = a.cohort
    val_c = a.cohort.with_name(f"{a.cohort.name}-validation-{a.val_seed}")
    test_c = a.cohort.with_name(f"{a.cohort.name}-heldout-{a.heldout_seed}")
    for c, seed in ((train_c, 2026), (val_c, a.val_seed), (test_c, a.heldout_seed)):
        simulate(c, a.patients_per_arm, seed, 2)
    ckpt_dir = a.out / "ckpt"
    if not a.skip_train:
        print(f"trained: {train_for(train_c, a.config, ckpt_dir, a.minutes, a.steps, a.resume)}", flush=True)
    ev = a.out / a.eval_name
    t0 = time.perf_counter()
    summary = evaluate_checkpoint(ckpt_dir, test_c, ev, split="all", samples=a.samples, batch_size=a.batch_size, seed=a.seed, device="cpu",
                                  arms="allocated", tune_cohort=val_c, tune_guidance=parse_grid(a.guidance_grid, float, None),
                                  tune_steps=parse_grid(a.steps_grid, int, None), tune_samplers=parse_grid(a.sampler_grid, str, None),
                                  tune_count_tries=parse_grid(a.count_tries_grid, int, None), tune_samples=a.tune_samples, baseline_cohort=train_c, record_in_checkpoint=True)
    summary["protocol"]["seconds_tuning_and_test"] = time.perf_counter() - t0
    summary["protocol"]["cohorts"] = {"train": str(train_c), "validation": str(val_c), "test": str(test_c)}
    from mseval.io.atomic import write_json_atomic

    write_json_atomic(summary, ev / "summary.json")
    return summary


def protocol_report(s: dict) -> str:
    t = s["protocol"]["tuned_on"]
    lines = [f"checkpoint {s['checkpoint']}; sampler chosen on {t['validation']['patients']} validation patients: {t['chosen']} "
             f"({t['criterion']})", "", "| candidate | validation fair CRPS (SE) | AUC | PIT chi2 p |", "|---|---|---|---|"]
    for r in t["candidates"]:
        lines.append(f"| {r['sampler']} {r['steps']} steps, guidance {r['guidance']:g} | {r['crps_count']:.3f} ({r['crps_count_se']:.3f}) | "
                     f"{r['auc_p_active']:.3f} | {r['pit_chi2_p']:.3g} |")
    lines += ["", f"TEST trial, {s['patients']} patients, allocated arm, {s['samples']} samples:", "",
              "| forecaster | P(active) AUC [95% CI] | count CRPS (SE) | PIT chi2 p |", "|---|---|---|---|",
              f"| model (fair ensemble CRPS) | {s['auc_p_active']:.3f} [{s['auc_p_active_ci'][0]:.2f}, {s['auc_p_active_ci'][1]:.2f}] | "
              f"{s['crps_count']:.3f} ({s['crps_count_se']:.3f}) | {s['pit_chi2_p']:.3g} |"]
    for name, r in s.get("references", {}).items():
        if not r.get("estimable"):
            lines.append(f"| {name} | {r.get('note')} | | |")
            continue
        lines.append(f"| {name} (exact CRPS) | {r['auc_p_active']:.3f} [{r['auc_p_active_ci'][0]:.2f}, {r['auc_p_active_ci'][1]:.2f}] | "
                     f"{r['crps_count']:.3f} ({r['crps_count_se']:.3f}) | {r['pit_chi2_p']:.3g} |")
    lines.append(f"calibration slope {s.get('calibration_slope', float('nan')):.2f} {s.get('calibration_slope_ci')}; "
                 f"white-matter share {s.get('white_matter_share', float('nan')):.3f}")
    return "\n".join(lines)


def report(summary: dict) -> str:
    lines = [f"checkpoint step {summary['train_steps']} ({summary['train_seconds'] / 60:.1f} min training); "
             f"{summary['patients']} validation patients x {len(summary['arms'])} arms x {summary['samples']} samples; "
             f"sampler {summary['sampler']}; sampling {summary['sample_seconds'] / 60:.1f} min",
             "",
             "| arm | forecast mean count | true mean count | forecast P(active) | ratio vs placebo [95% CI] | true ratio |",
             "|---|---|---|---|---|---|"]
    for r in summary["per_arm"]:
        lines.append(f"| {r['arm']} | {r['forecast_mean']:.2f} | {r.get('true_mean', float('nan')):.2f} | {r['forecast_p_active']:.2f} | "
                     f"{r.get('ratio_vs_ref', float('nan')):.2f} [{r.get('ratio_ci_low', float('nan')):.2f}, {r.get('ratio_ci_high', float('nan')):.2f}] | "
                     f"{r.get('true_ratio_vs_ref', float('nan')):.2f} |")
    g = summary.get
    lines += ["",
              f"P(active) AUC {g('auc_p_active', float('nan')):.3f} (oracle {g('oracle_auc_p_active', float('nan')):.3f}); "
              f"count CRPS {g('crps_count', float('nan')):.3f} (oracle {g('oracle_crps_count', float('nan')):.3f}); "
              f"white-matter share {g('white_matter_share', float('nan')):.3f}; "
              f"forecast voxels/sample {g('forecast_voxels_per_sample', float('nan')):.1f}; Dice {g('dice_mean', float('nan')):.3f}"]
    if "auc_p_active_ci" in summary:
        lines.append(f"AUC 95% CI (patient bootstrap) {summary['auc_p_active_ci']}; oracle {summary.get('oracle_auc_p_active_ci')}")
    if "allocated" in summary:
        a = summary["allocated"]
        lines += ["", f"allocated arm only, {a['samples']} samples per patient ({a['sample_seconds'] / 60:.1f} min): "
                      f"P(active) AUC {a['auc_p_active']:.3f} {a['auc_p_active_ci']} (oracle {a['oracle_auc_p_active']:.3f}); "
                      f"count CRPS {a['crps_count']:.3f} (oracle {a['oracle_crps_count']:.3f})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, default=Path("/tmp/quality/coh"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default=str(ROOT / "forecast/configs/tiny_quality.json"))
    ap.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    ap.add_argument("--steps", type=int, default=None, help="override the config's steps")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--arms", default="all")
    ap.add_argument("--eval-name", default="eval")
    ap.add_argument("--allocated-samples", type=int, default=0,
                    help="also sample each patient's allocated arm this many times and score AUC/CRPS on that ensemble")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heldout-patients-per-arm", type=int, default=0,
                    help="instead of the validation split, score a new trial (seed --heldout-seed) under the allocated arms")
    ap.add_argument("--heldout-seed", type=int, default=2027)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol", action="store_true", help="train / validation (tuning) / test protocol of issue 13")
    ap.add_argument("--patients-per-arm", type=int, default=40, help="per arm, each of the protocol's three trials")
    ap.add_argument("--val-seed", type=int, default=2028)
    ap.add_argument("--guidance-grid", default="1,3")
    ap.add_argument("--steps-grid", default="6")
    ap.add_argument("--sampler-grid", default="ddim")
    ap.add_argument("--count-tries-grid", default="1", help="count-conditioned configs: rejection draws per member to try")
    ap.add_argument("--tune-samples", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.protocol:
        summary = protocol(a)
        text = protocol_report(summary)
        (a.out / a.eval_name / "report.md").write_text(text + "\n")
        print(text)
        return
    simulate(a.cohort, 40, 2026, 2)
    ckpt_dir = a.out / "ckpt"
    if not a.skip_train:
        info = train_for(a.cohort, a.config, ckpt_dir, a.minutes, a.steps, a.resume)
        print(f"trained: {info}", flush=True)
    ev = a.out / a.eval_name
    import shutil

    if a.heldout_patients_per_arm:
        held = a.cohort.with_name(f"{a.cohort.name}-heldout-{a.heldout_seed}")
        simulate(held, a.heldout_patients_per_arm, a.heldout_seed, 2)
        if (ev / "forecasts").exists():
            shutil.rmtree(ev / "forecasts")
        res = score_heldout(held, ckpt_dir, ev, samples=a.samples, sample_steps=a.sample_steps, guidance=a.guidance,
                            batch_size=a.batch_size, seed=a.seed, train_cohort=a.cohort)
        print(json.dumps(res, indent=1))
        return

    for d in ("forecasts", "forecasts_allocated"):
        if (ev / d).exists():
            shutil.rmtree(ev / d)
    summary = evaluate(a.cohort, ckpt_dir, ev, samples=a.samples, sample_steps=a.sample_steps, guidance=a.guidance,
                       sampler=a.sampler, batch_size=a.batch_size, patients=a.patients, arms=a.arms, seed=a.seed,
                       allocated_samples=a.allocated_samples)
    text = report(summary)
    (ev / "report.md").write_text(text + "\n")
    print(text)
    print(json.dumps({k: summary.get(k) for k in ("auc_p_active", "oracle_auc_p_active", "crps_count", "oracle_crps_count", "white_matter_share")}))


if __name__ == "__main__":
    main()
