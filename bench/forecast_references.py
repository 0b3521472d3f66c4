"""The three references a forecast score is read against (issue 13), measured on simulated trials.

1. On the image trials the quality bench uses (32^3, 40 patients per arm): TRAIN seed 2026 (the NB2
   baseline is fitted on it) and TEST seed 2027 (the new trial of bench/RESULTS_forecast.md).
   Features are read from the masks (`mseval.lesions.baseline_features`); every reference is scored
   on the observed NET2 counts of TEST with the exact CRPS of its law and the AUC of 1 - P(0).
2. The expected values over trials: --trials pairs of (training, test) trials of the same design
   drawn from the simulator's count model without images (mean and Monte Carlo SE over trials).

    OMP_NUM_THREADS=1 .venv/bin/python bench/forecast_references.py --out /tmp/quality/references.json

Simulates /tmp/quality/coh and /tmp/quality/coh-heldout-2027 when missing (the cohorts
bench/train_quality.py uses).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(laws: dict[str, np.ndarray], y: np.ndarray) -> dict[str, dict[str, float]]:
    from forecast.evaluate import score_law

    return {name: score_law(pmf, y, n_boot=1000)[0] for name, pmf in laws.items()}


def image_trials(train_dir: Path, test_dir: Path) -> dict:
    from forecast.evaluate import fit_baseline_on, reference_laws
    from mseval.io.cohort import read_cohort
    from mseval.lesions.baseline_features import baseline_features
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    for d, seed in ((train_dir, 2026), (test_dir, 2027)):
        if not (d / "manifest.csv").is_file():
            simulate_trial(d, TrialConfig(patients_per_arm=40, shape=(32, 32, 32), seed=seed), workers=1)
    train, test = read_cohort(train_dir), read_cohort(test_dir)
    baseline = fit_baseline_on(train, None, f"{train_dir} (all 240 patients)")
    feats = baseline_features(test)
    y = feats["net2"].to_numpy(dtype=np.int64)
    out = score(reference_laws(test, feats, baseline=baseline), y)
    out["nb2_baseline"]["fit"] = baseline.to_dict()
    return {"train": str(train_dir), "test": str(test_dir), "patients": len(y), "observed_mean": float(y.mean()),
            "observed_active_share": float((y > 0).mean()), "references": out}


def count_trial(seed: int, per_arm: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Features and observed NET2 of a trial drawn as `mseval simulate` draws it (T2 volume: count x a u-free lesion size)."""
    from mseval.simulate.model import WEEKS_PER_YEAR, TrialConfig, draw_patients, truth_frame

    cfg = TrialConfig(patients_per_arm=per_arm, seed=seed)
    pats = draw_patients(cfg, np.random.default_rng(seed))
    truth = truth_frame(pats, cfg)
    mu = truth[truth["allocated"]].set_index("patient_id").loc[pats["patient_id"], "expected_count"].to_numpy()
    rng = np.random.default_rng([seed, 1])
    f = pd.DataFrame({"patient_id": pats["patient_id"], "arm": pats["arm"], "age": pats["age"],
                      "followup_years": pats["followup_weeks"] / WEEKS_PER_YEAR, "gd_count": pats["gd_count"],
                      "t2_count": pats["n_baseline_lesions"], "t2_volume_mm3": pats["n_baseline_lesions"] * 180.0 * rng.lognormal(0, 0.3, len(pats)),
                      "net2": rng.poisson(mu)})
    return f, mu


def many_trials(trials: int, per_arm: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from mseval.metrics.calibration import crps_pmf
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.observable_oracle import ModelParams, observable_pmf, true_law_pmf
    from mseval.stats.baseline_nb2 import fit_nb2_baseline

    params = ModelParams.from_config(TrialConfig())
    rows = []
    for k in range(trials):
        train, _ = count_trial(10_000 + k, per_arm)
        test, mu = count_trial(20_000 + k, per_arm)
        y = test["net2"].to_numpy()
        laws = {"true_law": true_law_pmf(mu), "observable_oracle": observable_pmf(test, params),
                "nb2_baseline": fit_nb2_baseline(train, reference="placebo").pmf(test)}
        for n, p in laws.items():
            rows.append({"trial": k, "forecaster": n, "auc": roc_auc_score(y > 0, 1 - p[:, 0]), "crps": float(crps_pmf(p, y).mean())})
    r = pd.DataFrame(rows)
    g = r.groupby("forecaster")
    out = {}
    for name, sub in g:
        out[name] = {"auc_mean": float(sub["auc"].mean()), "auc_mc_se": float(sub["auc"].std(ddof=1) / np.sqrt(len(sub))),
                     "crps_mean": float(sub["crps"].mean()), "crps_mc_se": float(sub["crps"].std(ddof=1) / np.sqrt(len(sub)))}
    return {"trials": trials, "patients_per_trial": 6 * per_arm, "seeds": "training 10000+k, test 20000+k", "by_forecaster": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=Path, default=Path("/tmp/quality/coh"))
    ap.add_argument("--test", type=Path, default=Path("/tmp/quality/coh-heldout-2027"))
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--patients-per-arm", type=int, default=40)
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = {"image_trials": image_trials(a.train, a.test)}
    res["image_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    res["expected_over_trials"] = many_trials(a.trials, a.patients_per_arm)
    res["count_seconds"] = time.perf_counter() - t1
    from mseval.io.atomic import write_json_atomic

    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(res, a.out)
    it = res["image_trials"]["references"]
    print(f"TEST trial seed 2027 ({res['image_trials']['patients']} patients; NB2 fitted on seed 2026):")
    for n, v in it.items():
        print(f"  {n:18s} AUC {v['auc_p_active']:.3f} {np.round(v['auc_p_active_ci'], 3).tolist()}  CRPS {v['crps_count']:.3f} (SE {v['crps_count_se']:.3f})  PIT p {v['pit_chi2_p']:.3g}")
    print(f"expected over {a.trials} trial pairs of {6 * a.patients_per_arm} patients (mean, MC SE):")
    for n, v in res["expected_over_trials"]["by_forecaster"].items():
        print(f"  {n:18s} AUC {v['auc_mean']:.3f} ({v['auc_mc_se']:.3f})  CRPS {v['crps_mean']:.3f} ({v['crps_mc_se']:.3f})")


if __name__ == "__main__":
    main()
