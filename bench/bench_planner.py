"""Planner (fake tensors) vs the CPU's measured allocation peak (torch.profiler), for training steps
and a guided sampling call at small sizes. Prints one row per case with the ratio planned / measured.

    PYTHONPATH=. python bench/bench_planner.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "forecast"))
from test_planner import ARMS, _cfg, _measured_peak, _real_training_step  # noqa: E402

from forecast.model import NET2Denoiser, arm_weights  # noqa: E402
from forecast.planner import sampling_peak, training_peak  # noqa: E402
from forecast.sampler import _guided  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    print(f"{'case':58s} {'planned MB':>10s} {'measured MB':>11s} {'ratio':>6s}")
    for channels in ((8, 16, 32), (16, 32, 64)):
        for batch, ck, bf16 in ((2, False, False), (2, True, False), (2, False, True), (4, False, False)):
            cfg = _cfg(channels=channels, activation_checkpointing=ck)
            m = _measured_peak(_real_training_step(cfg, batch, bf16), tmp / "t.json")
            p = training_peak(cfg, batch, bf16=bf16, accumulation=1).traced
            print(f"train 32^3 ch{channels} b{batch} {'bf16' if bf16 else 'fp32'}{' ckpt' if ck else ''}".ljust(58)
                  + f" {p / 1e6:10.1f} {m / 1e6:11.1f} {p / m:6.3f}", flush=True)
        cfg = _cfg(channels=channels)
        model = NET2Denoiser(cfg).eval()
        for members in (1, 3):
            def call() -> None:
                with torch.no_grad():
                    c = torch.randn(cfg.in_channels - 1, *cfg.shape)
                    x = torch.randn(members, 1, *cfg.shape)
                    out = _guided(lambda *a: model(*a), x, c.unsqueeze(0).expand(members, *c.shape),
                                  torch.full((members,), 500), arm_weights(cfg, [ARMS[1]] * members), 2.0)
                    del out
            m = _measured_peak(call, tmp / "s.json")
            p = sampling_peak(cfg, members, bf16=False).traced
            print(f"sample 32^3 ch{channels} {members} members guided fp32".ljust(58) + f" {p / 1e6:10.1f} {m / 1e6:11.1f} {p / m:6.3f}", flush=True)


if __name__ == "__main__":
    main()
