"""Issue 13: the count-conditioned models (`tiny_centre`, `tiny_count`), reported once on a TEST trial it never saw.

The checkpoint (default: the shipped `forecast/checkpoints/tiny_centre`, built by `make checkpoint` =
`python -m forecast.release`) was trained on the seed-2030 pool (2,400 patients) and its guidance was
chosen on the seed-2028 validation trial from observed counts only. Here, on TEST (seed 2027,
240 patients at 32^3, the trial of the references in bench/RESULTS_forecast.md):

1. allocated arm, `--samples` per patient: P(active) AUC, fair count CRPS, PIT, calibration slope,
   white-matter share and count fidelity, beside the true law, the observable oracle and the NB2
   baseline fitted on the same training patients (`forecast.evaluate.evaluate_checkpoint`);
2. counterfactuals: `--cf-patients` patients (equal per arm) under every arm, `--cf-samples` each:
   forecast rate ratio vs placebo (ratio of mean forecast counts over the same patients) against the
   true ratio of expected counts over the same patients;
3. the count head alone (its NB2 law scored exactly), to separate the head from the renderer.

    OMP_NUM_THREADS=2 .venv/bin/python bench/forecast_count_model.py --out /tmp/q13/test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "forecast/checkpoints/tiny_centre")
    ap.add_argument("--test", type=Path, default=Path("/tmp/quality/coh-heldout-2027"))
    ap.add_argument("--test-seed", type=int, default=2027, help="seed of the TEST trial simulated when --test holds none (40 per arm)")
    ap.add_argument("--train-pool", type=Path, default=Path("/tmp/q13/pool"), help="the checkpoint's training trial (NB2 baseline fit)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--cf-patients", type=int, default=48)
    ap.add_argument("--cf-samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-allocated", action="store_true")
    a = ap.parse_args()

    import torch

    from forecast.checkpoint import build_model, load_checkpoint
    from forecast.count_head import feature_matrix, nb2_params, nb2_pmf
    from forecast.ensemble import forecast_cohort
    from forecast.evaluate import evaluate_checkpoint, score_law, score_store
    from forecast.model import arm_weights
    from forecast.release import _stratified
    from mseval.io.atomic import write_json_atomic
    from mseval.io.cohort import read_cohort
    from mseval.lesions.baseline_features import baseline_features
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    torch.set_num_threads(a.threads)
    if not (a.test / "manifest.csv").is_file():
        simulate_trial(a.test, TrialConfig(patients_per_arm=40, shape=(32, 32, 32), seed=a.test_seed), workers=2)
    ckpt = load_checkpoint(a.checkpoint)
    test = read_cohort(a.test)
    res: dict = {"checkpoint": ckpt.id, "test": str(a.test), "sampler": {"sampler": ckpt.config.sampler, "steps": ckpt.config.sample_steps,
                                                                           "guidance": ckpt.config.guidance, "count_tries": ckpt.config.count_tries}}
    # 3. the count head alone
    f = baseline_features(test)
    head = build_model(ckpt).count_head
    mean, alpha = nb2_params(head, feature_matrix(f), arm_weights(ckpt.config, list(f["arm"])).numpy())
    res["count_head"], _ = score_law(nb2_pmf(mean, alpha), f["net2"].to_numpy(np.int64), n_boot=1000)
    # 1. allocated arm
    if not a.skip_allocated:
        t0 = time.perf_counter()
        s = evaluate_checkpoint(a.checkpoint, a.test, a.out / "allocated", split="all", samples=a.samples, arms="allocated",
                                baseline_cohort=a.train_pool, device="cpu", seed=0)
        res["allocated"] = s
        res["allocated_seconds"] = time.perf_counter() - t0
    # 2. counterfactuals
    t0 = time.perf_counter()
    ids = _stratified(test, a.cf_patients)
    store = forecast_cohort(a.test, ckpt, a.out / "counterfactual", samples=a.cf_samples, arms="all", patients=ids, seed=7, device="cpu")
    _, per_arm, summ = score_store(test, store, n_boot=1000)
    res["counterfactual"] = {"patients": len(ids), "samples": a.cf_samples, "per_arm": per_arm.to_dict("records"),
                             "count_fidelity": summ.get("count_fidelity"), "white_matter_share": summ.get("white_matter_share"),
                             "seconds": time.perf_counter() - t0}
    write_json_atomic(res, a.out / "result.json")
    print(json.dumps({k: v for k, v in res.items() if k != "allocated"}, indent=1, default=str)[:6000])
    if "allocated" in res:
        s = res["allocated"]
        print({k: s.get(k) for k in ("auc_p_active", "auc_p_active_ci", "crps_count", "crps_count_se", "pit_chi2_p", "calibration_slope",
                                     "calibration_slope_ci", "white_matter_share", "count_fidelity")})
        for n, r in s.get("references", {}).items():
            print(n, {k: r.get(k) for k in ("auc_p_active", "crps_count", "crps_count_se", "crps_difference_model_minus_ref", "crps_difference_se")})


if __name__ == "__main__":
    main()
