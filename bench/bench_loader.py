"""Does loading overlap compute? Train-step loop on the CPU reading the per-patient cache through
`forecast.cache.step_loader` with 0 workers (loading inline) and 1 worker (loading ahead), timing
how long each step waits for its batch and how long the network step takes.

    PYTHONPATH=. python bench/bench_loader.py [--shape 64] [--steps 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    from forecast.cache import PatientCache, build_cache, step_loader
    from forecast.config import ForecastConfig
    from forecast.diffusion import alphas_cumprod, diffusion_loss, to_signed
    from forecast.model import arm_weights
    from forecast.train import init_model
    from mseval.io.cohort import read_cohort
    from mseval.simulate.trial import TrialConfig, simulate_trial

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    shape = (args.shape,) * 3
    simulate_trial(tmp / "cohort", TrialConfig(patients_per_arm=2, shape=shape, seed=1))
    cohort = read_cohort(tmp / "cohort")
    cfg = ForecastConfig(name="bench", shape=shape, channels=(8, 8, 16), attention_levels=(False, False, False), num_head_channels=8,
                         batch_size=2, arms=tuple(cohort.arms["arm"]), steps=args.steps)
    data = PatientCache(build_cache(cohort, cohort.patient_ids, cfg, tmp / "cache"), cohort.patient_ids)
    model = init_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    acp = alphas_cumprod(cfg)
    print(f"grid {args.shape}^3, batch 2, {args.steps} steps, 1 compute thread (machine shared with other jobs)")
    for workers in (0, 1):
        it = iter(step_loader(data, cfg, 1, args.steps, 0, 1, workers=workers))
        wait = comp = 0.0
        for k in range(args.steps):
            t0 = time.perf_counter()
            cond, target, members, seeds, pidx = next(it)
            t1 = time.perf_counter()
            labels = arm_weights(cfg, [data.arms[int(p)] for p in pidx])
            loss = diffusion_loss(model, to_signed(target), cond, labels, cfg, acp, [torch.Generator().manual_seed(int(m)) for m in members])
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if k:  # the first step waits for the workers to start
                wait += t1 - t0
                comp += t2 - t1
        n = args.steps - 1
        print(f"workers={workers}: waiting for data {1e3 * wait / n:8.1f} ms/step, network step {1e3 * comp / n:8.1f} ms/step")


if __name__ == "__main__":
    main()
